"""zpandas.dask on a LocalCluster of 2 worker processes: a sharded stream from producer
processes, every row exactly once across workers, aggregations equal to pandas, one
Parquet dataset, and a killed worker's buckets moving with the loss counted."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest

import zpandas as zp

from .conftest import wait_for

distributed = pytest.importorskip("distributed", reason="Dask not installed: pip install 'zpandas[dask]'")
dd = pytest.importorskip("dask.dataframe")
zdask = pytest.importorskip("zpandas.dask")

pytestmark = pytest.mark.timeout(300)

SHARDS = 8


@pytest.fixture
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None, worker_dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture
def proxy():
    with zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") as p:
        yield p


def start_producers(streamers, proxy, n: int, *args: str) -> list:
    return [streamers.start(">" + proxy.frontend[0], "--topic", "m", "--name", f"node{i}",
                            "--shards", str(SHARDS), "--wait-for", "1", *args)
            for i in range(n)]


def test_every_row_once_across_workers_aggregated_and_written(client, proxy, streamers, tmp_path):
    with zdask.DaskSubscriber(client, ">" + proxy.backend[0], topic="m", shards=SHARDS) as ds:
        owned = ds.buckets()
        assert sorted(b for bs in owned.values() for b in bs) == list(range(SHARDS))
        assert all(owned.values())                      # both workers take a share
        procs = start_producers(streamers, proxy, 8, "--sends", "5", "--rows", "2000")
        sent = {f"node{i}": streamers.result(p)["rows"] for i, p in enumerate(procs)}
        wait_for(lambda: ds.stats()["rows"] == sum(sent.values()), timeout=60, what="every row")

        frame = ds.frame()
        assert isinstance(frame, dd.DataFrame) and frame.npartitions == 2
        rows = frame.compute()
        for name, n in sent.items():                     # every row of every producer, once
            assert sorted(rows.loc[rows["producer"] == name, "id"]) == list(range(n))
        per_worker = [p.compute() for p in frame.partitions]
        assert all(len(p) for p in per_worker)          # the rows are spread over the workers
        assert not set(per_worker[0]["producer"]) & set(per_worker[1]["producer"])

        agg = ds.aggregate(by="producer", values={"value": ["count", "sum", "mean", "min", "max"],
                                                  "id": ["first", "last"]})
        wait_for(lambda: agg.stats()["rows"] == sum(sent.values()), timeout=60, what="aggregated")
        got = agg.result().set_index("producer").sort_index()
        order = pd.concat(per_worker)                    # first/last: in the workers' order
        want = order.groupby("producer").agg(
            value_count=("value", "count"), value_sum=("value", "sum"), value_mean=("value", "mean"),
            value_min=("value", "min"), value_max=("value", "max"),
            id_first=("id", "first"), id_last=("id", "last")).sort_index()
        for col in want:
            np.testing.assert_allclose(got[col].astype(float), want[col].astype(float), err_msg=col)

        windows = ds.aggregate(by="producer", values={"value": ["mean", "count"]}, window="1s", on="ts")
        wait_for(lambda: windows.stats()["rows"] == sum(sent.values()), timeout=60, what="windowed")
        got = windows.result()
        want = rows.groupby([pd.Grouper(key="ts", freq="1s"), "producer"])["value"].agg(["mean", "count"])
        assert len(got) == len(want) and got["value_count"].tolist() == want["count"].tolist()
        np.testing.assert_allclose(got["value_mean"], want["mean"])
        plot = zp.LivePlot(windows, y="value_mean", start=False)   # as for a local aggregation
        plot.refresh()
        assert plot.last_error is None and plot.png.startswith(b"\x89PNG")
        assert "mean of value" in plot.table.value and f"{sum(sent.values()):,} rows" in plot.status.value

        stats = ds.stats()
        assert stats["workers"] == 2 and stats["missed_rows"] == 0 and not stats["lost"]
        assert sorted(stats["producers"].groupby("name")["rows"].sum().items()) == sorted(sent.items())

        path = ds.to_parquet(tmp_path / "rows")
        assert len(os.listdir(path)) == 2                # a file per worker, one dataset
        back = pd.read_parquet(path)
        assert len(back) == sum(sent.values())
        assert len(dd.read_parquet(path).compute()) == sum(sent.values())
        parted = ds.to_parquet(tmp_path / "by_producer", partition_by="producer")
        assert sorted(os.listdir(parted)) == sorted(f"producer={n}" for n in sent)
        assert len(pd.read_parquet(parted)) == sum(sent.values())


def test_a_killed_workers_buckets_move_and_the_loss_is_counted(client, proxy, streamers):
    with zdask.DaskSubscriber(client, ">" + proxy.backend[0], topic="m", shards=SHARDS) as ds:
        procs = start_producers(streamers, proxy, 4, "--rows", "200", "--pause", "0.01")
        wait_for(lambda: ds.stats()["producers"]["name"].nunique() == 4, timeout=60,
                 what="every producer heard")
        producers = ds.stats()["producers"]
        victim = producers.loc[producers["rows"] > 0, "worker"].iloc[0]   # one that has rows
        moved = ds.buckets()[victim]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)                    # the worker process dies
        # calls fail until the scheduler sees it gone; then its buckets move, and every
        # producer's rows flow again
        after = ds.wait_for_producers(4, timeout=120)
        assert victim not in set(after["worker"])
        # every stream's count adds up: what its producer sent = received + lost
        assert (after["sent_rows"] == after["rows"] + after["skipped_rows"] + after["missed_rows"]).all()
        assert after["skipped_rows"].sum() > 0            # the moved streams joined late
        assert [m["worker"] for m in ds.lost] == [victim] and sorted(ds.lost[0]["buckets"]) == moved
        assert ds.rebalance() == []                       # nothing left to move
        assert sorted(b for bs in ds.buckets().values() for b in bs) == list(range(SHARDS))
        # the stream goes on: the moved buckets' producers arrive at their new owner, and
        # what the dead worker held (or missed meanwhile) shows as joined late
        def rejoined():
            gaps = ds.gaps()
            return len(gaps) and (gaps["kind"] == "joined late").any() and \
                ds.stats()["skipped_rows"] > 0
        wait_for(rejoined, timeout=60, what="the moved streams to rejoin, their loss counted")
        before = ds.stats()["rows"]
        wait_for(lambda: ds.stats()["rows"] > before, timeout=30, what="rows still arriving")
        assert ds.stats()["lost"][0]["worker"] == victim
        for p in procs:
            streamers.tell(p, "stop")
        for p in procs:
            streamers.result(p)
