"""Sharding by topic: each message goes to exactly the subscribers of its bucket, and a
subscriber to the plain topic still gets everything."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import zpandas as zp
from zpandas.shards import bucket_of_name, shard_topic, shard_topics, split_by_key

from .conftest import ROOT, wait_for


@pytest.mark.parametrize("shards", [1, 7, 10, 16, 100, 1000])
def test_no_buckets_topic_is_a_prefix_of_anothers(shards):
    topics = shard_topics("metrics", range(shards), shards)
    assert len(set(topics)) == shards and all(t.startswith("metrics#") for t in topics)
    assert not any(a != b and b.startswith(a) for a in topics for b in topics)
    with pytest.raises(ValueError, match="not in"):
        shard_topic("metrics", shards, shards)


def test_buckets_are_stable_and_spread():
    assert bucket_of_name("node1", 16) == bucket_of_name("node1", 16)   # the same in every process
    assert len({bucket_of_name(f"node{i}", 8) for i in range(64)}) == 8
    table = pa.table({"host": [f"h{i % 50}" for i in range(5000)] + [None], "v": np.arange(5001)})
    parts = split_by_key(table, "host", 8)
    assert [b for b, _ in parts] == sorted(b for b, _ in parts) and len(parts) == 8
    assert sum(p.num_rows for _, p in parts) == table.num_rows
    owner = {}
    for b, part in parts:
        for host in set(part.column("host").to_pylist()):
            assert owner.setdefault(host, b) == b           # each key in one bucket
        assert part.column("v").to_pylist() == sorted(part.column("v").to_pylist())  # in order
    assert owner[None] == 0
    again = dict(split_by_key(table.slice(100), "host", 8))   # another batch: the same buckets
    assert all(owner[h] == b for b, p in again.items() for h in set(p.column("host").to_pylist()))
    with pytest.raises(KeyError, match="shard_by='nope'"):
        split_by_key(table, "nope", 8)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"host": rng.choice([f"h{i}" for i in range(20)], n), "i": np.arange(n),
                         "seed": seed})


def test_sharded_by_name_each_subscriber_gets_its_buckets_producers():
    shards = 4
    names = [f"node{i}" for i in range(8)]
    subs = [zp.Subscriber("@tcp://127.0.0.1:*", topics=shard_topics("m", [b], shards)) for b in range(shards)]
    everything = zp.Subscriber("@tcp://127.0.0.1:*", topics="m")   # the single notebook
    try:
        endpoints = [s.endpoints[0] for s in [*subs, everything]]
        for seed, name in enumerate(names):
            with zp.Producer([">" + e for e in endpoints], topic="m", name=name, shards=shards) as p:
                p.wait_for_subscribers(2)        # its bucket's subscriber and the notebook
                p.send(frame(1000, seed))
        everyone = everything.collect(producers=len(names), timeout=30)
        assert len(everyone) == 8000
        for b, sub in enumerate(subs):
            mine = [n for n in names if bucket_of_name(n, shards) == b]
            got = sub.collect(producers=len(mine), timeout=30) if mine else sub.frame()
            assert sorted(set(got["seed"]) if len(got) else []) == sorted(names.index(n) for n in mine)
            assert len(got) == 1000 * len(mine)
            assert set(sub.stats()["producers"]["topic"]) <= {shard_topic("m", b, shards)}
    finally:
        for s in [*subs, everything]:
            s.close()


def test_sharded_by_key_each_row_reaches_exactly_one_bucket():
    shards = 3
    subs = [zp.Subscriber("@tcp://127.0.0.1:*", topics=shard_topics("m", [b], shards)) for b in range(shards)]
    try:
        df = frame(30_000, seed=1)
        with zp.Producer([">" + s.endpoints[0] for s in subs], topic="m", shards=shards,
                         shard_by="host") as p:
            p.wait_for_subscribers(1)            # every bucket has its subscriber
            for i in range(0, len(df), 5000):
                p.send(df.iloc[i:i + 5000])
        parts = [s.collect(producers=1, timeout=30) for s in subs]
        union = pd.concat(parts)
        assert sorted(union["i"]) == list(range(len(df)))                 # every row once
        hosts = [set(p["host"]) for p in parts]
        assert not any(a & b for i, a in enumerate(hosts) for b in hosts[i + 1:])   # keys apart
        for part in parts:
            assert list(part["i"]) == sorted(part["i"])                   # in order
    finally:
        for s in subs:
            s.close()


def test_bad_shard_options_are_clear():
    with pytest.raises(ValueError, match="shards must be"):
        zp.Producer(">tcp://127.0.0.1:1", shards=0)
    with pytest.raises(ValueError, match="needs shards"):
        zp.Producer(">tcp://127.0.0.1:1", shard_by="host")
    with zp.Producer("@tcp://127.0.0.1:*", shards=2, shard_by="host") as p:
        with pytest.raises(KeyError, match="shard_by='host'"):
            p.send(pd.DataFrame({"x": [1]}))


# -- key sharding end to end: every row once, per bucket stream ------------------------

SHARDS = 8
HALVES = (range(0, 4), range(4, 8))


def two_workers():
    """Two subscribers holding four buckets each of topic ``m``, as zpandas.dask's
    workers hold theirs."""
    return [zp.Subscriber("@tcp://127.0.0.1:*", topics=shard_topics("m", half, SHARDS))
            for half in HALVES]


def ids_of(subs) -> np.ndarray:
    frames = [s.frame() for s in subs]
    return np.sort(np.concatenate([f["i"].to_numpy() for f in frames if len(f)] or [np.array([])]))


def test_key_sharded_whole_files_every_row_once_to_subscribers_of_several_buckets(tmp_path, procs):
    """Two ``publish data.csv --shards 8 --shard-by host`` processes: each block is split
    into buckets that all carry the block's byte range; a subscriber holding several
    buckets must not take the second bucket's rows for ones it already has."""
    paths = []
    for k in range(2):
        df = frame(20_000, seed=k).assign(i=lambda d, k=k: d["i"] + k * 20_000)
        paths.append(tmp_path / f"data{k}.csv")
        df.to_csv(paths[-1], index=False)
    subs = two_workers()
    try:
        endpoints = [arg for s in subs for arg in ("-e", ">" + s.endpoints[0])]
        ps = [procs.start("publish", str(p), *endpoints, "-t", "m", "--shards", str(SHARDS),
                          "--shard-by", "host", "--wait-for", "1", "--block-size", "65536", "-q")
              for p in paths]
        for p in ps:
            assert p.wait(60) == 0
        wait_for(lambda: len(ids_of(subs)) >= 40_000, timeout=30, what="every row")
        np.testing.assert_array_equal(ids_of(subs), np.arange(40_000))
        assert sum(s.stats()["duplicate_rows"] for s in subs) == 0
    finally:
        for s in subs:
            s.close()


