"""Delivery: block and drop policies, gaps, late joins, liveness, and the proxy.

Producers are real processes (``tests/streamer.py``) sending numbered rows, so every test
can check exactly which rows arrived and that what is reported lost is what is missing.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest

import zpandas as zp

from .conftest import ROOT, wait_for

LOCAL = "@tcp://127.0.0.1:*"


def _stream(sub: zp.Subscriber, name: str):
    df = sub.stats()["producers"]
    rows = df[df["name"] == name]
    return rows.iloc[0] if len(rows) else None


# -- block ------------------------------------------------------------------------------

def test_block_a_slow_subscriber_gets_all_1m_rows_once_and_the_producer_waited(streamers):
    rows = 1_000_000
    with zp.Subscriber(LOCAL, policy="block", buffer_bytes=1 << 20, batch_rows=20_000) as sub:
        p = streamers.start(">" + sub.endpoints[0], "--rows", "10000", "--sends", "100",
                            "--text-bytes", "40", "--frame-bytes", str(256 << 10),
                            "--buffer-bytes", str(1 << 20), "--policy", "block",
                            "--wait-for", "1", "--go")
        # The first get() makes this an iterating consumer: from now on a full queue
        # makes the subscriber (and then the producer) wait instead of dropping.
        with pytest.raises(TimeoutError):
            sub.get(timeout=0)
        streamers.tell(p, "go")
        ids = []
        while sum(map(len, ids)) < rows:
            df = sub.get(timeout=30)
            ids.append(df["id"].to_numpy())
            time.sleep(0.02)  # a deliberately slow consumer: ~1 M rows/s, 50 batches
        result = streamers.result(p)
        stats = sub.stats()
    ids = np.concatenate(ids)
    assert result["rows"] == rows
    np.testing.assert_array_equal(ids, np.arange(rows))  # each once, in order
    assert stats["missed_rows"] == stats["dropped_rows"] == 0
    assert result["stats"]["waits"] > 0 and result["stats"]["blocked_s"] > 0


# -- drop -------------------------------------------------------------------------------

DROP_SUBSCRIBER = textwrap.dedent("""
    import json, os, resource, sys, time
    import zpandas as zp
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    with zp.Subscriber("@tcp://127.0.0.1:*", policy="drop", buffer_bytes=4 << 20,
                       batch_rows=10_000, retain=10_000) as sub:
        print(sub.endpoints[0], flush=True)
        base, peak, got = rss_mb(), 0.0, 0
        while True:
            try:
                df = sub.get(timeout=2)
            except TimeoutError:
                st = sub.stats()
                if st["producers"]["finished"].all() and len(st["producers"]):
                    break
                continue
            got += len(df)
            peak = max(peak, rss_mb())
            time.sleep(0.05)  # a consumer ten times slower than the producer
        st = sub.stats()
    print(json.dumps({"got": got, "base_mb": base, "peak_mb": peak, "missed_rows": st["missed_rows"],
                      "dropped_rows": st["dropped_rows"], "rows": st["rows"]}), flush=True)
    os._exit(0)
