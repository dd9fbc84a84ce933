"""Event time: the watermark is the slowest active producer's progress, a window is final
``idle`` seconds after the watermark passes it, and a producer a little behind is never
called late. Unit cases run on a fake clock; the last case is three real producer
processes of different speeds tailing growing logs."""

from __future__ import annotations

import os
import signal
import threading
import types

import numpy as np
import pandas as pd
import pytest

import zpandas as zp
import zpandas.aggregate as aggregate_module

from .conftest import ROOT, wait_for

T = pd.Timestamp("2026-11-01T10:00:00Z")
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


@pytest.fixture
def clock(monkeypatch):
    """The aggregation's monotonic clock, set by the test."""
    fake = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(aggregate_module, "time", types.SimpleNamespace(monotonic=lambda: fake.now))
    return fake


def rows(minutes, value: float = 1.0) -> pd.DataFrame:
    ts = [T + pd.Timedelta(minutes=m) for m in np.atleast_1d(minutes)]
    return pd.DataFrame({"timestamp": ts, "value": value})


def send(agg: zp.Aggregation, source: bytes, df: pd.DataFrame) -> None:
    """What a Subscriber's feed does for one producer's message."""
    with agg._lock:
        agg._arrived(source)
        agg._fold(df, [(source, len(df))])


def test_the_watermark_is_the_slowest_active_producer(clock):
    agg = zp.Aggregation(values={"value": "sum"}, window="1min", idle=5)
    send(agg, A, rows(5))
    send(agg, B, rows(2))
    stats = agg.stats()
    assert stats["watermark"] == T + pd.Timedelta(minutes=2)
    assert (stats["producers"], stats["active"], stats["slowest"]) == (2, 2, B.hex()[:12])
    # B is 3 minutes behind A in event time: its rows count
    send(agg, B, rows([2.5, 1.5]))
    assert agg.stats()["late_rows"] == 0 and agg.result()["value_sum"].sum() == 4


def test_a_window_is_final_idle_seconds_after_the_watermark_passes_it(clock):
    agg = zp.Aggregation(values={"value": "sum"}, window="1min", idle=5)
    send(agg, A, rows([0.5, 3.5]))
    assert agg.stats()["final_through"] is None and not agg.result()["final"].any()
    clock.now += 4.9
    send(agg, A, rows(3.6))
    assert agg.stats()["final_through"] is None
    clock.now += 0.2   # the watermark (10:03:30) was reached more than 5 s ago
    send(agg, A, rows(3.7))
    assert agg.stats()["final_through"] == T + pd.Timedelta(minutes=3.5)
    got = agg.result().set_index("window_start")["final"]
    assert got.to_dict() == {T: True, T + pd.Timedelta(minutes=3): False}
    send(agg, A, rows(0.9, value=100.0))           # a final window: late, kept aside
    assert agg.stats()["late_rows"] == 1 and agg.late()["value"].tolist() == [100.0]
    assert agg.result()["value_sum"].tolist() == [1.0, 3.0]


def test_a_producer_silent_for_idle_seconds_stops_holding_the_watermark(clock):
    agg = zp.Aggregation(values={"value": "sum"}, window="1min", idle=5)
    send(agg, A, rows(5))
    send(agg, B, rows(2))
    clock.now += 6
    send(agg, A, rows(6))
    stats = agg.stats()
    assert stats["watermark"] == T + pd.Timedelta(minutes=6) and stats["active"] == 1
    clock.now += 6
    send(agg, A, rows(7))
    assert agg.stats()["final_through"] == T + pd.Timedelta(minutes=6)
    send(agg, B, rows(3))          # B back, but its window was final: late
    assert agg.stats()["late_rows"] == 1
    send(agg, B, rows(6.5))        # ... and holds the watermark back again once active
    assert agg.stats()["watermark"] == T + pd.Timedelta(minutes=6.5)


def test_an_ended_producer_stops_holding_the_watermark_at_once(clock):
    agg = zp.Aggregation(values={"value": "sum"}, window="1min", idle=5)
    send(agg, A, rows(5))
    send(agg, B, rows(2))
    with agg._lock:
        agg._time.end(B)
    assert agg.stats()["watermark"] == T + pd.Timedelta(minutes=5)
    assert agg.stats()["active"] == 1


def test_a_producer_that_starts_within_idle_seconds_is_not_late(clock):
    """A replay of two nodes' files: A sends all of its hour before B starts."""
    agg = zp.Aggregation(values={"value": ["sum", "count"]}, window="5min", idle=5)
    send(agg, A, rows(np.arange(0, 60, 0.5)))
    with agg._lock:
        agg._time.end(A)
    clock.now += 4
    send(agg, B, rows(np.arange(0, 60, 0.5)))
    with agg._lock:
        agg._time.end(B)
    assert agg.stats()["late_rows"] == 0 and agg.result()["value_count"].sum() == 240
    clock.now += 5   # every producer quiet for idle seconds: nobody to wait for
    got = agg.result()
    assert got["final"].all() and got["value_count"].tolist() == [20] * 12
    # a third node starting after that is late: said, and its rows kept aside
    send(agg, C, rows([1, 2]))
    assert agg.stats()["late_rows"] == 2 and len(agg.late()) == 2


def test_idle_must_not_be_negative():
    with pytest.raises(ValueError, match="idle"):
        zp.Aggregation(values={"value": "sum"}, idle=-1)


