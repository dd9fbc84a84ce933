"""Soak: followed logs rotating under steady writes, every line counted by its content.

    python bench/soak.py [--minutes 10] [--producers 2] [--rate 5000] [--rotate-every 20]
                         [--keep 3] [--compress] [--kill-every 0] [--window 10s]
                         [--history-every 0] [--csv]

Each node is a writer process (``bench/_logwriter.py``: JSON lines of about 80 bytes, or CSV lines with --csv,
rotated every ``--rotate-every`` seconds, alternately by rename and by copytruncate,
keeping ``--keep`` copies as logrotate does, older ones deleted) and a
``zpandas publish --follow --checkpoint`` process following ``app.log*``. One Subscriber
takes every row, counts each line by its content (node, i) and folds a
``--window`` aggregation by node. With ``--kill-every S`` a producer is killed with
``kill -9`` every S seconds (the nodes in turn) and restarted from its checkpoint.
With ``--history-every S`` the producers serve history (``--history``) and every S seconds
the subscriber asks for the 30 s that ended 3 s before (``since=``, ``until=``): at the
end, each answer must hold exactly the lines whose time the live stream says is in that
window, node by node (a node whose answer was cut by a kill is left out, and counted).

Every 15 s it prints each producer's RSS and open descriptors and the subscriber's, the
rows so far, repeats and late rows. At the end it stops the writers, waits for the last
lines, and reports lines written, received, missing and repeated (by content), late
rows, and memory in the first and second half of the run. Exit code 1 on any repeat or
loss, or memory that grows in the second half by more than ``--max-growth`` MiB.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import zpandas as zp  # noqa: E402


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Counts:
    """How many times each (node, i) arrived."""

    def __init__(self, nodes: int) -> None:
        self.seen = [np.zeros(1 << 20, np.uint8) for _ in range(nodes)]
        self.times = [np.full(1 << 20, -1, np.int64) for _ in range(nodes)]   # ns, as parsed

    def add(self, node: np.ndarray, i: np.ndarray, times: np.ndarray) -> None:
        for k in np.unique(node):
            idx = i[node == k]
            arr = self.seen[k]
            if idx.max() >= len(arr):
                size = max(len(arr) * 2, int(idx.max()) + 1)
                grown = np.zeros(size, np.uint8)
                grown[:len(arr)] = arr
                arr = self.seen[k] = grown
                wider = np.full(size, -1, np.int64)
                wider[:len(self.times[k])] = self.times[k]
                self.times[k] = wider
            np.add.at(arr, idx, 1)
            self.times[k][idx] = times[node == k]

    def between(self, k: int, since: int, until: int) -> np.ndarray:
        """Line numbers of node ``k`` whose time (ns) is in ``[since, until)``."""
        t = self.times[k]
        return np.flatnonzero((t >= since) & (t < until))

    def received(self, k: int, upto: int | None = None) -> int:
        return int(np.count_nonzero(self.seen[k][:upto]))

    def repeated(self) -> int:
        return int(sum(int(np.sum(np.maximum(a.astype(np.int64) - 1, 0))) for a in self.seen))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--rotate-every", type=float, default=20.0)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--compress", action="store_true",
                    help="rotated copies from .2 on gzip-compressed (logrotate's compress)")
    ap.add_argument("--kill-every", type=float, default=0.0)
    ap.add_argument("--window", default="10s")
    ap.add_argument("--max-growth", type=float, default=32.0,
                    help="MiB a process may grow in the second half")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--csv", action="store_true", help="CSV logs under a header, not JSON lines")
    ap.add_argument("--history-every", type=float, default=0.0,
                    help="ask for the past every S seconds and check each answer (0: never)")
    args = ap.parse_args()
    if args.history_every and args.rotate_every * args.keep < 30 + 3 + args.rotate_every:
        ap.error(f"--keep {args.keep} copies of {args.rotate_every:g} s do not hold the 30 s asked "
                 "for 3 s ago (rotation deletes the oldest part): keep more, or rotate less often")

    root = args.dir or tempfile.mkdtemp(prefix="zpandas-soak-")
    seconds = args.minutes * 60
    n = args.producers
    sub = zp.Subscriber("@tcp://127.0.0.1:*", retain=0)
    agg = sub.aggregate(by="node", values={"i": "count"}, window=args.window, on="time")
    endpoint = ">" + sub.endpoints[0]
    writers, producers, samples = [], [None] * n, []
    counts = Counts(n)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))

    def start_producer(k: int) -> subprocess.Popen:
        d = os.path.join(root, f"node{k}")
        return subprocess.Popen(
            [sys.executable, "-m", "zpandas", "publish", os.path.join(d, "app.log*"),
             "-f", "csv" if args.csv else "jsonl",
             "--follow", "--checkpoint", os.path.join(d, "checkpoint.db"), "-e", endpoint,
             "--name", f"node{k}", "--wait-for", "0", "-q",
             *(["--history"] if args.history_every else [])], env=env)

    def take(timeout: float) -> None:
        try:
            df = sub.get(timeout=timeout)
        except TimeoutError:
            return
        counts.add(*_columns(df))

    asked = []   # (since, until, {node: digest of its line numbers} of the nodes that answered in full)

    def ask() -> None:
        import pandas as pd
        until = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=3)
        since = until - pd.Timedelta(seconds=30)
        past = sub.history(since=since, until=until, producers=n, timeout=60, progress=False)
        log = sub.stats()["history"].tail(n)
        whole = {int(name[4:]) for name, status in zip(log["name"], log["status"])
                 if status == "done"}
        got = {k: _digest(past.loc[past["node"] == k, "i"].to_numpy(np.int64) if len(past) else
                          np.array([], np.int64)) for k in whole}
        asked.append((since.value, until.value, got))   # digests: the soak's memory is measured

    try:
        for k in range(n):
            d = os.path.join(root, f"node{k}")
            os.makedirs(d, exist_ok=True)
            writers.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_logwriter.py"), os.path.join(d, "app.log"),
                 "--node", str(k), "--rate", str(args.rate), "--rotate-every", str(args.rotate_every),
                 "--keep", str(args.keep), "--seconds", str(seconds), "--batch", "1",
                 *(["--compress"] if args.compress else []), *(["--csv"] if args.csv else [])],
                stdout=subprocess.PIPE, text=True))
            producers[k] = start_producer(k)
        t0 = time.monotonic()
        next_sample, next_kill, victim, kills = t0, t0 + (args.kill_every or 1e18), 0, 0
        next_ask = t0 + (args.history_every or 1e18)
        print(f"soak: {n} nodes, {args.rate:.0f} lines/s each, rotation every {args.rotate_every} s "
              f"(rename/copytruncate, keep {args.keep}), {args.minutes} min, in {root}", flush=True)
        while any(w.poll() is None for w in writers):
            take(0.5)
            now = time.monotonic()
            if now >= next_kill:
                producers[victim].kill()
                producers[victim].wait()
                producers[victim] = start_producer(victim)
                kills += 1
                print(f"{now - t0:6.0f}s kill -9 node{victim}", flush=True)
                victim = (victim + 1) % n
                next_kill += args.kill_every
            if now >= next_ask:
                ask()
                next_ask += args.history_every
            if now >= next_sample:
                st = agg.stats()
                sample = {"t": now - t0, "producers": [(rss_mib(p.pid), fds(p.pid)) for p in producers],
                          "subscriber": (rss_mib(os.getpid()), fds(os.getpid())),
                          "rows": sum(counts.received(k) for k in range(n)),
                          "repeated": counts.repeated(), "late": st["late_rows"]}
                samples.append(sample)
                prods = " ".join(f"{r:.0f}MiB/{f}fd" for r, f in sample["producers"])
                print(f"{sample['t']:6.0f}s rows {sample['rows']:>10,} repeated {sample['repeated']} "
                      f"late {sample['late']}  producers {prods}  subscriber "
                      f"{sample['subscriber'][0]:.0f}MiB/{sample['subscriber'][1]}fd", flush=True)
                next_sample += 15
        written = [int(w.stdout.read().split()[1]) for w in writers]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(counts.received(k, written[k]) < written[k]
                                                  for k in range(n)):
            take(0.5)
        for p in producers:
            p.send_signal(signal.SIGTERM)
        for p in producers:
            p.wait(timeout=30)
        while True:   # what the producers sent while stopping
            try:
                df = sub.get(timeout=1.0)
            except TimeoutError:
                break
            counts.add(*_columns(df))
        st, sst = agg.stats(), sub.stats()
    finally:
        for p in writers + [p for p in producers if p is not None]:
            if p.poll() is None:
                p.kill()
                p.wait()
        sub.close()

    missing = sum(written[k] - counts.received(k, written[k]) for k in range(n))
    if missing:   # what the checkpoints say, to find where the lines went
        import sqlite3
        for k in range(n):
            db = sqlite3.connect(os.path.join(root, f"node{k}", "checkpoint.db"))
            for row in db.execute("SELECT key, path, ino, length(head), offset, line FROM files"):
                print(f"node{k} checkpoint: {row}")
            db.close()
        print(sst["producers"][["name", "rows", "missed_rows", "skipped_rows"]].to_string())
    for k in range(n):   # where the missing lines are: runs of line numbers
        gone = np.flatnonzero(counts.seen[k][:written[k]] == 0)
        if len(gone):
            breaks = np.flatnonzero(np.diff(gone) > 1)
            runs = list(zip(gone[np.r_[0, breaks + 1]], gone[np.r_[breaks, len(gone) - 1]]))
            print(f"node{k}: {len(gone):,} missing, in {len(runs)} runs: "
                  + ", ".join(f"{a}-{b}" for a, b in runs[:10]))
    repeated = counts.repeated()
    half = [s for s in samples if s["t"] >= seconds / 2]
    growth = []
    if len(half) >= 2:
        for k in range(n if not args.kill_every else 0):   # restarted producers start afresh
            growth.append(half[-1]["producers"][k][0] - half[0]["producers"][k][0])
        growth.append(half[-1]["subscriber"][0] - half[0]["subscriber"][0])
    print(f"\nwritten {sum(written):,} lines; missing {missing}; repeated {repeated} (by content); "
          f"subscriber duplicate_rows {sst['duplicate_rows']}; late {st['late_rows']} of "
          f"{st['rows']:,}; producer kills {kills}")
    if growth:
        print("second-half memory growth, MiB: " + ", ".join(
            [f"node{k} {g:+.1f}" for k, g in enumerate(growth[:-1])] + [f"subscriber {growth[-1]:+.1f}"]))
        print("descriptors, first and last sample: producers "
              f"{[f for _, f in samples[1]['producers']]} -> {[f for _, f in samples[-1]['producers']]}, "
              f"subscriber {samples[1]['subscriber'][1]} -> {samples[-1]['subscriber'][1]}")
    wrong = cut = 0
    for since, until, got in asked:
        cut += n - len(got)
        for k, lines in got.items():
            want = _digest(counts.between(k, since, until))
            if lines != want:
                wrong += 1
                print(f"history [{since}, {until}) node{k}: (rows, distinct, first, last, sum of "
                      f"squares) {lines}, want {want}")
    if asked:
        print(f"history: {len(asked)} requests of 30 s; {len(asked) * n - cut} answers checked, "
              f"{wrong} not exact; {cut} cut short by a kill (not checked)")
    ok = missing == 0 and repeated == 0 and wrong == 0 and all(g <= args.max_growth for g in growth)
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


def _digest(lines: np.ndarray) -> tuple:
    """Line numbers, told apart by count, distinct count, first, last and sum of squares."""
    if not len(lines):
        return (0, 0, None, None, 0)
    return (len(lines), len(np.unique(lines)), int(lines.min()), int(lines.max()),
            int(np.sum(lines.astype(object) ** 2)))


def _columns(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node, line number, time in ns) of each row."""
    return (df["node"].to_numpy(np.int64), df["i"].to_numpy(np.int64),
            df["time"].dt.as_unit("ns").astype("int64").to_numpy())


if __name__ == "__main__":
    sys.exit(main())
