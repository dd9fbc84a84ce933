"""A log writer process for follow tests: appends numbered JSON lines at a steady rate.

    python tests/writer.py PATH --lines N [--rate R] [--rotate 20000:rename,40000:copy,...]

Line ``i`` is ``{"i": i, "text": "..."}``. At each ``line:how`` it rotates the file before
writing that line, as logrotate would: ``rename`` moves the file to ``PATH.<k>`` and
creates a new one (``create``); ``copy`` copies it to ``PATH.<k>`` and truncates it in
place (``copytruncate``), the writer going on through the same append-mode handle. It
never writes between a copy and its truncation (that window loses lines for any reader,
and is logrotate's to document, not ours). Prints ``done`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=50_000, help="lines per second")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--rotate", default="", help="comma-separated line:rename|copy")
    ap.add_argument("--text-bytes", type=int, default=40)
    ap.add_argument("--hosts", type=int, default=0, help="add a 'host' field: h0..h<N-1> in turn")
    args = ap.parse_args()

    rotations = {}
    for item in filter(None, args.rotate.split(",")):
        at, how = item.split(":")
        rotations[int(at)] = how
    f = open(args.path, "a", buffering=1 << 16)  # noqa: SIM115
    text = "x" * args.text_bytes
    start = time.monotonic()
    k = 0
    for i in range(args.lines):
        if i in rotations:
            f.flush()
            k += 1
            if rotations[i] == "rename":
                f.close()
                os.rename(args.path, f"{args.path}.{k}")
                f = open(args.path, "a", buffering=1 << 16)  # noqa: SIM115
            else:
                shutil.copyfile(args.path, f"{args.path}.{k}")
                os.truncate(args.path, 0)
        row = {"i": i, "host": f"h{i % args.hosts}"} if args.hosts else {"i": i}
        row["text"] = text
        f.write(json.dumps(row) + "\n")
        if i % args.batch == args.batch - 1:
            f.flush()
            ahead = (i + 1) / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # a steady rate, like a real job
    f.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