def test_three_producers_of_different_speeds_all_count(procs, tmp_path):
    """The live dashboard's case: three nodes' growing logs, written at different rates
    and tailed by `zpandas publish --follow` processes started one after another. Every
    host has its windows, and under 1% of rows are late (here: none should be)."""
    speeds = {"node1": (100, 0.05), "node2": (10, 0.05), "node3": (40, 0.4)}  # rows, every s
    batches = {"node1": 80, "node2": 80, "node3": 10}                       # about 4 s each
    stop = threading.Event()

    def job(host: str) -> None:
        n, every = speeds[host]
        rng = np.random.default_rng(len(host) + int(host[-1]))
        with open(tmp_path / f"{host}.csv", "w") as f:
            f.write("timestamp,host,value\n")
            f.flush()
            for _ in range(batches[host]):
                if stop.wait(every):
                    return
                now = pd.Timestamp.now(tz="UTC")
                # rows of a batch a little out of order, as a busy service writes them
                f.writelines(f"{(now - pd.Timedelta(milliseconds=float(ms))).isoformat()},{host},1\n"
                             for ms in rng.uniform(0, every * 1000, n))
                f.flush()

    written = {h: speeds[h][0] * batches[h] for h in speeds}
    with zp.Subscriber("@tcp://127.0.0.1:*", retain=0) as sub:
        agg = sub.aggregate(by="host", values={"value": "count"}, window="1s", on="timestamp")
        jobs = [threading.Thread(target=job, args=(h,)) for h in speeds]
        try:
            tails = []
            for i, host in enumerate(speeds):
                for t in jobs[i:i + 1]:
                    t.start()
                tails.append(procs.start("publish", str(tmp_path / f"{host}.csv"), "--follow",
                                         "-e", ">" + sub.endpoints[0], "--name", host, "--quiet"))
                # the next node starts once this one's rows flow: seconds apart
                wait_for(lambda: sub.stats()["rows"] > 0 and len(sub.stats()["producers"]) == i + 1,
                         timeout=60, what=f"{host}'s rows")
            for t in jobs:
                t.join(60)
            wait_for(lambda: sub.stats()["rows"] == sum(written.values()), timeout=60,
                     what="every row written")
        finally:
            stop.set()
            for t in jobs:
                t.join(10)
        for p in tails:
            p.send_signal(signal.SIGTERM)
        assert [rc for rc, _ in procs.wait_all(timeout=30)] == [-signal.SIGTERM] * 3
        wait_for(lambda: agg.stats()["windows_open"] == 0, timeout=60, what="the last windows to close")
        stats, got, late = agg.stats(), agg.result(), agg.late()
    counted = got.groupby("host")["value_count"].sum().to_dict()
    late_by_host = late.groupby("host").size().to_dict() if len(late) else {}
    assert {h: counted.get(h, 0) + late_by_host.get(h, 0) for h in speeds} == written  # each row once
    assert set(counted) == set(speeds)                     # every host has its windows
    assert stats["late_rows"] < 0.01 * sum(written.values()), (stats, late_by_host)
    assert got["final"].all()


def test_two_nodes_files_replayed_one_after_the_other_count_in_full(procs):
    """The README's case: node2's files are published after node1's have all been sent
    (hours of event time each): nothing is late, and the result equals pandas."""
    data = os.path.join(ROOT, "data")
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="metrics") as sub:
        agg = sub.aggregate(by="host", values={"value": ["count", "mean"]}, window="5min",
                            where="metric == 'cpu_pct'")
        for node in ("node1", "node2"):
            procs.start("publish", "--quiet", os.path.join(data, node, "*.csv"), "-e",
                        ">" + sub.endpoints[0], "-t", "metrics", "--name", node)
            assert procs.wait_all(timeout=60)[-1][0] == 0
        df = sub.collect(producers=2, timeout=60)
        wait_for(lambda: agg.stats()["windows_open"] == 0, timeout=60, what="every window final")
        got, stats = agg.result(), agg.stats()
    cpu = df[df["metric"] == "cpu_pct"].assign(timestamp=lambda d: pd.to_datetime(d["timestamp"], utc=True))
    want = cpu.groupby([pd.Grouper(key="timestamp", freq="5min"), "host"])["value"].agg(["count", "mean"])
    assert stats["late_rows"] == 0 and stats["rows"] == len(cpu)
    assert got["value_count"].tolist() == want["count"].tolist()
    np.testing.assert_allclose(got["value_mean"], want["mean"])
    assert got["final"].all()


def test_an_aggregation_made_after_quiet_producers_ended_counts_all_their_rows():
    """The rows received before aggregate() are folded as one backlog: windows close
    after all of it, not after the first run of one schema (which would make the other
    producers' rows, of the same hours, late)."""
    t = pd.date_range("2026-11-01", periods=6000, freq="1s", tz="UTC")
    ints = pd.DataFrame({"timestamp": t, "host": "a", "value": np.arange(6000)})
    floats = pd.DataFrame({"timestamp": t, "host": "b", "value": np.arange(6000) / 2})  # another schema
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        for name, df in (("a", ints), ("b", floats)):
            with zp.Producer(sub.endpoints, name=name, wait_for_subscribers=1) as p:
                p.send(df)
        sub.collect(producers=2, timeout=60)
        last = sub.stats()["producers"]["last_seen"].max()
        wait_for(lambda: pd.Timestamp.now(tz="UTC") - last > pd.Timedelta(seconds=0.6),
                 what="the producers to have been quiet for idle seconds")
        agg = sub.aggregate(by="host", values={"value": "count"}, window="10min", idle=0.5)
        got, stats = agg.result(), agg.stats()
    assert stats["late_rows"] == 0 and got.groupby("host")["value_count"].sum().to_dict() == {"a": 6000, "b": 6000}
    assert got["final"].all()
