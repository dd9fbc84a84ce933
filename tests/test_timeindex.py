"""The index of event time by file span: built as the live stream reads, kept beside the
checkpoint, and what makes ``since=`` exact in files whose times are out of order (which
bisection, for files it does not describe, gets wrong)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

import zpandas as zp
from zpandas.sources import timeindex
from zpandas.sources.checkpoint import Checkpoint
from zpandas.sources.timeindex import TimeIndex, start_from

from .conftest import wait_for
from .test_history import Publishing

T0 = pd.Timestamp("2026-12-06T00:00Z")


def _times(offsets, seconds) -> pa.Table:
    """Rows starting at ``offsets``, at ``seconds`` after T0."""
    return pa.table({"t": pa.array([(T0 + pd.Timedelta(seconds=s)).value for s in seconds],
                                   pa.timestamp("ns", "UTC")),
                     "_offset": pa.array(offsets, pa.int64())})


def _ns(seconds: float) -> int:
    return (T0 + pd.Timedelta(seconds=seconds)).value


def test_spans_grow_to_their_size_and_end_where_a_row_starts(monkeypatch):
    monkeypatch.setattr(timeindex, "SPAN_BYTES", 100)
    data = bytes(range(256)) * 2
    index = TimeIndex()
    index.note("k", 0, 60, data, 0, _times([0, 30], [0, 5]))
    index.note("k", 60, 120, data[60:], 60, _times([60, 90, 110], [10, 15, 99]))   # 110: past 100
    index.note("k", 120, 330, data[120:], 120, _times([120, 180, 240, 300], [20, 25, 30, 35]))
    spans = index.spans(["k"])["k"]
    assert [(s[0], s[1]) for s in spans] == [(0, 110), (110, 240), (240, 330)]
    assert [s[2:4] for s in spans] == [(_ns(0), _ns(15)), (_ns(20), _ns(99)), (_ns(30), _ns(35))]
    read = lambda at, n: data[at:at + n]   # noqa: E731
    assert start_from(spans, _ns(12), read) == (0, True)
    assert start_from(spans, _ns(16), read) == (110, True)    # a late row in the second span
    assert start_from(spans, _ns(99), read) == (110, True)
    assert start_from(spans, _ns(100), read) == (330, False)   # the rest: bisection's
    # a file that is not what the index saw any more: not used
    assert start_from(spans, _ns(16), lambda at, n: b"x" * n) is None


def test_a_read_again_keeps_spans_contiguous_and_a_gap_ends_the_index(monkeypatch):
    monkeypatch.setattr(timeindex, "SPAN_BYTES", 100)
    data = bytes(300)
    index = TimeIndex()
    for a, b, s in [(0, 100, 1), (100, 200, 2), (200, 250, 3)]:
        index.note("k", a, b, data[a:], a, _times([a], [s]))
    index.note("k", 150, 250, data[150:], 150, _times([150, 200], [9, 3]))   # resumed at 150
    spans = index.spans(["k"])["k"]
    assert [(s[0], s[1]) for s in spans] == [(0, 100), (100, 200), (200, 250)]
    assert spans[1][2:4] == (_ns(2), _ns(9))          # a superset of the rows' times
    index.note("k", 250, 260, data[250:], 250, _times([250], [4]))
    index.note("k", 280, 290, data[280:], 280, _times([280], [5]))   # 260-280 never parsed here
    index.note("k", 290, 300, data[290:], 290, _times([290], [6]))
    assert index.spans(["k"])["k"][-1][1] == 260
    index.forget(["other"])
    assert index.spans(["k"]) == {}


def test_spans_are_kept_beside_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(timeindex, "SPAN_BYTES", 100)
    data = bytes(400)
    with Checkpoint(tmp_path / "ckpt.db") as ckpt:
        index = TimeIndex(ckpt)
        for a, b in [(0, 100), (100, 200), (200, 230)]:
            index.note("k", a, b, data[a:], a, _times([a], [a]))
        index.save()
        index.note("k", 50, 100, data[50:], 50, _times([50], [7]))   # read again from 50
        index.save()
        want = index.spans(["k"])
    with Checkpoint(tmp_path / "ckpt.db") as ckpt:
        assert TimeIndex(ckpt).spans(["k"]) == want
        assert [(s[0], s[1]) for s in want["k"]] == [(0, 100)]


def _late(i: int) -> bool:
    return i >= 5000 and i % 1000 == 0


def _out_of_order_log(path, n: int = 20_000) -> pd.DataFrame:
    """``n`` rows a second apart, except every 1000th from the 5000th: ten hours later (a
    clock that was wrong): what bisection cannot find."""
    rows = pd.DataFrame({"timestamp": [T0 + pd.Timedelta(seconds=36_000 + i if _late(i) else i)
                                       for i in range(n)],
                         "host": [f"web{i % 3}" for i in range(n)], "i": range(n)})
    rows.assign(timestamp=rows["timestamp"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return rows


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after a restart"])
def test_since_is_exact_in_a_file_whose_times_are_out_of_order(tmp_path, monkeypatch, restart):
    monkeypatch.setattr(timeindex, "SPAN_BYTES", 64 << 10)   # a 1 MB file in 16 spans
    log = tmp_path / "app.log"
    rows = _out_of_order_log(log)
    since = T0 + pd.Timedelta(hours=5)
    want = sorted(rows.loc[rows["timestamp"] >= since, "i"])
    assert len(want) == 2000 + 13   # the last 2,000 and 13 from the wrong clock before them
    ckpt = tmp_path / "state" / "ckpt.db"
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
        try:
            wait_for(lambda: sub.stats()["rows"] == len(rows), timeout=60, what="the live stream")
            if restart:   # the next run reads nothing: its index is the one kept
                pub.close()
                pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
            got = sub.history(since=since, timeout=60, progress=False)
        finally:
            pub.close()
    assert sorted(got["i"]) == want
    # and it read from the span of the first late row on, not the whole file
    data = log.read_bytes()
    first_late = [k for k, b in enumerate(data) if b == 10][5000] + 1   # after the header, row 5000
    read = sub.stats()["history"]["file_bytes"].iloc[-1]
    assert len(data) - first_late <= read < len(data) - first_late + (64 << 10) + 100


def test_a_file_changed_behind_the_index_is_searched_by_bisection(tmp_path, monkeypatch):
    """The CRC of a span's first bytes is checked before the span is skipped."""
    monkeypatch.setattr(timeindex, "SPAN_BYTES", 64 << 10)
    log = tmp_path / "app.log"
    _out_of_order_log(log)
    ckpt = tmp_path / "state" / "ckpt.db"
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
        try:
            wait_for(lambda: sub.stats()["rows"] == 20_000, timeout=60, what="the live stream")
        finally:
            pub.close()
    with Checkpoint(ckpt) as c:
        (key, spans), = c.load_times().items()
        start, end, lo, hi, crc, n = spans[1]
        # an index whose second span holds what is wanted, by its times, but not by its CRC
        c.save_times({key: [(start, end, lo, _ns(99_999), crc ^ 1, n)]}, {})
    since = T0 + pd.Timedelta(hours=5)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
        try:
            wait_for(lambda: len(sub.stats()["producers"]) == 1, timeout=30, what="its heartbeat")
            got = sub.history(since=since, timeout=60, progress=False)
        finally:
            pub.close()
    # bisection: the last 2,000 rows and the late ones after where it starts, not those before
    assert 2000 <= len(got) < 2013
    assert sub.stats()["history"]["file_bytes"].iloc[-1] < (100 << 10)


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_the_index_follows_a_file_through_rotation(tmp_path, monkeypatch, rotation):
    """Spans are the live stream's file key's: a renamed file keeps its inode, a copy made
    by copytruncate takes over the key (same bytes at the same offsets)."""
    import shutil

    monkeypatch.setattr(timeindex, "SPAN_BYTES", 64 << 10)
    log = tmp_path / "app.log"
    rows = _out_of_order_log(log)
    since = T0 + pd.Timedelta(hours=5)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == len(rows), timeout=60, what="the live stream")
            if rotation == "rename":
                log.rename(tmp_path / "app.log.1")
            else:
                shutil.copyfile(log, tmp_path / "app.log.1")
                with open(log, "r+") as f:
                    f.truncate(0)
            with open(log, "a") as f:   # the new file: ten rows from since on
                f.write("timestamp,host,i\n")
                f.writelines(f"{(since + pd.Timedelta(seconds=k)).isoformat()},web9,{100_000 + k}\n"
                             for k in range(10))
            wait_for(lambda: sub.stats()["rows"] == len(rows) + 10, timeout=60, what="the new file's rows")
            got = sub.history(since=since, timeout=60, progress=False)
        finally:
            pub.close()
    want = sorted(rows.loc[rows["timestamp"] >= since, "i"]) + list(range(100_000, 100_010))
    assert sorted(got["i"]) == want
    # the rotated file read from the span of its first late row on, as its index says
    data = (tmp_path / "app.log.1").read_bytes()
    first_late = [k for k, b in enumerate(data) if b == 10][5000] + 1
    read = sub.stats()["history"]["file_bytes"].iloc[-1] - log.stat().st_size
    assert len(data) - first_late <= read < len(data) - first_late + (64 << 10) + 100
