"""End to end: producers (threads and processes) -> ZeroMQ -> Subscriber DataFrames."""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest
import zmq

import zpandas as zp
from zpandas._receiver import Receiver
from zpandas import wire

from .conftest import ROOT, wait_for

LOCAL = "@tcp://127.0.0.1:*"


def _generator():
    spec = importlib.util.spec_from_file_location("generate", os.path.join(ROOT, "data", "generate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_local(paths) -> pd.DataFrame:
    """The reference: each file read whole by pyarrow, concatenated."""
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    tables = [pacsv.read_csv(p, convert_options=convert) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.mark.slow
def test_eight_files_four_processes_one_subscriber(tmp_path, procs):
    gen = _generator()
    files = []
    for node in range(1, 5):
        for part in (1, 2):
            path = tmp_path / f"node{node}-{part}.csv"
            gen.make_frame(node, part, rows=3000 + 500 * node, seed=7).to_csv(path, index=False)
            files.append(str(path))
    with zp.Subscriber(LOCAL, topics="job") as sub:
        for node in range(4):
            procs.start("publish", "--quiet", *files[2 * node:2 * node + 2], "-e", ">" + sub.endpoints[0],
                        "-t", "job", "--name", f"node{node + 1}", "--block-size", "65536", "--frame-bytes", "65536")
        got = sub.collect(producers=4, timeout=60)
        stats = sub.stats()
    assert [code for code, _ in procs.wait_all()] == [0, 0, 0, 0], procs.wait_all()

    want = read_local(files)
    assert len(got) == len(want) == sum(3000 + 500 * n for n in range(1, 5)) * 2
    assert sorted(got["_file"].unique()) == sorted(os.path.abspath(f) for f in files)
    pd.testing.assert_frame_equal(sort_rows(got.drop(columns=["_file", "_offset"])), sort_rows(want))
    key = ["host", "metric"]
    pd.testing.assert_frame_equal(
        got.groupby(key)["value"].agg(["count", "sum", "mean", "max"]),
        want.groupby(key)["value"].agg(["count", "sum", "mean", "max"]))
    assert stats["missed"] == 0 and stats["bad_frames"] == {}
    per = stats["producers"]
    assert sorted(per["name"]) == ["node1", "node2", "node3", "node4"]
    assert per["finished"].all() and per["messages"].min() > 2  # several frames per node


def test_topics_are_prefix_matched_as_zeromq_does():
    with zp.Subscriber(LOCAL, topics=["cpu"]) as cpu, zp.Subscriber(LOCAL, topics="mem") as mem:
        with zp.Producer([cpu.endpoints[0], mem.endpoints[0]], topic="cpu") as p:
            p.wait_for_subscribers(1, topic="cpu")
            p.wait_for_subscribers(1, topic="mem")
            for topic in ["cpu", "cpu.load", "cpux", "mem", "memory", "other", "cp"]:
                p.send(pd.DataFrame({"topic": [topic] * 3, "i": [1, 2, 3]}), topic=topic)
        got_cpu = cpu.collect(producers=1, timeout=10)
        got_mem = mem.collect(producers=1, timeout=10)
    assert sorted(set(got_cpu["topic"])) == ["cpu", "cpu.load", "cpux"]
    assert sorted(set(got_mem["topic"])) == ["mem", "memory"]
    assert len(got_cpu) == 9 and len(got_mem) == 6


def test_ten_threads_through_one_producer_every_row_once_in_order():
    threads, sends, rows = 10, 60, 25
    with zp.Subscriber(LOCAL) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, frame_bytes=16 << 10) as p:
            barrier = threading.Barrier(threads)

            def work(k):
                barrier.wait()
                for i in range(sends):
                    n = rows * (1 + i % 3) if i % 10 else 5000  # small and frame-splitting sends
                    p.send(pd.DataFrame({"thread": k, "send": i, "row": np.arange(n)}))

            ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        got = sub.collect(producers=1, timeout=30)
        assert sub.stats()["missed"] == 0
    expected = sum(rows * (1 + i % 3) if i % 10 else 5000 for i in range(sends)) * threads
    assert len(got) == expected
    assert not got.duplicated().any()
    for k, part in got.groupby("thread"):
        # each thread's rows arrive in the order that thread sent them
        assert part["send"].is_monotonic_increasing, f"thread {k} reordered"


def test_plain_pyzmq_sub_and_pyarrow_read_a_producers_frames():
    table = pa.table({"x": np.arange(1000), "y": np.linspace(0, 1, 1000)})
    with zp.Producer("@tcp://127.0.0.1:*", topic="plain") as p:
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        try:
            s.linger = 0
            s.subscribe(b"plain")
            s.connect(p.endpoints[0])
            p.wait_for_subscribers(1, timeout=10)
            p.send(table)
            p.flush()
            assert s.poll(10_000)
            topic, header, body = s.recv_multipart()
        finally:
            s.close()
            ctx.term()
    assert topic == b"plain" and header[:3] == b"ZP\x02"
    assert ipc.open_stream(body).read_all().equals(table)


def _plain_xpub(sub_endpoint):
    """A plain pyzmq XPUB connected to a subscriber; returns once it has subscribed."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 1000
    pub.connect(sub_endpoint)
    assert pub.poll(10_000), "no subscription arrived"
    assert pub.recv()[0] == 1
    return ctx, pub


def test_bad_frames_are_counted_by_reason_and_good_data_still_flows():
    good = pa.table({"v": [1, 2, 3]})
    header = wire.Header(producer=b"p" * 16, name="raw")
    frames = wire.encode(good, topic=b"t", header=header)
    future = bytearray(frames[1])
    future[2] = 9
    # every frame under the 20 kB limit (a larger frame makes libzmq drop the connection,
    # see test_security.py), the message over it
    big = [b"t" * 15_000, frames[1], b"\0" * 10_000]
    with zp.Subscriber(LOCAL, max_message_bytes=20_000) as sub:
        ctx, pub = _plain_xpub(sub.endpoints[0])
        try:
            pub.send(b"hello there")                                        # frames
            pub.send_multipart([b"t", b"garbage header bytes", b"x"])       # magic
            pub.send_multipart([b"t", bytes(future), frames[2]])            # version
            pub.send_multipart([b"t", frames[1], bytes(frames[2])[:-30]])   # body (truncated)
            pub.send_multipart([b"t", frames[1][:50], frames[2]])           # header (truncated)
            pub.send_multipart(big)                                          # oversize
            pub.send_multipart(frames)                                       # good
            wait_for(lambda: sub.stats()["rows"] == 3, what="the good message")
            stats = sub.stats()
        finally:
            pub.close()
            ctx.term()
        df = sub.frame()
    assert stats["bad_frames"] == {"frames": 1, "magic": 1, "version": 1, "body": 1,
                                   "header": 1, "oversize": 1}
    assert df["v"].tolist() == [1, 2, 3]


def test_sequence_gaps_are_counted_and_collect_warns():
    producer = b"g" * 16
    with zp.Subscriber(LOCAL) as sub:
        ctx, pub = _plain_xpub(sub.endpoints[0])
        try:
            for seq in (0, 1, 4, 5):  # 2 and 3 lost on the way; message n has n + 1 rows
                rows = pa.table({"seq": [seq] * (seq + 1)})
                total = seq * (seq + 1) // 2
                pub.send_multipart(wire.encode(rows, topic=b"t", header=wire.Header(
                    producer=producer, seq=seq, total=total)))
            # end-of-stream says 7 were sent: the last one (6) was lost too
            pub.send_multipart(wire.encode(None, topic=b"t", header=wire.Header(
                kind=wire.Kind.END_OF_STREAM, producer=producer, seq=7, total=28)))
            with pytest.warns(zp.DataLossWarning, match="14 rows in 3 messages"):
                df = sub.collect(producers=1, timeout=10)
        finally:
            pub.close()
            ctx.term()
        stats = sub.stats()
        gaps = sub.gaps()
    assert sorted(set(df["seq"])) == [0, 1, 4, 5]
    assert (stats["missed"], stats["missed_rows"]) == (3, 3 + 4 + 7)
    assert stats["producers"].loc[0, "gaps"] == 2
    assert gaps[["kind", "messages", "rows"]].values.tolist() == [["gap", 2, 7], ["gap", 1, 7]]
    assert gaps["time"].dt.tz is not None


def test_microbatches_by_rows_get_iterate_and_frame():
    with zp.Subscriber(LOCAL, batch_rows=100, latency=0.2) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(pd.DataFrame({"i": np.arange(250)}))
        sizes = [len(sub.get(timeout=10)) for _ in range(3)]  # the last 50 after `latency`
        assert sizes == [100, 100, 50]
        sub.collect(producers=1, timeout=10)
        assert sub.frame(last=10)["i"].tolist() == list(range(240, 250))
        assert len(sub.frame()) == 250


def test_latency_releases_a_small_batch():
    with zp.Subscriber(LOCAL, batch_rows=10**6, latency=0.05) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(pd.DataFrame({"i": [1, 2]}))
            df = sub.get(timeout=10)  # arrives though far below batch_rows, producer still open
        assert df["i"].tolist() == [1, 2]
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.05)


def test_drop_policy_drops_the_oldest_microbatch_and_counts_it():
    # each micro-batch is 10 int64 rows = 80 bytes: the queue holds two
    with zp.Subscriber(LOCAL, batch_rows=10, policy="drop", buffer_bytes=160) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, frame_bytes=64) as p:
            for i in range(6):
                p.send(pd.DataFrame({"i": np.arange(10) + 10 * i}))
        wait_for(lambda: sub.stats()["rows"] == 60 and sub.stats()["queued"] == 2,
                 what="a full queue")
        stats = sub.stats()
        assert stats["dropped_batches"] >= 4 and stats["dropped_rows"] == 10 * stats["dropped_batches"]
        # the oldest were dropped: the two newest batches are what is left
        assert sub.get(timeout=1)["i"].tolist() == list(range(40, 50))
        assert sub.get(timeout=1)["i"].tolist() == list(range(50, 60))
        assert len(sub.frame()) == 60  # retained rows are not affected by the queue


def test_retain_bounds_memory_and_collect_warns_about_evicted_rows():
    with zp.Subscriber(LOCAL, retain=25) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, frame_bytes=64) as p:
            for i in range(4):
                p.send(pd.DataFrame({"i": np.arange(10) + 10 * i}))
        with pytest.warns(zp.DataLossWarning, match="15 rows were evicted"):
            df = sub.collect(producers=1, timeout=10)
    assert df["i"].tolist() == list(range(15, 40))


def test_dataframe_index_and_types_survive():
    df = pd.DataFrame({"v": [1.5, 2.5], "s": ["a", "b"]},
                      index=pd.DatetimeIndex(["2026-01-01", "2026-01-02"], tz="UTC", name="ts"))
    with zp.Subscriber(LOCAL) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(df)
            p.send(pa.record_batch({"ts": pa.array([0], pa.timestamp("ns", "UTC")),
                                    "v": [9.0], "s": ["c"]}))
            with pytest.raises(TypeError, match="DataFrame, pyarrow Table or RecordBatch"):
                p.send([1, 2, 3])
        got = sub.collect(producers=1, timeout=10)
    assert got.columns.tolist() == ["ts", "v", "s"]
    assert str(got["ts"].dtype).startswith("datetime64") and str(got["ts"].dt.tz) == "UTC"
    assert got["v"].tolist() == [1.5, 2.5, 9.0]


def test_close_is_idempotent_and_leaves_nothing_running():
    sub = zp.Subscriber(LOCAL)
    p = zp.Producer(sub.endpoints)
    names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("zpandas-subscriber-") for n in names)
    assert any(n.startswith("zpandas-producer-") for n in names)
    p.close()
    p.close()
    sub.close()
    sub.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("zpandas-")]
    assert sub.closed and p.closed
    with pytest.raises(zp.ClosedError):
        p.send(pd.DataFrame({"a": [1]}))
    with pytest.raises(zp.ClosedError):
        sub.get(timeout=0)


def test_setup_errors_reach_the_caller():
    with zp.Subscriber(LOCAL) as sub:
        with pytest.raises(zp.EndpointError, match="Address already in use"):
            zp.Subscriber("@" + sub.endpoints[0])
    with pytest.raises(zp.EndpointError, match="unknown transport"):
        zp.Producer("udp://127.0.0.1:1")
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: the bind fails at once,
    # and no packet is sent anywhere.
    with pytest.raises(zp.EndpointError, match="cannot bind"):
        zp.Producer("@tcp://192.0.2.1:5556")


def test_wait_for_subscribers_times_out_clearly():
    with zp.Subscriber(LOCAL, topics="other") as sub:
        with pytest.raises(TimeoutError, match="0 of 1 subscribers to topic 'mine'"):
            zp.Producer(sub.endpoints, topic="mine", wait_for_subscribers=1, wait_timeout=0.3)


def test_a_failing_worker_is_reported_on_the_next_call(monkeypatch):
    """zpandas' own failure (here the queue hand-off) ends the worker and is re-raised."""
    def boom(self, table):
        raise RuntimeError("hand-off exploded")

    monkeypatch.setattr(Receiver, "_enqueue", boom)
    with zp.Subscriber(LOCAL, latency=0) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(pd.DataFrame({"a": [1]}))
        wait_for(lambda: not sub._thread.is_alive(), what="the worker to stop")
        with pytest.raises(zp.SubscriberBrokenError) as info:
            sub.stats()
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(zp.SubscriberBrokenError):
            sub.get(timeout=1)


def test_a_message_that_breaks_the_receive_path_is_counted_and_skipped(monkeypatch, caplog):
    """Whatever one message makes the receive path raise, the next message still arrives."""
    real = Receiver._receive
    calls = []

    def flaky(self, frames):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("this message broke something")
        return real(self, frames)

    monkeypatch.setattr(Receiver, "_receive", flaky)
    with zp.Subscriber(LOCAL) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, name="p1", heartbeat=0) as p:
            for a in (1, 2, 3):
                p.send(pd.DataFrame({"a": [a]}))
                p.flush()
                wait_for(lambda: len(calls) == a, what=f"message {a}")
        with pytest.warns(zp.DataLossWarning, match="1 rows in 1 messages from p1"):
            df = sub.collect(timeout=10)  # the refused message is a loss, and says so
        assert df["a"].tolist() == [1, 3]
        assert sub.stats()["bad_frames"] == {"error": 1}
        assert sub._thread.is_alive()
        row = sub.stats()["producers"].iloc[0]
        assert (row["name"], row["bad_frames"], row["missed"]) == ("p1", 1, 1)
    assert "refused a message from 'p1'" in caplog.text and "this message broke" in caplog.text
