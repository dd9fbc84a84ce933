"""Nothing grows without bound: every per-producer, per-source and per-file structure has
a cap or an expiry (docs/guarantees.md, "Limits"), and a long soak shows flat memory."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zmq

import zpandas as zp
import zpandas._receiver as receiver_module
import zpandas.streams as streams_module
from zpandas import wire
from zpandas.sources.checkpoint import RETENTION, Checkpoint
from zpandas.sources.follow import Follower

from .conftest import wait_for

LOCAL = "@tcp://127.0.0.1:*"


class RawPeer:
    """Sends wire messages as any number of producers, from one socket that never drops."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.sndhwm = 0
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.connect(endpoint)
        assert self.pub.poll(10_000)
        self.pub.recv()

    def send(self, table, *, producer: bytes, seq: int, total: int, source="", start=-1, end=-1,
             kind=wire.Kind.DATA, topic=b"t") -> None:
        header = wire.Header(kind=kind, producer=producer, seq=seq, total=total, name=producer.hex()[:6],
                             source=source, start=start, end=end)
        self.pub.send_multipart(wire.encode(table, topic=topic, header=header))

    def close(self) -> None:
        self.pub.close(linger=5000)
        self.ctx.term()


ROW = pa.table({"x": [1]})


def test_streams_are_capped_and_their_losses_still_counted(monkeypatch):
    monkeypatch.setattr(streams_module, "MAX_STREAMS", 50)
    with zp.Subscriber(LOCAL) as sub:
        peer = RawPeer(sub.endpoints[0])
        try:
            for i in range(200):
                # each producer joined late (seq 1) and lost one message (seq 3 after 1)
                pid = i.to_bytes(16, "big")
                peer.send(ROW, producer=pid, seq=1, total=1)
                peer.send(ROW, producer=pid, seq=3, total=3)
            wait_for(lambda: sub.stats()["messages"] == 400, what="every message")
            st = sub.stats()
            assert len(st["producers"]) == 50
            # the last 50 heard from are kept; the others' counts are still in the totals
            assert set(st["producers"]["name"]) == {i.to_bytes(16, "big").hex()[:6] for i in range(150, 200)}
            assert (st["missed"], st["missed_rows"], st["skipped_rows"]) == (200, 200, 200)
        finally:
            peer.close()


def test_what_a_producer_sent_adds_up_and_waiting_for_producers_says_who():
    five = pa.table({"x": range(5)})
    with zp.Subscriber(LOCAL) as sub:
        peer = RawPeer(sub.endpoints[0])
        try:
            pid = b"p" * 16
            peer.send(five, producer=pid, seq=2, total=10)      # 2 messages sent before we joined
            peer.send(five, producer=pid, seq=4, total=20)      # seq 3 lost on the way
            table = sub.wait_for_producers(1, timeout=30)
            wait_for(lambda: sub.stats()["rows"] == 10, what="both messages")
            row = sub.stats()["producers"].iloc[0]
            assert (row["rows"], row["skipped_rows"], row["missed_rows"], row["sent_rows"]) == (10, 10, 5, 25)
            assert len(table) == 1 and table["name"].iloc[0] == pid.hex()[:6]
            with pytest.raises(TimeoutError, match=r"rows from 1 of 2 producers within 0.3 s: 707070"):
                sub.wait_for_producers(2, timeout=0.3)
        finally:
            peer.close()


def test_dedup_sources_are_capped(monkeypatch):
    monkeypatch.setattr(streams_module, "MAX_SOURCES", 100)
    monkeypatch.setattr(streams_module, "SOURCES_PER_STREAM", 10)
    rows = pa.table({"x": [1], "_offset": pa.array([0], pa.int64())})
    with zp.Subscriber(LOCAL) as sub:
        peer = RawPeer(sub.endpoints[0])
        try:
            pid = bytes(16)
            for i in range(1000):
                peer.send(rows, producer=pid, seq=i, total=i, source=f"src/{i}", start=0, end=10)
            wait_for(lambda: sub.stats()["messages"] == 1000, what="every message")
            assert len(sub._rx.protocol.done) == 100
            assert list(sub._rx.protocol.done)[-1][1] == "src/999"  # the most recent are kept
            sources = sub.stats()["producers"].iloc[0]["sources"]
            assert list(sources) == [f"src/{i}" for i in range(990, 1000)]
            assert sub.stats()["rows"] == 1000
            # resent: a forgotten source's rows are taken again, a remembered one's dropped
            peer.send(rows, producer=pid, seq=1000, total=1000, source="src/0", start=0, end=10)
            peer.send(rows, producer=pid, seq=1001, total=1001, source="src/999", start=0, end=10)
            wait_for(lambda: sub.stats()["messages"] == 1002, what="the resent messages")
            assert (sub.stats()["rows"], sub.stats()["duplicate_rows"]) == (1001, 1)
        finally:
            peer.close()


def test_rate_window_is_a_fixed_number_of_buckets():
    s = streams_module.StreamState("p", first_seen=0.0)
    for i in range(100_000):
        s.count_rows(i / 1000, 1)   # 100 s of messages, 1,000 a second
    assert len(s.recent) <= streams_module.RATE_WINDOW + 2
    assert s.rate(100.0) == pytest.approx(1000, rel=0.25)


