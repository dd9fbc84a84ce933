"""A subscriber process for multi-host tests: collects, then reports what arrived as JSON.

    python tests/collector.py --endpoint @tcp://10.77.0.4:5556 --producers 3 [--policy drop]

Prints ``ready`` once listening, ``seen`` once a producer has been heard from (its
heartbeats), ``rows N missed M`` as rows arrive or are found lost, and at the end one JSON line: per producer name
the rows, whether their ids are exactly 0..n-1, and the losses it reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import logging

import numpy as np

import zpandas as zp


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", action="append", required=True)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--policy", default="block")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--multicast", default=None, help="JSON of multicast options")
    args = ap.parse_args()

    with zp.Subscriber(args.endpoint, policy=args.policy,
                       multicast=json.loads(args.multicast) if args.multicast else None) as sub:
        print("ready", flush=True)
        deadline = time.monotonic() + args.timeout
        seen = False
        last = None
        while True:
            try:
                df = sub.collect(producers=args.producers, timeout=0.05)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
            st = sub.stats()
            if not seen and len(st["producers"]):
                seen = True
                print("seen", flush=True)
            if (st["rows"], st["missed_rows"]) != last:
                last = (st["rows"], st["missed_rows"])
                print(f"rows {last[0]} missed {last[1]}", flush=True)
        stats = sub.stats()
    report = {}
    for name, s in stats["producers"].groupby("name"):
        ids = np.sort(df.loc[df["producer"] == name, "id"].to_numpy())
        report[name] = {"rows": int(len(ids)), "exact": bool(np.array_equal(ids, np.arange(len(ids)))),
                        "unique": bool(len(np.unique(ids)) == len(ids)),
                        "missed_rows": int(s["missed_rows"].sum()), "gaps": int(s["gaps"].sum()),
                        "skipped_rows": int(s["skipped_rows"].sum())}
    print(json.dumps({"producers": report, "missed_rows": int(stats["missed_rows"])}), flush=True)
    os._exit(0)  # past Arrow's exit-time abort (see zpandas.cli.run)


if __name__ == "__main__":
    main()
