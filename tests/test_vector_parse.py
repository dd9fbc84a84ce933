"""The column-wise parsers give what the record-by-record path gives, and are used.

Each case is parsed twice by fresh formats: as shipped (a block at once where it can)
and forced record by record. Rows, types, offsets and rejects must be equal; and for
clean blocks the column-wise path must really have been taken.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
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


def test_csv_blocks_after_the_first_are_typed_in_arrow(tmp_path):
    """Once the first block fixed a CSV's column types, later blocks are cast in Arrow
    (pandas' record-wise typing is not called) and give what it gives; the first block's
    text columns are judged on their distinct values."""
    import zpandas.sources.lines as lines_mod

    header = "time_ns,host,path,status,latency_ms,note,time"
    rows = [f"{1764349200000000000 + i},web{i % 8},/api/{i % 5},{200 + 300 * (i % 50 == 0)},"
            f"{i / 7:.3f},{'' if i % 3 else 'n' + str(i)},2026-11-28T17:{i // 60 % 60:02d}:{i % 60:02d}.{i:03d}Z"
            for i in range(3000)]
    fast, slow = get_format("csv"), get_format("csv")
    first = _records([header] + rows[:1000], fast.quoted, tmp_path, "first")
    second = _records(rows[1000:], fast.quoted, tmp_path, "second")   # the same file, on
    calls = []
    original = lines_mod.CsvLines._convert

    def spy(self, df):
        calls.append(len(df))
        return original(self, df)

    lines_mod.CsvLines._convert = spy
    try:
        got = [fast.parse(c.records, "f")[0] for c in (first, second)]
    finally:
        lines_mod.CsvLines._convert = original
    assert calls == [1000], calls   # the first block only
    slow._columns = lambda records: None  # record by record
    want = [slow.parse(c.records, "f")[0] for c in (first, second)]
    for g, w in zip(got, want):
        assert g.schema == w.schema
        assert g.equals(w)
    assert [f.type for f in got[1].schema][:5] == [pa.int64(), got[1].schema.field("host").type,
                                                   got[1].schema.field("path").type, pa.int64(),
                                                   pa.float64()]
    assert pa.types.is_string(got[1].schema.field("note").type) or \
        pa.types.is_large_string(got[1].schema.field("note").type)
    assert got[1].schema.field("time").type.tz == "UTC"   # a time column, typed in Arrow too
    # a value that is not a time: that block goes record by record, for its reject
    third = _records([rows[0].replace("2026-11-28T", "yesterday ")] + rows[1:10], fast.quoted,
                     tmp_path, "third")
    table, rejects = fast.parse(third.records, "f")
    assert table.num_rows == 9 and rejects.num_rows == 1
    assert "is not a time" in rejects.column("reason")[0].as_py()


@pytest.mark.parametrize("values, numeric", [
    (["1", "2", None, "3"], True),
    (["1", "2", "x"], False),
    ([" 4", "5.5", "1e3"], True),      # what pandas reads as numbers, Arrow too or not
    (["web1", "web1", "web2"] * 1000, False),
    ([None, None], True),              # nothing says it is not a number
])
def test_text_column_numbers_judged_as_pandas_does(values, numeric):
    import pandas as pd

    from zpandas.sources.lines import _some_not_numbers

    raw = pd.Series(values, dtype=object)
    want = not (pd.to_numeric(raw, errors="coerce").isna() & raw.notna()).any()
    assert want == numeric
    assert _some_not_numbers(raw) == (not numeric)
    assert _some_not_numbers(raw.astype("str" if None not in values else object)) == (not numeric)
