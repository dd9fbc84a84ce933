"""What full validation of untrusted bodies costs the consumer, measured against no validation.

Two measures, each with its baseline in the same run:

  decode      ``wire.decode`` against the decode path before full validation (Arrow's reader,
              its cheap ``validate()``, fingerprint and row checks): microseconds per message
              and milliseconds per million rows, for 4 MiB frames of the demo's CSV data
              (9 columns, 5 of them text) and for small frames.
  consumer    a Subscriber's CPU time (all its threads) per million rows, from "go" to the
              DataFrame of every row (``frame()``), received from a sender in another
              process, with validation on and switched off.

Target (issue 11): the consumer's CPU per row within 1.3x of the unvalidated path.

    python bench/bench_validation.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
import generate  # noqa: E402

import zpandas as zp  # noqa: E402
from zpandas import _validate, wire  # noqa: E402
from _replay import write_blob  # noqa: E402

REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_replay.py")


def basic_decode(frames):
    """The decode path before full validation (zpandas 0.1.0 at stop 9)."""
    header = wire.Header.unpack(frames[1])
    table = ipc.open_stream(pa.BufferReader(pa.py_buffer(frames[2]))).read_all()
    table.validate()
    assert wire.fingerprint(table.schema) == header.fingerprint
    assert table.num_rows == header.rows
    return table


def messages(table: pa.Table, rows_per_message: int, seq0: int = 0) -> list[list[bytes]]:
    out = []
    for i, start in enumerate(range(0, table.num_rows, rows_per_message)):
        part = table.slice(start, rows_per_message)
        header = wire.Header(producer=b"b" * 16, seq=seq0 + i, total=start, name="bench")
        out.append([bytes(f) for f in wire.encode(part, topic=b"t", header=header)])
    return out


def per_message(decode, msgs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for m in msgs:
            decode(m)
        best = min(best, time.process_time() - t0)
    return best


def consumer_cpu(path: str, count: int, rows: int, validate: bool) -> float:
    saved = (_validate.check_body_messages, _validate.check_table, wire.check_body_messages,
             wire.check_table)
    if not validate:
        wire.check_body_messages = lambda body: None
        wire.check_table = lambda table, fp, **kw: table
    try:
        with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
            p = subprocess.Popen([sys.executable, REPLAY, sub.endpoints[0], path],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            c0 = time.process_time()
            p.stdin.write("go\n")
            p.stdin.flush()
            while sub.stats()["messages"] < count:
                time.sleep(0.002)
            df = sub.frame()  # what a notebook does with the rows: one DataFrame
            cpu = time.process_time() - c0
            assert len(df) == rows and not sub.stats()["bad_frames"]
            p.stdin.close()
            assert p.wait() == 0
        return cpu
    finally:
        wire.check_body_messages, wire.check_table = saved[2], saved[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "rows.csv")
        generate.make_frame(1, 1, args.rows, seed=11).to_csv(csv, index=False)
        table = pcsv.read_csv(csv).combine_chunks()
        row_bytes = table.nbytes / table.num_rows
        sizes = {"4 MiB frames": max(1, int((4 << 20) / row_bytes)), "100-row frames": 100,
                 "1-row frames": 1}
        print(f"{args.rows:,} rows of the demo's CSV data ({table.num_columns} columns), "
              f"best of {args.repeat}\n")
        print("| frames | messages | before µs/msg | now µs/msg | before ms per 1M rows "
              "| now ms per 1M rows | now ÷ before |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, n in sizes.items():
            sample = table if n > 1 else table.slice(0, 20_000)
            msgs = messages(sample, n)
            rows = sample.num_rows
            old = per_message(basic_decode, msgs, args.repeat)
            new = per_message(lambda m: wire.decode(m), msgs, args.repeat)
            print(f"| {name} | {len(msgs):,} | {old / len(msgs) * 1e6:.1f} | "
                  f"{new / len(msgs) * 1e6:.1f} | {old / rows * 1e9:.0f} | "
                  f"{new / rows * 1e9:.0f} | {new / old:.2f}x |")

        print("\n| consumer (Subscriber to DataFrame, 4 MiB frames) | CPU s | CPU ms per 1M rows | "
              "÷ without validation |")
        print("|---|---:|---:|---:|")
        msgs = messages(table, sizes["4 MiB frames"])
        path = os.path.join(tmp, "messages.bin")
        write_blob(path, msgs)
        cpu = {True: [], False: []}
        for _ in range(args.repeat):  # alternating, so a drifting VM drifts under both
            for validate in (False, True):
                cpu[validate].append(consumer_cpu(path, len(msgs), table.num_rows, validate))
        off, on = min(cpu[False]), min(cpu[True])
        for label, v in (("validation off (before)", off), ("full validation (now)", on)):
            print(f"| {label} | {v:.3f} | {v / table.num_rows * 1e9:.0f} | {v / off:.2f}x |")
        print(f"\nFull validation costs the consumer {on / off:.2f}x its CPU per row "
              f"(target <= 1.3x).")


if __name__ == "__main__":
    main()
