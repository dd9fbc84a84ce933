"""Micro-batching by rows and latency, driven by a fake clock."""

import pyarrow as pa
import pytest

from zpandas._batcher import MicroBatcher


def t(n, start=0, name="a"):
    return pa.table({name: list(range(start, start + n))})


def test_releases_when_rows_reached():
    b = MicroBatcher(max_rows=10, max_latency=1.0)
    assert b.add(t(4), now=0.0) == []
    assert b.add(t(4, 4), now=0.1) == []
    [out] = b.add(t(6, 8), now=0.2)
    assert out.column("a").to_pylist() == list(range(10))
    assert b.pending_rows == 4
    [out] = b.add(t(6, 14), now=0.3)
    assert out.column("a").to_pylist() == list(range(10, 20))
    assert b.pending_rows == 0 and b.timeout(0.3) is None


def test_large_tables_are_split_and_the_rest_keeps_its_age():
    b = MicroBatcher(max_rows=10, max_latency=1.0)
    out = b.add(t(35), now=5.0)
    assert [o.num_rows for o in out] == [10, 10, 10]
    assert b.pending_rows == 5 and b.timeout(5.5) == pytest.approx(0.5)
    [rest] = b.due(6.0)
    assert rest.column("a").to_pylist() == list(range(30, 35))


def test_releases_when_latency_reached_counting_from_oldest_rows():
    b = MicroBatcher(max_rows=1000, max_latency=0.5)
    b.add(t(1), now=10.0)
    b.add(t(1, 1), now=10.4)
    assert b.due(10.49) == []
    assert b.timeout(10.2) == pytest.approx(0.3)
    [out] = b.due(10.5)
    assert out.num_rows == 2
    assert b.due(100.0) == []


def test_new_schema_closes_the_pending_batch():
    b = MicroBatcher(max_rows=1000, max_latency=1.0)
    b.add(t(2), now=0.0)
    [out] = b.add(t(3, name="b"), now=0.1)
    assert out.column_names == ["a"] and out.num_rows == 2
    [rest] = b.flush()
    assert rest.column_names == ["b"] and rest.num_rows == 3
    assert b.flush() == []


def test_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        MicroBatcher(0, 1.0)
    with pytest.raises(ValueError):
        MicroBatcher(1, -1)
