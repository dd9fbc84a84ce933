"""Rows per second into a Dask cluster's Subscribers: 1 worker against 2, on this machine.

Producer processes replay pre-encoded messages (bench/_replay.py: no producer work), each
sharded into its own bucket, to a zpandas.dask.DaskSubscriber whose workers bind; the
clock runs from "go" until the workers' stats count every row. The same run with 1 and
with 2 worker processes (LocalCluster, 1 thread each), best of --repeat.

    python bench/bench_dask.py [--rows 4000000] [--producers 8] [--shards 16] [--repeat 2]

On one 2-core machine the replays, the scheduler and the workers share the cores, so 2
workers cannot be twice 1; what this measures is that sharding adds workers without a
bottleneck of its own (each message goes to one worker, filtered at the publisher).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _replay import write_blob  # noqa: E402
from bench_consumer import rows_table  # noqa: E402

from zpandas import wire  # noqa: E402
from zpandas.shards import shard_topic  # noqa: E402

REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_replay.py")


def blob(path: str, table, producer: int, topic: str, rows_per_message: int) -> None:
    pid = producer.to_bytes(16, "big")
    out, total = [], 0
    for seq, start in enumerate(range(0, table.num_rows, rows_per_message)):
        part = table.slice(start, rows_per_message)
        header = wire.Header(producer=pid, seq=seq, total=total, name=f"p{producer}",
                             send_ns=time.time_ns())
        out.append([bytes(f) for f in wire.encode(part, topic=topic.encode(), header=header)])
        total += part.num_rows
    eos = wire.Header(kind=wire.Kind.END_OF_STREAM, producer=pid, seq=len(out), total=total,
                      name=f"p{producer}")
    out.append([bytes(f) for f in wire.encode(None, topic=topic.encode(), header=eos)])
    write_blob(path, out)


def _cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(workers: int, blobs: list[str], rows: int, shards: int) -> tuple[float, list[float]]:
    """Rows per second (wall), and each worker's CPU seconds for them."""
    from distributed import Client, LocalCluster

    from zpandas.dask import DaskSubscriber
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with DaskSubscriber(client, "@tcp://127.0.0.1:*", topic="t", shards=shards) as ds:
            endpoints = ",".join(ds.endpoints)
            procs = [subprocess.Popen([sys.executable, REPLAY, endpoints, b], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True) for b in blobs]
            try:
                for p in procs:
                    assert p.stdout.readline().strip() == "ready"
                cpu0 = client.run(_cpu)
                t0 = time.perf_counter()
                for p in procs:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                while ds.stats()["rows"] < rows:
                    time.sleep(0.05)   # a benchmark's sampling, not a test's synchronisation
                wall = time.perf_counter() - t0
                cpu = [v - cpu0[w] for w, v in client.run(_cpu).items()]
                assert ds.stats()["missed_rows"] == 0
            finally:
                for p in procs:
                    p.stdin.close()
                    p.wait()
    return rows / wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--producers", type=int, default=8)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    per = args.rows // args.producers
    table = rows_table(per)
    rows_per_message = max(1, int(per * (1 << 20) / table.nbytes))
    with tempfile.TemporaryDirectory() as tmp:
        blobs = []
        for i in range(args.producers):
            path = os.path.join(tmp, f"p{i}.blob")
            blob(path, table, i + 1, shard_topic("t", i % args.shards, args.shards), rows_per_message)
            blobs.append(path)
        total = per * args.producers
        print(f"{total:,} rows (5 columns, 2 strings) from {args.producers} replaying producers, "
              f"{args.shards} buckets; best of {args.repeat}\n")
        print("| workers | M rows/s (wall) | vs 1 worker | CPU s per worker | M rows per worker CPU-s |")
        print("|---:|---:|---:|---|---:|")
        base = None
        for workers in (1, 2):
            rate, cpu = max((run(workers, blobs, total, args.shards) for _ in range(args.repeat)),
                            key=lambda r: r[0])
            base = base or rate
            print(f"| {workers} | {rate / 1e6:.2f} | {rate / base:.2f}x | "
                  f"{', '.join(f'{c:.2f}' for c in cpu)} | {total / sum(cpu) / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
