"""Parquet: round trips (plain and partitioned), atomic replacement, the rolling sink."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import zpandas as zp

from .test_aggregate import frame


def same(a: pd.DataFrame, b: pd.DataFrame, by: list[str]) -> None:
    a = a[b.columns].sort_values(by, ignore_index=True)
    b = b.sort_values(by, ignore_index=True)
    for c in b.columns:
        if isinstance(a[c].dtype, pd.CategoricalDtype):  # partition columns come back categorical
            a[c] = a[c].astype(b[c].dtype)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_round_trip_one_file_with_provenance(tmp_path):
    df = frame(10_000)
    path = zp.to_parquet(df, tmp_path / "rows.parquet", provenance={"producers": ["node1"]})
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    assert ds.dataset(path).to_table().num_rows == len(df)
    meta = json.loads(pq.read_schema(path).metadata[b"zpandas"])
    assert meta["version"] == zp.__version__ and meta["producers"] == ["node1"]
    assert os.listdir(tmp_path) == ["rows.parquet"]  # no temporary file left


def test_files_get_the_usual_permissions_not_private_ones(tmp_path):
    umask = os.umask(0o022)  # a known umask, restored below
    try:
        file = zp.to_parquet(frame(10), tmp_path / "rows.parquet")
        folder = zp.to_parquet(frame(10), tmp_path / "parts", partition_by="host")
    finally:
        os.umask(umask)
    # as pandas.to_parquet's would be: others may read what was exported
    assert os.stat(file).st_mode & 0o777 == 0o644
    assert os.stat(folder).st_mode & 0o777 == 0o755


@pytest.mark.parametrize("by", [["host"], ["date"], ["host", "metric"]])
def test_round_trip_partitioned(tmp_path, by):
    df = frame(10_000)
    path = zp.to_parquet(df, tmp_path / "rows", partition_by=by)
    back = ds.dataset(path, partitioning="hive").to_table().to_pandas()
    want = df.assign(date=df["timestamp"].dt.strftime("%Y-%m-%d")) if by == ["date"] else df
    same(back, want, ["timestamp", "host", "metric"])
    same(pd.read_parquet(path), want, ["timestamp", "host", "metric"])
    first = by[0]
    assert sorted(os.listdir(path)) == sorted(f"{first}={v}" for v in want[first].unique())
    with pytest.raises(ValueError, match="no such column"):
        zp.to_parquet(df, tmp_path / "x", partition_by="nope")


@pytest.mark.parametrize("partition_by", [None, "host"])
def test_a_reader_never_sees_a_half_written_file(tmp_path, partition_by):
    path = tmp_path / ("rows.parquet" if partition_by is None else "rows")
    versions = [frame(20_000, seed) for seed in range(6)]
    zp.to_parquet(versions[0], path, partition_by=partition_by)
    lengths = {len(v) for v in versions}
    seen, bad, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(ds.dataset(path, partitioning="hive").count_rows())
            except FileNotFoundError:
                pass  # listed just before a folder swap: retry, never a partial read
            except Exception as e:  # a torn file would land here
                bad.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in versions[1:] * 3:
            zp.to_parquet(v, path, partition_by=partition_by)
    finally:
        stop.set()
        t.join()
    assert not bad  # never a torn file
    if partition_by is None:
        assert seen and set(seen) <= lengths  # a file is replaced whole: always one version
    else:
        assert seen and max(seen) <= max(lengths)  # a folder: complete files, maybe of two versions
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_sink_rolls_by_size_and_reads_back_whole(tmp_path):
    df = frame(30_000)
    with zp.ParquetSink(tmp_path / "sink", roll_bytes=200_000, roll_seconds=3600,
                        provenance=lambda: {"producers": ["x"]}) as sink:
        for i in range(0, len(df), 1_000):
            sink.write(df.iloc[i:i + 1_000])
    assert len(sink.files) > 3 and sink.rows == len(df)
    back = pd.read_parquet(tmp_path / "sink")
    same(back, df, ["timestamp", "host", "metric"])
    names = sorted(os.listdir(tmp_path / "sink"))
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names)


def test_sink_rolls_by_time(tmp_path):
    sink = zp.ParquetSink(tmp_path, roll_seconds=0.0)
    sink.write(frame(10))
    sink.write(frame(10))
    assert len(sink.files) == 2
    sink.close()
    assert len(os.listdir(tmp_path)) == 2


def test_subscriber_and_aggregation_export_with_provenance(tmp_path):
    df = frame(5_000)
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        agg = sub.aggregate(by="host", values={"value": ["mean"]}, window="10min")
        with zp.Producer(sub.endpoints, name="node7", wait_for_subscribers=1) as p:
            p.send(df, source="/var/log/m.csv", offsets=(10, 999))
        sub.collect(producers=1, timeout=10)
        rows = sub.to_parquet(tmp_path / "rows", partition_by="host")
        aggs = agg.to_parquet(tmp_path / "agg.parquet")
    same(pd.read_parquet(rows), df, ["timestamp", "host", "metric"])
    assert len(pd.read_parquet(aggs)) == len(agg.result())
    part = next(f for f in ds.dataset(rows).files)
    meta = json.loads(pq.read_schema(part).metadata[b"zpandas"])
    (producer,) = meta["producers"]
    assert producer["name"] == "node7" and producer["rows"] == 5_000
    assert producer["sources"] == {"/var/log/m.csv": [10, 999]}
    assert np.isfinite(pd.read_parquet(aggs)["value_mean"]).all()
