"""A job writing a JSON-lines log at a steady rate, rotated as logrotate rotates it.

    python bench/_logwriter.py PATH --node N --rate R --rotate-every S --keep K [--seconds T]

Line ``i`` is ``{"node": N, "i": i, "time": <epoch seconds>, "text": "..."}`` (about 80 bytes);
with ``--csv``, ``N,i,<ISO 8601 time>,payload`` under a ``node,i,time,text`` header that
every new file starts with (a truncated one too).
Every ``--rotate-every`` seconds the file is rotated, alternately by ``rename`` (logrotate's
``create``: the file becomes ``PATH.1``, a new one is created) and by ``copytruncate`` (the
file is copied to ``PATH.1`` and truncated in place, the writer going on through its
append-mode handle). Before each rotation the copies shift as logrotate's ``rotate K``
shifts them: ``PATH.K`` is deleted, ``PATH.(k)`` becomes ``PATH.(k+1)``. With ``--compress``
the copies from ``PATH.2.gz`` on are gzip-compressed, as logrotate's ``compress`` and
``delaycompress`` leave them (written as ``.part`` and renamed). It never writes
between a copy and its truncation (logrotate documents that window as lossy for every
reader). On SIGTERM, or after ``--seconds``, it prints ``wrote <lines>`` and exits.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shutil
import signal
import sys
import time


HEADER = "node,i,time,text\n"


def rotate(path: str, keep: int, how: str, compress: bool = False, header: str = "") -> None:
    """Shift the copies (``PATH.keep`` deleted) and rotate ``path`` to ``PATH.1``; with
    ``compress`` (logrotate's ``compress`` + ``delaycompress``) ``PATH.1`` becomes
    ``PATH.2.gz`` and the older copies are ``.gz`` too."""
    def name(k: int) -> str:
        return f"{path}.{k}" + (".gz" if compress and k >= 2 else "")

    try:
        os.unlink(name(keep))
    except FileNotFoundError:
        pass
    for k in range(keep - 1, 0, -1):
        if not os.path.exists(name(k)):
            continue
        if compress and k == 1:
            with open(name(1), "rb") as src, gzip.open(name(2) + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.rename(name(2) + ".part", name(2))
            os.unlink(name(1))
        else:
            os.rename(name(k), name(k + 1))
    if how == "rename":
        os.rename(path, f"{path}.1")
    else:
        shutil.copyfile(path, f"{path}.1")
        os.truncate(path, 0)
        if header:
            with open(path, "a") as f:
                f.write(header)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--node", type=int, default=0)
    ap.add_argument("--rate", type=float, default=5000, help="lines per second")
    ap.add_argument("--rotate-every", type=float, default=20.0)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--compress", action="store_true",
                    help="copies from .2 on gzip-compressed (logrotate's compress, delaycompress)")
    ap.add_argument("--csv", action="store_true", help="CSV lines under a header, not JSON")
    args = ap.parse_args()
    header = HEADER if args.csv else ""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    f = open(args.path, "a", buffering=1 << 16)  # noqa: SIM115
    f.write(header)
    start = time.monotonic()
    next_rotation = start + args.rotate_every
    kinds = ["rename", "copy"]
    rotations = 0
    i = 0
    while not stop and (args.seconds is None or time.monotonic() - start < args.seconds):
        for _ in range(args.batch):
            if args.csv:
                now = datetime.datetime.now(datetime.timezone.utc)
                f.write(f"{args.node},{i},{now.isoformat(timespec='microseconds')},payload\n")
            else:
                f.write(json.dumps({"node": args.node, "i": i, "time": round(time.time(), 6),
                                    "text": "payload"}) + "\n")
            i += 1
        f.flush()
        now = time.monotonic()
        if now >= next_rotation:
            how = kinds[rotations % 2]
            rotations += 1
            rotate(args.path, args.keep, how, args.compress, header)
            print(f"node{args.node}: {how} before line {i}", file=sys.stderr, flush=True)
            if how == "rename":
                f.close()
                f = open(args.path, "a", buffering=1 << 16)  # noqa: SIM115
                f.write(header)
            next_rotation += args.rotate_every
        ahead = i / args.rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)  # a steady rate, like a real job
    f.close()
    print(f"wrote {i} rotations {rotations}", flush=True)


if __name__ == "__main__":
    main()