def test_memory_budget_warns_once_when_rows_are_kept_without_limit(caplog):
    with zp.Subscriber(LOCAL, memory_budget=1 << 20) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            for _ in range(4):
                p.send(pd.DataFrame({"x": np.arange(100_000)}))  # 800 KB each
        with pytest.warns(zp.MemoryBudgetWarning, match="memory_budget=1048576"):
            sub.collect(timeout=30)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sub.frame()    # once only
            sub.stats()
    assert "grow without bound" in caplog.text


def test_memory_budget_is_silent_with_retain():
    with zp.Subscriber(LOCAL, memory_budget=1 << 20, retain=10_000) as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            for _ in range(4):
                p.send(pd.DataFrame({"x": np.arange(100_000)}))
        with pytest.warns(zp.DataLossWarning, match="evicted"):
            df = sub.collect(timeout=30)
        assert len(df) == 10_000


def test_follower_forgets_finished_files_that_are_gone(tmp_path):
    paths = []
    for i in range(20):
        path = tmp_path / f"app.log.{i}"
        path.write_bytes(b"line\n" * 10)
        paths.append(path)
    f = Follower([str(tmp_path / "app.log*")], release_after=0)
    try:
        chunks = f.poll(final=True)
        assert sum(len(c.records) for c in chunks) == 200
        f.poll()
        assert len(f._finished) == 20 and len(f.present) == 20
        for path in paths[:15]:
            os.remove(path)
        f.poll()
        assert len(f._finished) == 5 and len(f.present) == 5
    finally:
        f.close()


def test_checkpoint_entries_of_files_gone_for_the_retention_period_are_pruned(tmp_path):
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        ck.save([(f"k{i}", f"/f{i}", 1, i, b"head", 100, 5) for i in range(10)])
        now = time.time()
        assert ck.expire({f"k{i}" for i in range(10)}, now=now) == 0
        # k0-k4 still exist a week later (seen), k5-k9 are gone
        assert ck.expire({f"k{i}" for i in range(5)}, now=now + RETENTION / 2) == 0
        assert ck.expire({f"k{i}" for i in range(5)}, now=now + RETENTION + 1) == 5
        assert sorted(ck.load()) == [f"k{i}" for i in range(5)]


