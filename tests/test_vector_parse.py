"""The column-wise parsers give what the record-by-record path gives, and are used.

Each case is parsed twice by fresh formats: as shipped (a block at once where it can)
and forced record by record. Rows, types, offsets and rejects must be equal; and for
clean blocks the column-wise path must really have been taken.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from zpandas.sources.follow import Follower
from zpandas.sources.lines import get_format

NGINX = ('10.0.0.{i} - - [28/Nov/2026:17:00:{s:02d} +0000] "GET /a?id={i} HTTP/1.1" {status} {size} '
         '"-" "curl/8"')

CASES = {
    "jsonl clean": ("jsonl", [json.dumps({"time": f"2026-11-28T17:00:{i % 60:02d}Z", "v": i, "x": i / 3,
                                          "host": f"n{i % 3}"}) for i in range(500)], True),
    "jsonl epoch times": ("jsonl", [json.dumps({"timestamp": 1764349200 + i, "v": i}) for i in range(50)], True),
    "jsonl blank lines and CRLF": ("jsonl", ['{"a": 1}\r', "", "   ", '{"a": 2}'], True),
    "jsonl not objects": ("jsonl", ['{"a": 1}', "[1, 2]", "nope", '{"a": 3}'], False),
    "jsonl nested": ("jsonl", ['{"a": {"b": 1}}', '{"a": [1, 2]}'], False),
    "jsonl types change": ("jsonl", ['{"a": 1}', '{"a": "x"}'], False),
    "jsonl text that looks like a time": ("jsonl", ['{"when": "2026-11-28 17:00:00", "time": "2026-11-28 17:00:00"}'], True),
    "jsonl bad time": ("jsonl", ['{"time": "yesterday-ish", "v": 1}', '{"time": "2026-11-28T17:00:00Z", "v": 2}'], True),
    "nginx clean": ("nginx", [NGINX.format(i=i, s=i % 60, status=200 + i % 3, size=i) for i in range(300)], True),
    "nginx misses and nulls": ("nginx", [NGINX.format(i=1, s=1, status=200, size="-"), "garbage line",
                                         "", NGINX.format(i=2, s=2, status=404, size=7)], True),
    "nginx bad UTF-8": ("nginx", [NGINX.format(i=1, s=1, status=200, size=1), b"\xff\xfe bad"], False),
    "syslog": ("syslog", ["<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed",
                          "Nov  3 01:02:03 host app: hello"], True),
    "regex optional group": (r"regex:(?P<level>[A-Z]+)(?: (?P<code>\d+))? (?P<msg>.*)",
                             ["INFO 12 hello", "WARN world", "lowercase is a miss"], True),
    "regex look-ahead (Python's re only)": (r"regex:(?P<k>\w+)(?==)=(?P<v>.*)", ["a=1", "b=2", "c"], False),
    "csv clean": ("csv", ["a,b,c"] + [f"{i},{i / 2},x{i}" for i in range(200)], True),
    "csv quoted newline": ("csv", ["a,b", '1,"two\nlines"', "3,four"], True),
    "csv wrong field count": ("csv", ["a,b", "1,2", "1,2,3", "4,5"], False),
}


def _records(lines: list, quoted: bool, tmp_path, name: str):
    path = tmp_path / f"{name.replace(' ', '_')}.log"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    f = Follower([str(path)], quoted=quoted)
    try:
        chunks = f.poll(final=True)
    finally:
        f.close()
    assert len(chunks) == 1
    return chunks[0]


@pytest.mark.parametrize("name", list(CASES))
def test_columns_equal_record_by_record(name, tmp_path):
    fmt_name, lines, vector = CASES[name]
    fast, slow = get_format(fmt_name), get_format(fmt_name)
    chunk = _records(lines, fast.quoted, tmp_path, name)
    used = []
    original = type(fast)._columns

    def spy(self, records):
        found = original(self, records)
        used.append(found is not None)
        return found

    type(fast)._columns = spy
    try:
        got = fast.parse(chunk.records, "f")
    finally:
        type(fast)._columns = original
    slow._columns = lambda records: None  # record by record
    want = slow.parse(chunk.records, "f")
    assert (used == [True]) == vector, used  # the fast path is taken exactly where expected
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g is not None
        assert g.schema.names == w.schema.names
        gdf, wdf = g.to_pandas(), w.to_pandas()
        for col in wdf.columns:
            assert list(gdf[col].astype(object).where(gdf[col].notna(), None)) == \
                list(wdf[col].astype(object).where(wdf[col].notna(), None)), col
            if str(wdf[col].dtype) != "object":
                assert gdf[col].dtype == wdf[col].dtype, col


def test_block_boundaries_do_not_change_rows(tmp_path):
    """Random lines, read in small blocks: every line once, offsets ascending and exact."""
    rnd = random.Random(7)
    path = tmp_path / "mixed.jsonl"
    lines = []
    for i in range(3000):
        r = rnd.random()
        lines.append("" if r < 0.05 else "not json" if r < 0.1 else json.dumps({"i": i, "s": "x" * rnd.randint(0, 300)}))
    path.write_text("".join(x + "\n" for x in lines))
    data = path.read_bytes()
    f = Follower([str(path)])
    f._block = 4096  # many blocks, cut anywhere
    fmt = get_format("jsonl")
    rows, rejects = [], []
    try:
        while True:
            for ch in f.poll(final=True):
                table, rej = fmt.parse(ch.records, ch.path)
                if table is not None:
                    rows += table.to_pylist()
                rejects += rej.to_pylist()
            if not f.active:
                break
    finally:
        f.close()
    assert [r["i"] for r in rows] == [i for i, x in enumerate(lines) if x.startswith("{")]
    for r in rows:
        end = data.index(b"\n", r["_offset"])
        assert json.loads(data[r["_offset"]:end])["i"] == r["i"]
    assert [r["line"] for r in rejects] == [i + 1 for i, x in enumerate(lines) if x == "not json"]
    assert np.all(np.diff([r["_offset"] for r in rows]) > 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_parsed_on_threads_arrive_whole_and_in_order(tmp_path, threads):
    """Eight 4 MiB blocks, parsed on one or two threads: every line once, in file order."""
    import zpandas as zp

    path = tmp_path / "big.jsonl"
    n = 240_000
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"i": i, "pad": "y" * 100}) + "\n")
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        result = zp.publish_files(str(path), sub.endpoints, format="jsonl", parse_threads=threads,
                                  wait_for_subscribers=1)
        df = sub.collect(timeout=60)
    assert result["rows"] == n and result["bytes"] > 8 * (4 << 20) * 0.8
    assert df["i"].tolist() == list(range(n))  # in order: the stream's offsets ascend
    assert (np.diff(df["_offset"].to_numpy()) > 0).all()
