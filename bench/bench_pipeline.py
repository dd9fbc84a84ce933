"""End-to-end throughput: N producer processes -> tcp loopback -> Subscriber DataFrame.

Measured in one run against two baselines on the same files:

  local   pandas.read_csv of every file in this process, concatenated (the local-read limit);
          timestamps stay strings, so it does less than zpandas, whose frames have them typed
  local+dates  the same with ``parse_dates=["timestamp"]``: the same DataFrame zpandas ends with
  seed    the original design's style: one ``send_string`` per row from N processes, the
          consumer keeps the strings and parses them into a DataFrame at the end

Each "seconds" figure is wall time from "go" to "a DataFrame with every row is in the
consumer". The networked variants' processes are started, connected and subscribed
before "go" (Python start-up is not throughput), then told to go on stdin. Here all of
them share this machine's cores with the consumer; on real nodes each producer has its
own, so the consumer's CPU time (all threads of the consumer process, "go" to DataFrame)
is reported too: it is what bounds one notebook fed by many nodes. The variants run
round-robin, ``--repeat`` times, and the best of each is reported.
Targets: zpandas >= 0.5x local, >= 10x seed; with plain frames (no dictionaries, no
compression: what loopback needs) >= 0.65x ``local, parse_dates``, median of 5 (issue 23).
The producers' defaults (dictionaries, LZ4) are measured too: what loopback pays for them.

    python bench/bench_pipeline.py [--rows 1000000] [--producers N] [--repeat 3]

N defaults to the number of cores: more producer processes than cores measures the
scheduler, not the pipeline (on real nodes each producer has its own machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pandas as pd
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
import generate  # noqa: E402

import zpandas as zp  # noqa: E402

ZP_PRODUCER = r"""
import json, os, sys
import zpandas as zp
address, *paths = sys.argv[1:]
producer = zp.Producer(">" + address, wait_for_subscribers=1, **json.loads(os.environ["ZP_WIRE"]))
print("ready", flush=True)
sys.stdin.readline()
zp.publish_files(paths, producer)
producer.close()
os._exit(0)  # past Arrow's exit-time abort (see zpandas.cli.run)
"""

SEED_PRODUCER = r"""
import sys, zmq
address, *paths = sys.argv[1:]
ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.sndhwm = 0                      # unlimited: the baseline must not drop rows
pub.connect(address)
pub.recv()                          # the subscription: the consumer is listening
print("ready", flush=True)
sys.stdin.readline()
for path in paths:
    with open(path) as f:
        next(f)                     # header
        for line in f:
            pub.send_string("rows " + line.rstrip("\n"))
