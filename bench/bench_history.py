"""History on demand: how fast a producer replays its files, and what a replay costs the live stream.

One ``zpandas publish --follow --history`` process follows a CSV log of ``--rows`` lines
(``time,host,path,status,latency_ms``); a Subscriber in this process receives it.

1. **Live parsing rate**: the producer follows the log (one line in it); the whole log is
   then appended at once, and published live: rows/s from the append to the last row
   received.
2. **Replay rate**: ``sub.history()`` of the whole log from the same producer (same
   parser, same file): rows/s from the request to its end. Target: >= 0.8x the live rate.
3. **Live latency during a replay**: a writer appends ``--live-rate`` lines a second, each
   with the time it was written; latency = received - written. p50/p99 over ``--seconds``
   without a replay, then as long with replays running back to back. Target: p99 during
   <= 2x p99 without.

Both processes share this machine's cores (2 here), as they would share a node.

    python bench/bench_history.py [--rows 1000000] [--seconds 10] [--live-rate 200] [--repeat 3]
                                  [--history-rate 20M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zpandas as zp  # noqa: E402

HEADER = "time_ns,host,path,status,latency_ms\n"


def write_log(path: str, rows: int, mode: str = "w") -> None:
    rng = np.random.default_rng(1)
    t0 = time.time_ns() - rows * 10**7          # 10 ms apart, ending now
    with open(path, mode) as f:
        if mode == "w":
            f.write(HEADER)
        hosts = rng.integers(0, 8, rows)
        paths = rng.choice(["/", "/api/v1/orders", "/api/v1/users", "/static/app.js"], rows)
        status = np.where(rng.random(rows) < 0.02, 500, 200)
        lat = rng.gamma(2, 40, rows).round(1)
        for i in range(rows):
            f.write(f"{t0 + i * 10**7},web{hosts[i]},{paths[i]},{status[i]},{lat[i]}\n")


class Writer:
    """Appends ``rate`` lines a second, each stamped with the time it was written."""

    def __init__(self, path: str, rate: float) -> None:
        self.path, self.rate = path, rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with open(self.path, "a") as f:
            n = 0
            start = time.monotonic()
            while not self.stop.is_set():
                f.write(f"{time.time_ns()},live,/live,200,1.0\n")
                f.flush()
                n += 1
                ahead = start + n / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def latencies(sub: zp.Subscriber, seconds: float) -> list[float]:
    """Milliseconds from written to received, for live rows received in ``seconds``."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            df = sub.get(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        now = time.time_ns()
        live = df[df["host"] == "live"]
        out.extend(((now - live["time_ns"]) / 1e6).tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--live-rate", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--history-rate", help="the producer's --history-rate (default: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "access.log")
        write_log(log, 1)                              # the producer starts on one line
        body = os.path.join(tmp, "body.log")
        write_log(body, args.rows)
        with open(body) as f:
            f.readline()
            lines = f.read()                           # the rest, appended at once below
        size = len(lines)
        print(f"{args.rows:,} lines ({size / 1e6:.1f} MB) of CSV; one producer process "
              f"(publish --follow --history), the subscriber here\n")
        with zp.Subscriber("@tcp://127.0.0.1:*", batch_rows=10_000, latency=0.01,
                           retain=0) as sub:
            rate = ["--history-rate", args.history_rate] if args.history_rate else []
            proc = subprocess.Popen([sys.executable, "-m", "zpandas", "publish", log, "--follow",
                                     "--history", *rate, "-e", ">" + sub.endpoints[0],
                                     "--name", "node1", "--quiet"], cwd=ROOT)
            try:
                # 1. the live stream publishes the whole log, appended at once
                sub.wait_for_producers(1, timeout=120)
                sub.get(timeout=10)
                t0 = time.monotonic()
                with open(log, "a") as f:
                    f.write(lines)
                got = 0
                while got < args.rows:
                    got += len(sub.get(timeout=120))
                live_rate = args.rows / (time.monotonic() - t0)
                # 2. replays of the whole log, from the same producer
                rates = []
                for _ in range(args.repeat):
                    t0 = time.monotonic()
                    df = sub.history(timeout=300)
                    rates.append(len(df) / (time.monotonic() - t0))
                    assert len(df) == args.rows + 1, len(df)
                replay_rate = max(rates)
                # 3. live latency, without and then during replays
                writer = Writer(log, args.live_rate)
                try:
                    latencies(sub, 2.0)                      # the follower settles
                    quiet = latencies(sub, args.seconds)
                    stop = threading.Event()

                    def replays() -> None:
                        while not stop.is_set():
                            sub.history(timeout=300)

                    busy_thread = threading.Thread(target=replays)
                    busy_thread.start()
                    busy = latencies(sub, args.seconds)
                    stop.set()
                    busy_thread.join()
                finally:
                    writer.close()
            finally:
                proc.terminate()
                proc.wait(30)
    p = {name: (statistics.median(v), float(np.percentile(v, 99)), len(v))
         for name, v in (("without a replay", quiet), ("during replays", busy))}
    print("| what | rows/s | ÷ live |")
    print("|---|---:|---:|")
    print(f"| live: the log published as it is followed | {live_rate:,.0f} | 1.00x |")
    print(f"| replay: history() of the whole log, best of {args.repeat} | {replay_rate:,.0f} "
          f"| {replay_rate / live_rate:.2f}x |")
    print(f"\nreplay ÷ live: {replay_rate / live_rate:.2f}x (target >= 0.8x); replays: "
          f"{', '.join(f'{r:,.0f}' for r in rates)} rows/s\n")
    print(f"| live rows ({args.live_rate:.0f}/s) | p50 ms | p99 ms | rows |")
    print("|---|---:|---:|---:|")
    for name, (p50, p99, n) in p.items():
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {n:,} |")
    ratio = p["during replays"][1] / p["without a replay"][1]
    print(f"\nlive p99 during replays ÷ without: {ratio:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
