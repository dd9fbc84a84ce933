"""What one Subscriber costs the notebook it runs in, against its floor: CPU per row, and memory.

The producers are not measured: sender processes replay pre-encoded wire messages
(5 columns, 2 of them strings) as fast as ZeroMQ takes them, each as its own producer
(its id, numbered messages, end-of-stream), so the consumer is the only thing that
does work. The clock is the consumer process's CPU time (all its threads) from "go" to a
DataFrame of every row: what a notebook pays when the producers run on their own nodes.

The floor, in the same run and on the same frames: a bare pyzmq SUB socket that receives
every message and keeps it, then reads the bodies with pyarrow (decompressing them when
they are compressed), turns wire dictionaries back into strings and makes one DataFrame -
the least any consumer of these messages pays. The Subscriber does that and also
validates every body in full, counts, deduplicates and keeps stats.

Wires: ``plain`` (no dictionaries, no compression: loopback's default), ``lz4`` and
``zstd`` (with dictionaries: a network's). Each run is a fresh process: its first
collect() (cold: a new kernel's) and its second (warm), best of ``--repeat``.

Targets (issue 23): the Subscriber's CPU per row <= 1.3x its floor's, for every wire, cold
and warm. Memory: RSS held <= 1.5x the DataFrame's memory_usage(deep=True) + 150 MB.
64 producer processes (plain) at >= 0.8x the rows per consumer CPU-second of 2 (issue 13).

    python bench/bench_consumer.py [--rows 4000000] [--frame-kib 1024] [--wires plain lz4 zstd]
                                   [--producers 2 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zpandas as zp  # noqa: E402
from _replay import write_blob  # noqa: E402
from zpandas import wire  # noqa: E402

REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_replay.py")


def rows_table(n: int, seed: int = 1) -> pa.Table:
    """5 columns, 2 strings: what a metrics log looks like."""
    rng = np.random.default_rng(seed)
    hosts = np.array([f"node{i:03d}" for i in range(64)])
    metrics = np.array(["cpu", "mem", "disk", "net_in", "net_out"])
    ts = pd.Timestamp("2026-11-28", tz="UTC") + pd.to_timedelta(np.arange(n) * 1000, unit="us")
    return pa.table({
        "timestamp": pa.array(ts),
        "host": pa.array(hosts[rng.integers(0, len(hosts), n)], pa.string()),
        "metric": pa.array(metrics[rng.integers(0, len(metrics), n)], pa.string()),
        "value": rng.normal(50, 10, n),
        "id": np.arange(n, dtype=np.int64),
    })


#: wire name -> (dictionaries, compression), as a Producer would send
WIRES = {"plain": (False, None), "lz4": (True, "lz4"), "zstd": (True, "zstd")}


def encode_messages(table: pa.Table, rows_per_message: int, producer: bytes,
                    wire_name: str = "plain") -> list[list[bytes]]:
    dictionary, compression = WIRES[wire_name]
    out, total = [], 0
    for seq, start in enumerate(range(0, table.num_rows, rows_per_message)):
        part = table.slice(start, rows_per_message)
        if dictionary:
            part = wire.dictionary_encode(part)
        header = wire.Header(producer=producer, seq=seq, total=total, name=producer.hex()[:8],
                             send_ns=time.time_ns())
        out.append([bytes(f) for f in wire.encode(part, topic=b"t", header=header,
                                                  compression=compression)])
        total += part.num_rows
    eos = wire.Header(kind=wire.Kind.END_OF_STREAM, producer=producer, seq=len(out), total=total,
                      name=producer.hex()[:8])
    out.append([bytes(f) for f in wire.encode(None, topic=b"t", header=eos)])
    return out


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def consume(blobs: list[str], rows: int) -> dict:
    """One Subscriber run: "go" to collect()'s DataFrame of every row."""
    gc.collect()
    base = rss()
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        procs = [subprocess.Popen([sys.executable, REPLAY, sub.endpoints[0], b],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for b in blobs]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            (u0, s0), t0 = cpu(), time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            df = sub.collect(producers=len(blobs), timeout=600)
            (u1, s1), wall = cpu(), time.perf_counter() - t0
            st = sub.stats()
            assert len(df) == rows and st["missed"] == 0 and not st["bad_frames"], (len(df), st)
            held = rss() - base
            frame_bytes = int(df.memory_usage(deep=True).sum())
        finally:
            for p in procs:
                p.stdin.close()
                p.wait()
    return {"user": u1 - u0, "sys": s1 - s0, "wall": wall, "rss": held, "df": frame_bytes}


def floor(blobs: list[str], rows: int, validate: bool = False) -> dict:
    """A bare SUB: receive and keep every message, then one pyarrow read and DataFrame;
    with ``validate``, Arrow's full validation of the table first (what a consumer of
    frames it cannot trust pays at least)."""
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc
    import zmq
    gc.collect()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.rcvhwm = 0
    sock.subscribe(b"")
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    procs = [subprocess.Popen([sys.executable, REPLAY, f"tcp://127.0.0.1:{port}", b],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for b in blobs]
    try:
        # A bound SUB greets new peers only while its thread is inside a zmq call: poll
        # while another thread waits for every replayer's "ready".
        ready = []
        waiter = threading.Thread(target=lambda: ready.extend(p.stdout.readline() for p in procs))
        waiter.start()
        while waiter.is_alive():
            sock.poll(10)
            waiter.join(0.01)
        assert [r.strip() for r in ready] == ["ready"] * len(procs), ready
        (u0, s0), t0 = cpu(), time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        kept, ends = [], 0
        while ends < len(blobs):
            frames = sock.recv_multipart(copy=False)
            if frames[1].bytes[3] == 1:      # end-of-stream
                ends += 1
            elif frames[2].buffer.nbytes:
                kept.append(frames[2])
        tables = [ipc.open_stream(pa.py_buffer(f.buffer)).read_all() for f in kept]
        table = pa.concat_tables(tables, promote_options="permissive")
        if validate:
            table.validate(full=True)
        for i, field in enumerate(table.schema):   # wire dictionaries back to strings
            if pa.types.is_dictionary(field.type):
                table = table.set_column(i, field.name, pc.cast(table.column(i), field.type.value_type))
        df = table.to_pandas()
        (u1, s1), wall = cpu(), time.perf_counter() - t0
        assert len(df) == rows, len(df)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
        sock.close(linger=0)
        ctx.term()
    return {"user": u1 - u0, "sys": s1 - s0, "wall": wall}


def child(kind: str, rows: int, blobs: list[str]) -> None:
    """A fresh process: the first run pays for memory it touches first (a new kernel's
    first collect()); the second reuses what the first freed (a notebook that has run)."""
    run = consume if kind == "consume" else (
        lambda blobs, rows: floor(blobs, rows, validate=kind == "validated"))
    print(json.dumps([run(blobs, rows) for _ in range(2)]))


def in_child(kind: str, rows: int, blobs: list[str]) -> list[dict]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--rows", str(rows), *blobs],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--frame-kib", type=int, default=1024)
    ap.add_argument("--wires", nargs="+", default=list(WIRES), choices=list(WIRES))
    ap.add_argument("--producers", type=int, nargs="+", default=[2, 64],
                    help="producer processes; the first for every wire, the others plain only")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("blobs", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.rows, args.blobs)
    table = rows_table(args.rows)
    per = max(1, int(args.frame_kib * 1024 / (table.nbytes / table.num_rows)))
    print(f"{args.rows:,} rows (5 columns, 2 strings), {per:,} rows (~{args.frame_kib} KiB "
          f"in Arrow) per message; each run in a fresh process: cold (first run) and warm "
          f"(second); best of {args.repeat} by CPU, RSS the median\n")
    results: dict[str, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plans = {}
        for wire_name in args.wires:
            counts = args.producers if wire_name == "plain" else args.producers[:1]
            for n in counts:
                cuts = np.linspace(0, args.rows, n + 1).astype(int)
                blobs = []
                for i in range(n):
                    path = os.path.join(tmp, f"{wire_name}-p{n}-{i}.bin")
                    write_blob(path, encode_messages(table.slice(cuts[i], cuts[i + 1] - cuts[i]), per,
                                                     (n * 1000 + i).to_bytes(16, "big"), wire_name))
                    blobs.append(path)
                if n == args.producers[0]:
                    plans[f"floor (bare SUB), {wire_name}"] = blobs
                    plans[f"floor + full validation, {wire_name}"] = blobs
                plans[f"Subscriber, {wire_name}, {n} producers"] = blobs
        for _ in range(args.repeat):  # round-robin: a drifting VM drifts under all of them
            for name, blobs in plans.items():
                kind = ("validated" if "validation" in name else "floor" if name.startswith("floor")
                        else "consume")
                results.setdefault(name, []).append(in_child(kind, args.rows, blobs))
    print("| run | memory | user s | sys s | M rows per CPU-s | µs per row | ÷ floor "
          "| ÷ validated floor | wall s | RSS held ÷ DataFrame |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates = {}
    for name, runs in results.items():
        for i, state in enumerate(("cold", "warm")):
            best = min((r[i] for r in runs), key=lambda r: r["user"] + r["sys"])
            rates[(name, state)] = rate = args.rows / (best["user"] + best["sys"])
            wire_name = name.split(", ")[1] if name.startswith("Subscriber") else name.rsplit(" ", 1)[-1]
            ratio, checked = (
                f"{base / rate:.2f}x" if base and not name.startswith("floor") else ""
                for base in (rates.get((f"floor (bare SUB), {wire_name}", state)),
                             rates.get((f"floor + full validation, {wire_name}", state))))
            mem = ""
            if "rss" in best:
                held = float(np.median([r[i]["rss"] for r in runs]))
                mem = f"{held / best['df']:.2f}x ({held / 1e6:.0f} / {best['df'] / 1e6:.0f} MB)"
            print(f"| {name} | {state} | {best['user']:.3f} | {best['sys']:.3f} | {rate / 1e6:.1f} "
                  f"| {1e6 / rate:.3f} | {ratio} | {checked} | {best['wall']:.2f} | {mem} |")
    subs = [n for n in results if n.startswith("Subscriber, plain")]
    if len(subs) >= 2:
        for state in ("cold", "warm"):
            print(f"\n{subs[-1]} ÷ {subs[0]}, {state}: "
                  f"{rates[(subs[-1], state)] / rates[(subs[0], state)]:.2f}x the rows per consumer "
                  "CPU-second (target >= 0.8x)")
    print("\n÷ floor: the Subscriber's CPU per row over the bare SUB's on the same frames "
          "(target <= 1.3x); ÷ validated floor: over the bare SUB's that also runs Arrow's full "
          "validation on the table (the Subscriber validates every body: what the gap is made of)")


if __name__ == "__main__":
    main()
