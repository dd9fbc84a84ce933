"""Append -> visible latency of a followed log file, at a steady line rate.

A writer process appends JSON lines at ``--rate`` lines/s in batches of ``--batch``
(each line carries the wall-clock time its batch was written); one ``zpandas publish
--follow`` process tails the file; this process's Subscriber takes micro-batches with
``frame(last=1)`` every millisecond: a row is visible from the first such sample that
shows it or a later row, and its delay is that moment minus the time it was written.
Defaults everywhere: what a user gets without tuning. The issue's target: p50 <= 20 ms, p99 <= 50 ms at 100k lines/s.

    python bench/bench_latency.py [--rate 100000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import zpandas as zp  # noqa: E402

WRITER = r"""
import sys, time
path, lines, rate, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
sys.stdin.readline()
start = time.monotonic()
times = []
with open(path, "a", buffering=1 << 20) as f:
    for i in range(0, lines, batch):
        t = time.time_ns()
        f.write("".join(f'{{"i": {j}, "t": {t}}}\n' for j in range(i, min(i + batch, lines))))
        f.flush()
        times.append(t)
        ahead = (i + batch) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print("done", flush=True)
print(" ".join(map(str, times)), flush=True)  # when each batch was written
"""


def run_once(args) -> np.ndarray:
    """One run: the p50, p90, p99 and max delay in ms, and the producer's CPU seconds."""
    lines = int(args.rate * args.seconds)
    # retain: frame(last=1) then costs the same at the first row and the millionth (with
    # every row kept, it concatenates them all: about 0.7 ms a sample at 800k rows, which
    # took a third of a core from the pipeline it measures).
    with tempfile.TemporaryDirectory() as tmp, zp.Subscriber("@tcp://127.0.0.1:*",
                                                             retain=10_000) as sub:
        path = os.path.join(tmp, "app.log")
        open(path, "w").close()
        producer = subprocess.Popen([sys.executable, "-m", "zpandas", "publish", path, "-f", "jsonl",
                                     "--follow", "-e", ">" + sub.endpoints[0], "-q"])
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(lines), str(args.rate),
                                   str(args.batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            deadline = time.monotonic() + 60
            while not len(sub.stats()["producers"]) and time.monotonic() < deadline:
                try:
                    sub.get(timeout=0.2)  # heartbeats: the producer is up and subscribed
                except TimeoutError:
                    pass
            writer.stdin.write("go\n")
            writer.stdin.flush()
            # Sample the newest row frame() shows every millisecond (back to back, samples
            # would hold the GIL the Subscriber's thread needs):
            # row j became visible at the first sample whose newest row is j or later.
            seen_at, newest = [], []
            deadline = time.monotonic() + args.seconds + 60
            while (not newest or newest[-1] < lines - 1) and time.monotonic() < deadline:
                df = sub.frame(last=1)
                now = time.time_ns()
                if len(df) and "i" in df and df["i"].notna().iloc[-1]:
                    seen_at.append(now)
                    newest.append(int(df["i"].iloc[-1]))
                time.sleep(0.001)  # pacing the sampler, not synchronising
            assert writer.stdout.readline().strip() == "done"
            batches = np.array(writer.stdout.readline().split(), dtype=np.int64)
            written = np.repeat(batches, args.batch)[:lines]
            assert sub.stats()["rows"] == lines and sub.stats()["missed"] == 0
        finally:
            writer.wait(30)
            with open(f"/proc/{producer.pid}/stat") as f:  # utime + stime, in clock ticks
                cpu = sum(map(int, f.read().rsplit(")", 1)[1].split()[11:13])) / os.sysconf("SC_CLK_TCK")
            producer.terminate()
            producer.wait(30)
    # Row j's delay: when the first sample showing j (or later) was taken - when j was written.
    newest = np.maximum.accumulate(np.array(newest))
    first_sample = np.searchsorted(newest, np.arange(lines))
    d = (np.array(seen_at)[first_sample] - written) / 1e6
    warm = d[len(d) // 10:]  # the first second includes start-up (imports, first block)
    return np.append(np.percentile(warm, [50, 90, 99, 100]), cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch", type=int, default=100, help="lines per write (1 ms at 100k/s)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    runs = [run_once(args) for _ in range(args.repeat)]
    print(f"{int(args.rate * args.seconds):,} lines at {args.rate:,.0f} lines/s, batches of "
          f"{args.batch}, defaults, {args.repeat} runs\n")
    print("| append -> visible in Subscriber.frame() | p50 ms | p90 ms | p99 ms | max ms | producer CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runs, 1):
        print(f"| run {i} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} |")
    m = np.median(runs, axis=0)
    print(f"| **median of runs** | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.1f} | {m[4]:.1f} |")
    print("\nTarget (issue 12): p50 <= 20 ms, p99 <= 50 ms.")


if __name__ == "__main__":
    main()