def test_checkpoint_written_before_expiry_existed_is_upgraded(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('source_id', 'abc');
        CREATE TABLE files (key TEXT PRIMARY KEY, path TEXT NOT NULL, dev INTEGER NOT NULL,
        ino INTEGER NOT NULL, head BLOB NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
        updated REAL NOT NULL);
        INSERT INTO files VALUES ('k', '/f', 1, 2, x'00', 10, 2, 0);""")
    db.commit()
    db.close()
    with Checkpoint(path) as ck:
        assert ck.source_id == "abc" and list(ck.load()) == ["k"]
        assert ck.expire(set()) == 1  # updated at the epoch: long gone


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_many_short_lived_producers_keep_memory_flat():
    """100,000 small messages from 200 short-lived producers: memory stays flat.

    Each producer is a socket of its own that connects, sends 500 one-row messages from
    a file of its own, says end-of-stream and disconnects; the messages are encoded once
    and stamped per send, so the subscriber - the subject - is what the time goes to.
    """
    producers, per_producer = 200, 500
    bodies = []  # encoded once: the subscriber is the subject, not the encoder
    for i in range(per_producer):
        rows = pa.table({"n": [1], "_offset": pa.array([i * 10], pa.int64())})
        bodies.append((wire.encode_body(rows).to_pybytes(), wire.fingerprint(rows.schema)))
    ctx = zmq.Context()
    try:
        with zp.Subscriber(LOCAL, retain=10_000, batch_rows=1_000, latency=0.01) as sub:
            marks = {}
            for n in range(producers):
                pid = os.urandom(16)
                pub = ctx.socket(zmq.XPUB)
                pub.sndhwm = 0
                pub.setsockopt(zmq.XPUB_NODROP, 1)
                pub.connect(sub.endpoints[0])
                assert pub.poll(10_000)
                pub.recv()
                for i, (body, fp) in enumerate(bodies):
                    header = wire.Header(producer=pid, seq=i, total=i, name=f"short-{n}",
                                         source=f"file-{n}", start=i * 10, end=i * 10 + 10,
                                         rows=1, fingerprint=fp)
                    pub.send_multipart([b"t", header.pack(), body])
                end = wire.Header(kind=wire.Kind.END_OF_STREAM, producer=pid, seq=per_producer,
                                  total=per_producer, name=f"short-{n}")
                pub.send_multipart(wire.encode(None, topic=b"t", header=end))
                pub.close(linger=10_000)
                if (n + 1) % 50 == 0:
                    wait_for(lambda: sub.stats()["messages"] == (n + 1) * per_producer,
                             timeout=120, what="every message so far")
                    while True:  # get() keeps the queue drained, as a notebook would
                        try:
                            sub.get(timeout=0)
                        except TimeoutError:
                            break
                    gc.collect()
                    marks[n + 1] = (_rss(), pa.total_allocated_bytes())
            st = sub.stats()
            assert st["messages"] == producers * per_producer and st["missed"] == 0
            assert len(st["producers"]) == producers and st["producers"]["finished"].all()
            assert all(len(s.recent) <= 7 for s in sub._rx.protocol.streams.values())
            assert len(sub._rx.protocol.done) == producers
            assert len(sub.frame()) == 10_000
    finally:
        ctx.term()
    # After the first half (allocator warm-up: arenas, caches), the second 100 producers
    # and 50,000 messages may cost their 100 stats rows, no more.
    (rss_a, arrow_a), (rss_b, arrow_b) = marks[100], marks[200]
    assert rss_b - rss_a < 16 << 20, f"RSS grew {(rss_b - rss_a) >> 20} MiB: {marks}"
    assert arrow_b - arrow_a < 1 << 20, f"Arrow memory grew {(arrow_b - arrow_a) >> 10} KiB"


def test_retained_small_tables_are_compacted_and_evicted_exactly():
    from zpandas._retained import COMPACT_EVERY, Retained
    kept = Retained(limit=1000)
    a, b = b"a" * 16, b"b" * 16
    evicted = 0
    for i in range(3000):
        evicted += kept.add(a if i < 2000 else b, pa.table({"i": [i]}))
    assert kept.rows == 1000 and evicted == 2000
    tables = kept.tables()
    assert pa.concat_tables(tables)["i"].to_pylist() == list(range(2000, 3000))
    # a thousand one-row messages are a handful of contiguous tables, not a thousand,
    # plus fewer than COMPACT_EVERY waiting to be combined
    assert len(kept._entries) <= 1000 // COMPACT_EVERY + 2
    assert all(t.column(0).num_chunks == 1 for _, t in kept._entries)
    assert len(kept._tail[1]) < COMPACT_EVERY
    assert sum(t.num_rows for t in kept.tables({a})) == 0
    assert sum(t.num_rows for t in kept.tables({b})) == 1000
    assert kept.nbytes == sum(t.nbytes for t in tables)


def test_retained_large_tables_are_kept_as_they_are():
    from zpandas._retained import Retained
    kept = Retained(limit=None)
    big = pa.table({"x": np.arange(100_000)})
    kept.add(b"p" * 16, big)
    assert kept.tables()[0] is big and kept.rows == 100_000


def test_gaps_and_rejects_keep_the_last_ones_and_count_all(monkeypatch):
    monkeypatch.setattr(receiver_module, "GAPS_KEPT", 10)
    monkeypatch.setattr(receiver_module, "REJECTS_KEPT", 20)
    from zpandas.sources.lines import REJECT_SCHEMA
    reject = pa.Table.from_pylist([{"file": "f", "line": 1, "offset": 0, "reason": "r", "text": "t"}],
                                  schema=REJECT_SCHEMA)
    with zp.Subscriber(LOCAL) as sub:
        peer = RawPeer(sub.endpoints[0])
        try:
            for i in range(50):
                pid = i.to_bytes(16, "big")
                peer.send(ROW, producer=pid, seq=2, total=2)          # joined late: a gap row
                peer.send(reject, producer=pid, seq=3, total=3, kind=wire.Kind.REJECTS)
            wait_for(lambda: sub.stats()["rejects"] == 50, what="every reject")
            assert len(sub.gaps()) == 10
            assert list(sub.gaps()["name"]) == [i.to_bytes(16, "big").hex()[:6] for i in range(40, 50)]
            assert len(sub.rejects()) == 20 and sub.stats()["skipped_rows"] == 100
        finally:
            peer.close()


def test_documented_limits_are_the_constants():
    """The Limits table of docs/guarantees.md states these numbers."""
    from zpandas import streams, subscriber
    assert (streams.MAX_STREAMS, streams.MAX_SOURCES, streams.SOURCES_PER_STREAM,
            receiver_module.GAPS_KEPT, receiver_module.REJECTS_KEPT, receiver_module._BAD_LOG_EVERY,
            subscriber.LIVE_RETAIN) == (10_000, 100_000, 1_000, 10_000, 100_000, 10.0, 1_000_000)
    assert RETENTION == 7 * 24 * 3600
    from zpandas import aggregate
    assert aggregate._LATE_KEPT == 100_000
    assert subscriber._default_budget() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    sub = zp.Subscriber(LOCAL)
    try:
        assert (sub._rx._max_bytes, sub._rx.buffer_bytes) == (256 << 20, 256 << 20)
    finally:
        sub.close()


def test_micro_batches_of_small_messages_are_contiguous():
    """A queued micro-batch of one-row messages holds its rows, not the frames they came in."""
    from zpandas._batcher import MicroBatcher
    batcher = MicroBatcher(max_rows=1000, max_latency=1.0)
    out = []
    for i in range(1000):
        out += batcher.add(pa.table({"i": [i]}), now=0.0)
    assert len(out) == 1 and out[0].column(0).num_chunks == 1
    assert out[0]["i"].to_pylist() == list(range(1000))
