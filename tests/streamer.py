"""A producer process for delivery tests: streams numbered rows until told to stop.

    python tests/streamer.py --endpoint >tcp://127.0.0.1:5556 [--sends N] [--go] ...

Prints ``ready <endpoints>`` once its socket is set up (and ``--wait-for`` subscribers
listen); with ``--go`` it then waits for a ``go`` line on stdin. It sends ``--sends``
batches of ``--rows`` rows (ids 0, 1, 2, ... in order; event time ``ts`` = id ms), or sends until a ``stop`` line
arrives on stdin when ``--sends`` is 0
(``--hold``: sends ``--sends`` batches, then idles until ``stop``). ``pause`` stops
sending rows but keeps the producer open (heartbeats go on). At the end it closes the producer and prints one
JSON line: ``{"rows": <rows sent>, "stats": <Producer.stats()>}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import numpy as np
import pyarrow as pa

import zpandas as zp


def main() -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s P %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--topic", default="")
    ap.add_argument("--name", default=None)
    ap.add_argument("--rows", type=int, default=1000, help="rows per send")
    ap.add_argument("--sends", type=int, default=0, help="0: until 'stop' on stdin")
    ap.add_argument("--text-bytes", type=int, default=16, help="size of each row's text")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between sends (a rate)")
    ap.add_argument("--policy", default="block")
    ap.add_argument("--buffer-bytes", type=int, default=256 << 20)
    ap.add_argument("--frame-bytes", type=int, default=4 << 20)
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--linger", type=float, default=10.0)
    ap.add_argument("--wait-for", type=int, default=0)
    ap.add_argument("--go", action="store_true", help="wait for 'go' on stdin before sending")
    ap.add_argument("--hold", action="store_true", help="after --sends, idle until 'stop'")
    ap.add_argument("--progress", action="store_true", help="print 'sent N waits W' as it goes")
    ap.add_argument("--multicast", default=None, help="JSON of multicast options")
    ap.add_argument("--shards", type=int, default=None, help="Producer(shards=N)")
    args = ap.parse_args()

    stop = threading.Event()
    producer = zp.Producer(args.endpoint, topic=args.topic, name=args.name, policy=args.policy,
                           buffer_bytes=args.buffer_bytes, frame_bytes=args.frame_bytes,
                           heartbeat=args.heartbeat, linger=args.linger,
                           wait_for_subscribers=args.wait_for,
                           multicast=json.loads(args.multicast) if args.multicast else None,
                           shards=args.shards)
    print("ready", " ".join(producer.endpoints), flush=True)
    if args.go:
        sys.stdin.readline()
    pause = threading.Event()
    if not args.sends or args.hold:
        def commands() -> None:
            for line in sys.stdin:  # "pause": stop sending rows, stay connected; "stop": close
                (pause if line.strip() == "pause" else stop).set()
                if stop.is_set():
                    return
            stop.set()
        threading.Thread(target=commands, daemon=True).start()

    sent = 0
    if args.progress:  # from a thread of its own: a send() blocked by backpressure is seen too
        def report() -> None:
            while not stop.wait(0.1):
                print(f"sent {sent} waits {producer.stats()['waits']}", flush=True)
        threading.Thread(target=report, daemon=True).start()
    text = pa.array(["x" * args.text_bytes] * args.rows)
    name = pa.array([producer.name] * args.rows)
    paused = False
    while not stop.is_set() and (not args.sends or sent < args.sends * args.rows):
        if pause.is_set():
            if not paused:
                paused = True
                print(f"paused {sent}", flush=True)
            stop.wait(0.05)
            continue
        ids = np.arange(sent, sent + args.rows)
        producer.send(pa.table({"id": ids, "value": ids * 0.5, "text": text, "producer": name,
                                "ts": pa.array(ids * 1_000_000, pa.timestamp("ns", "UTC"))}))
        sent += args.rows
        if args.pause:
            stop.wait(args.pause)
    if args.hold:
        stop.wait()
    stop.set()
    print("closing", flush=True)
    producer.close()
    print(json.dumps({"rows": sent, "stats": producer.stats()}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # past Arrow's exit-time abort (see zpandas.cli.run)


if __name__ == "__main__":
    main()