pub.send_string("rows END")
pub.close(linger=-1)
ctx.term()
"""


def start(script: str, address: str, groups: list[list[str]], sub=None,
          env: dict | None = None) -> list[subprocess.Popen]:
    """Start one process per group of files; return once all are connected and ready.

    A bound SUB greets new peers only while its thread is inside a zmq call, so a raw
    ``sub`` socket is polled while we wait (zpandas' Subscriber polls on its own thread).
    """
    procs = [subprocess.Popen([sys.executable, "-c", script, address, *g], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for g in groups]
    ready = []
    waiter = threading.Thread(target=lambda: ready.extend(p.stdout.readline() for p in procs))
    waiter.start()
    while waiter.is_alive():
        if sub is not None:
            sub.poll(10)
        waiter.join(0.01)
    assert [r.strip() for r in ready] == ["ready"] * len(procs), ready
    return procs


def go(procs: list[subprocess.Popen]) -> tuple[float, float]:
    """Tell the producers to start; return the wall and this process's CPU clocks."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return t0, c0


def since(t0: float, c0: float) -> tuple[float, float]:
    return time.perf_counter() - t0, time.process_time() - c0


def make_files(folder: str, rows: int, files: int) -> list[str]:
    paths = []
    for i in range(files):
        df = generate.make_frame(i % 4 + 1, i // 4 + 1, rows // files, seed=11)
        path = os.path.join(folder, f"part-{i}.csv")
        df.to_csv(path, index=False)
        paths.append(path)
    return paths


def run_local(paths: list[str], **read_csv) -> tuple[float, float, int]:
    t0, c0 = time.perf_counter(), time.process_time()
    df = pd.concat([pd.read_csv(p, **read_csv) for p in paths], ignore_index=True)
    return *since(t0, c0), len(df)


def run_zpandas(paths: list[str], producers: int, wire: dict) -> tuple[float, float, int]:
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        procs = start(ZP_PRODUCER, sub.endpoints[0], [paths[i::producers] for i in range(producers)],
                      env=dict(os.environ, ZP_WIRE=json.dumps(wire)))
        t0, c0 = go(procs)
        df = sub.collect(producers=producers, timeout=600)
        elapsed, cpu = since(t0, c0)
        assert sub.stats()["missed"] == 0
    for p in procs:
        p.stdin.close()
        assert p.wait() == 0
    return elapsed, cpu, len(df)


def run_seed(paths: list[str], producers: int) -> tuple[float, float, int]:
    header = open(paths[0]).readline()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.subscribe(b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    procs = start(SEED_PRODUCER, f"tcp://127.0.0.1:{port}",
                  [paths[i::producers] for i in range(producers)], sub)
    t0, c0 = go(procs)
    lines, ends = [], 0
    while ends < len(procs):
        msg = sub.recv_string()[5:]
        if msg == "END":
            ends += 1
        else:
            lines.append(msg)
    df = pd.read_csv(io.StringIO(header + "\n".join(lines)))
    elapsed, cpu = since(t0, c0)
    for p in procs:
        p.stdin.close()
        assert p.wait() == 0
    sub.close(linger=0)
    ctx.term()
    return elapsed, cpu, len(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--producers", type=int, default=os.cpu_count(),
                    help="producer processes (default: one per core; more measures contention)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(tmp, args.rows, args.files)
        mb = sum(os.path.getsize(p) for p in paths) / 1e6
        print(f"{args.rows:,} rows in {args.files} files ({mb:.0f} MB), "
              f"{args.producers} producer processes, median and best of {args.repeat}\n")
        variants = {"local pandas.read_csv": lambda: run_local(paths),
                    "local, parse_dates": lambda: run_local(paths, parse_dates=["timestamp"]),
                    "zpandas": lambda: run_zpandas(paths, args.producers,
                                                   dict(dictionary=False, compression=None)),
                    "zpandas, default wire": lambda: run_zpandas(paths, args.producers, {}),
                    "seed: send_string per row": lambda: run_seed(paths, args.producers)}
        wall = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        # Round-robin, so that a machine whose speed drifts (a shared VM) drifts under
        # every variant alike and the ratios stay fair.
        for _ in range(args.repeat):
            for name, fn in variants.items():
                elapsed, used, rows = fn()
                assert rows == args.rows // args.files * args.files, (name, rows)
                wall[name].append(elapsed)
                cpu[name].append(used)
    median = {name: statistics.median(v) for name, v in wall.items()}
    best = {name: min(v) for name, v in wall.items()}
    consumer = {name: statistics.median(v) for name, v in cpu.items()}
    z, zc = median["zpandas"], consumer["zpandas"]
    print("| variant | seconds, median | best | rows/s (median) | its time ÷ zpandas time "
          "| consumer CPU s (median) | its consumer CPU ÷ zpandas' |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sec in median.items():
        ratio = "-" if name == "zpandas" else f"{sec / z:.2f}x"
        cratio = "-" if name == "zpandas" else f"{consumer[name] / zc:.1f}x"
        print(f"| {name} | {sec:.2f} | {best[name]:.2f} | {args.rows / sec:,.0f} | {ratio} "
              f"| {consumer[name]:.2f} | {cratio} |")
    local, seed = median["local pandas.read_csv"], median["seed: send_string per row"]
    dates = median["local, parse_dates"]
    print(f"\nEnd to end (medians), plain frames: zpandas = {local / z:.2f}x local read's throughput "
          f"(target >= 0.5x); {dates / z:.2f}x with the same dtypes (target >= 0.65x); "
          f"{seed / z:.1f}x seed style's (target >= 10x). Default wire: "
          f"{dates / median['zpandas, default wire']:.2f}x with the same dtypes.")
    print(f"Consumer: zpandas needs {consumer['seed: send_string per row'] / zc:.1f}x less CPU than "
          f"the seed style's consumer ({args.rows / zc:,.0f} rows per CPU second): how many rows "
          f"one notebook absorbs when the producers run on their own nodes.")


if __name__ == "__main__":
    main()