def test_key_sharded_followed_file_with_kill_9_restarts_every_row_once(tmp_path, procs):
    """A followed, checkpointed producer sharding by key, killed with ``kill -9`` twice
    and restarted: each subscriber drops what the restarts sent again, per bucket."""
    lines = 40_000
    log = tmp_path / "app.log"
    log.touch()
    checkpoint = tmp_path / "checkpoint.db"
    subs = two_workers()
    writer = subprocess.Popen([sys.executable, f"{ROOT}/tests/writer.py", str(log), "--lines",
                               str(lines), "--rate", "12000", "--hosts", "20"],
                              stdout=subprocess.PIPE, text=True)
    try:
        endpoints = [arg for s in subs for arg in ("-e", ">" + s.endpoints[0])]

        def producer():
            return procs.start("publish", str(log), *endpoints, "-t", "m", "--format", "jsonl",
                               "--follow", "--checkpoint", str(checkpoint), "--shards", str(SHARDS),
                               "--shard-by", "host", "--name", "node", "-q")

        def received() -> int:
            return sum(s.stats()["rows"] for s in subs)

        p = producer()
        for at in (8_000, 20_000):
            wait_for(lambda at=at: received() >= at, timeout=60, what=f"{at} rows")
            p.send_signal(signal.SIGKILL)
            p.wait()
            p = producer()
        assert writer.stdout.readline().strip() == "done"
        wait_for(lambda: len(ids_of(subs)) >= lines, timeout=60, what="every line")
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        np.testing.assert_array_equal(ids_of(subs), np.arange(lines))
        assert received() == lines
        for s in subs:   # each took only its own buckets' hosts
            hosts = set(s.frame()["host"])
            assert hosts and hosts.isdisjoint(set().union(*(set(o.frame()["host"]) for o in subs if o is not s)))
    finally:
        writer.communicate(timeout=60)
        for s in subs:
            s.close()