""")


def test_drop_an_overloaded_subscriber_stays_bounded_and_reports_every_dropped_row(streamers):
    sub = subprocess.Popen([sys.executable, "-c", DROP_SUBSCRIBER], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    streamers.procs.append(sub)
    address = sub.stdout.readline().strip()
    # 2 M rows of ~150 bytes: about 300 MB through a subscriber allowed ~4 MiB of queue
    p = streamers.start(">" + address, "--rows", "10000", "--sends", "200", "--text-bytes", "128",
                        "--frame-bytes", str(1 << 20), "--policy", "drop", "--wait-for", "1")
    result = streamers.result(p)
    out, _ = sub.communicate(timeout=120)
    report = json.loads(out.strip().splitlines()[-1])
    sent = result["rows"]
    assert sent == 2_000_000
    assert report["dropped_rows"] > 0, "the subscriber was never overloaded"
    assert report["missed_rows"] + report["dropped_rows"] == sent - report["got"]
    # memory: bounded by the byte budget, far below the 300 MB that went through
    assert report["peak_mb"] - report["base_mb"] < 120, report


def test_drop_end_of_stream_reaches_a_subscriber_that_was_dropped_for(streamers):
    # libzmq parks the pipe of a subscriber it dropped for, and anything sent while it is
    # parked passes it by - end-of-stream too. The producer offers end-of-stream again
    # while closing, so collect() ends instead of waiting forever.
    with zp.Subscriber(LOCAL, policy="block", buffer_bytes=1 << 20, batch_rows=10_000) as sub:
        with pytest.raises(TimeoutError):
            sub.get(timeout=0)  # consuming: from now on a full queue stops the reading
        p = streamers.start(">" + sub.endpoints[0], "--rows", "20000", "--sends", "200",
                            "--frame-bytes", "100000", "--buffer-bytes", "1000000",
                            "--policy", "drop", "--wait-for", "1", "--linger", "5")
        # it sends everything (dropping for us: we read nothing) and starts closing
        assert p.stdout.readline().strip() == "closing"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zp.DataLossWarning)  # the drops, counted below
            while not sub.stats()["producers"]["finished"].all():
                sub.get(timeout=30)
            result = streamers.result(p)
            df = sub.collect(producers=1, timeout=5)
        stats = sub.stats()
    assert stats["missed_rows"] > 0, "nothing was dropped: the scenario did not happen"
    assert stats["rows"] + stats["missed_rows"] == result["rows"] == 4_000_000
    assert len(df) == stats["rows"]


# -- restarts and late joiners ---------------------------------------------------------

def test_a_restarted_subscriber_carries_on_and_reports_what_it_missed(streamers):
    p = streamers.start("@tcp://127.0.0.1:*", "--rows", "100", "--pause", "0.005",
                        "--policy", "drop", "--name", "steady")
    address = ">" + p.endpoints[0]
    with zp.Subscriber(address) as first:
        wait_for(lambda: first.stats()["rows"] >= 500, what="rows in the first subscriber")
    seen_first = first.stats()["rows"]
    with zp.Subscriber(address) as second:
        wait_for(lambda: second.stats()["rows"] >= 500, what="rows in the second subscriber")
        streamers.tell(p, "stop")
        result = streamers.result(p)
        df = second.collect(producers=1, timeout=30)
        stats, gaps = second.stats(), second.gaps()
    skipped = stats["skipped_rows"]
    # what it never saw is known: the first subscriber's rows, and any sent in between
    assert skipped >= seen_first
    assert gaps["kind"].tolist() == ["joined late"] and gaps["rows"].tolist() == [skipped]
    # carries on exactly where it joined: every row from there on, once
    np.testing.assert_array_equal(df["id"].to_numpy(), np.arange(skipped, result["rows"]))
    assert stats["missed_rows"] == 0


# -- liveness ---------------------------------------------------------------------------

def test_a_killed_producer_is_marked_dead_within_the_timeout(streamers, caplog):
    caplog.set_level(logging.INFO, logger="zpandas")
    dead_after = 1.0
    with zp.Subscriber(LOCAL, dead_after=dead_after) as sub:
        p = streamers.start(">" + sub.endpoints[0], "--rows", "10", "--sends", "1",
                            "--hold", "--heartbeat", "0.2", "--wait-for", "1", "--go", "--name", "doomed")
        streamers.tell(p, "go")
        wait_for(lambda: _stream(sub, "doomed") is not None and _stream(sub, "doomed")["rows"] == 10,
                 what="the producer's rows")
        # idle but alive: heartbeats keep it so well past dead_after
        first = _stream(sub, "doomed")["last_seen"]
        wait_for(lambda: (_stream(sub, "doomed")["last_seen"] - first).total_seconds() > dead_after,
                 what="heartbeats")
        assert _stream(sub, "doomed")["alive"]
        p.kill()
        t0 = time.monotonic()
        wait_for(lambda: not _stream(sub, "doomed")["alive"], timeout=dead_after + 5,
                 what="the producer marked dead")
        assert time.monotonic() - t0 <= dead_after + 1.0
        wait_for(lambda: any("disconnected" in r.getMessage() for r in caplog.records),
                 what="the disconnect logged")
    assert any("accepted" in r.getMessage() for r in caplog.records)


# -- proxy ------------------------------------------------------------------------------

def _start_proxy(frontend: str, backend: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "zpandas", "proxy", "--frontend", frontend,
                             "--backend", backend, "--interval", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r"proxy: producers connect to (\S+), subscribers to (\S+)", line)
    assert m, f"proxy did not start: {line!r}"
    return proc, m.group(1), m.group(2)


def test_three_producers_two_subscribers_through_a_restarted_proxy(streamers):
    proxy, front, back = _start_proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*")
    streamers.procs.append(proxy)
    with zp.Subscriber(">" + back, topics="cpu") as cpu, zp.Subscriber(">" + back, topics="mem") as mem:
        ps = {name: streamers.start(">" + front, "--topic", topic, "--name", name, "--rows", "50",
                                    "--pause", "0.01", "--policy", "drop")
              for name, topic in [("a", "cpu"), ("b", "cpu"), ("c", "mem")]}

        def flowing(sub, names, above=None):
            def check():
                for n in names:
                    s = _stream(sub, n)
                    if s is None or s["rows"] <= (above or {}).get(n, 0) + 200:
                        return False
                return True
            return check

        wait_for(flowing(cpu, "ab"), what="cpu rows through the proxy")
        wait_for(flowing(mem, "c"), what="mem rows through the proxy")

        proxy.kill()  # mid-stream, without warning
        proxy.wait()
        before = {n: _stream(s, n)["rows"] for s, names in [(cpu, "ab"), (mem, "c")] for n in names}
        proxy, _, _ = _start_proxy("@" + front, "@" + back)
        streamers.procs.append(proxy)
        wait_for(flowing(cpu, "ab", before), timeout=30, what="cpu rows after the restart")
        wait_for(flowing(mem, "c", before), timeout=30, what="mem rows after the restart")

        for p in ps.values():
            streamers.tell(p, "stop")
        sent = {name: streamers.result(p)["rows"] for name, p in ps.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cpu_df = cpu.collect(producers=2, timeout=30)
            mem_df = mem.collect(producers=1, timeout=30)
        cpu_stats, mem_stats = cpu.stats()["producers"], mem.stats()["producers"]
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=30) == -signal.SIGTERM

    assert set(cpu_stats["name"]) == {"a", "b"} and set(mem_stats["name"]) == {"c"}
    for df, stats in [(cpu_df, cpu_stats), (mem_df, mem_stats)]:
        for _, s in stats.iterrows():
            # every row sent is received or reported missed (producers connect, so they
            # queue what they send while the proxy is down: often nothing is lost)
            assert s["rows"] + s["missed_rows"] == sent[s["name"]], s
            assert (s["missed_rows"] > 0) == (s["gaps"] > 0)
        assert len(df) == stats["rows"].sum()
        for name, ids in df.groupby("producer")["id"]:
            assert ids.is_unique and len(ids) == stats.loc[stats["name"] == name, "rows"].item()
    lost = cpu_stats["missed_rows"].sum() + mem_stats["missed_rows"].sum()
    warned = [w for w in caught if issubclass(w.category, zp.DataLossWarning)]
    assert bool(warned) == bool(lost)


def test_proxy_counts_what_it_forwards_and_reports_setup_errors():
    with zp.Proxy(LOCAL, LOCAL) as proxy:
        with zp.Subscriber(">" + proxy.backend[0]) as sub:
            with zp.Producer(">" + proxy.frontend[0], wait_for_subscribers=1, wait_timeout=10) as p:
                p.send(pa.table({"i": np.arange(100)}))
            assert len(sub.collect(producers=1, timeout=10)) == 100
        stats = proxy.stats()
        # data message + end-of-stream (+ any heartbeat): at least 2 messages of 3 frames
        # data + end-of-stream (+ heartbeats), counted by libzmq: messages or their parts
        assert stats["frontend"]["messages_received"] >= 2
        assert stats["backend"]["messages_sent"] == stats["frontend"]["messages_received"]
        assert stats["backend"]["bytes_sent"] == stats["frontend"]["bytes_received"] > 100 * 8
        taken = proxy.frontend[0].replace("tcp://", "@tcp://")
        with pytest.raises(zp.EndpointError, match="cannot bind"):
            zp.Proxy(taken, LOCAL)
    assert proxy.closed
    with pytest.raises(zp.ClosedError):
        proxy.stats()
    with pytest.raises(ValueError, match="policy"):
        zp.Proxy(LOCAL, LOCAL, policy="sometimes")

