"""Formats end to end against their local baselines, in one run (ratios, best of --repeat).

    python bench/bench_formats.py [--lines 20000] [--rows 1000000] [--repeat 3]

* nested JSON: NGINX Plus-like status lines (``tests/nginx_status.py``, about 7 KB each,
  nested 4 levels), ``publish_files(format="jsonl")`` -> Subscriber ``collect()`` (rows
  flattened into dotted columns), against ``pyarrow.json.read_json`` of the same file
  (structs, no flattening, all cores; target >= 1.0x), and against the same DataFrame made
  locally (read_json, structs flattened, lists as JSON text, to_pandas).
* encodings: the same CSV (metrics with accented host names) in UTF-8 and in latin-1,
  whole files end to end; the latin-1 one is decoded a block at a time. Target: latin-1
  >= 0.8x UTF-8. And the same for JSON lines read record by record (follow mode's path).

Each end-to-end figure is wall time from the call to a DataFrame of every row, with the
publisher on a thread of this process (both sides release the GIL in Arrow, polars and
ZeroMQ; on real nodes the producer has its own machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import pyarrow.json as pajson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zpandas as zp  # noqa: E402
from tests import nginx_status  # noqa: E402
from zpandas.sources.lines import _nested  # noqa: E402


def end_to_end(path: str, **kw) -> tuple[float, int]:
    """Seconds from publishing ``path`` to a DataFrame of all its rows, and the rows."""
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        done: dict = {}
        t0 = time.perf_counter()
        th = threading.Thread(target=lambda: done.update(zp.publish_files(
            path, sub.endpoints, wait_for_subscribers=1, **kw)))
        th.start()
        th.join()
        df = sub.collect(timeout=600)
        elapsed = time.perf_counter() - t0
        assert len(df) == done["rows"] and len(sub.rejects()) == 0, (len(df), done)
    return elapsed, len(df)


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=20_000, help="nested JSON status lines")
    ap.add_argument("--rows", type=int, default=1_000_000, help="CSV rows")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="zpandas-bench-formats-")

    nested = os.path.join(tmp, "status.jsonl")
    nginx_status.write(nested, args.lines)
    mb = os.path.getsize(nested) / 1e6
    local = best(lambda: _timed(lambda: pajson.read_json(nested)), args.repeat)
    # The same DataFrame made locally: read_json, structs flattened, lists as JSON text
    same = best(lambda: _timed(lambda: _nested(pajson.read_json(nested), True).to_pandas()),
                args.repeat)
    ours = best(lambda: end_to_end(nested, format="jsonl")[0], args.repeat)
    cols = len(pd.json_normalize(nginx_status.status(0)).columns)
    print(f"nested JSON, {args.lines:,} lines ({mb:.0f} MB, {cols} columns flattened):")
    print(f"  pyarrow.json.read_json           {local:6.2f} s  {args.lines / local:10,.0f} lines/s")
    print(f"  the same DataFrame, locally      {same:6.2f} s  {args.lines / same:10,.0f} lines/s")
    print(f"  zpandas end to end               {ours:6.2f} s  {args.lines / ours:10,.0f} lines/s  "
          f"= {local / ours:.2f}x read_json (target >= 1.0x), {same / ours:.2f}x the same DataFrame locally")

    rng = np.random.default_rng(0)
    hosts = np.array(["zürich-01", "são-paulo-02", "köln-03", "málaga-04", "oslo-05", "brno-06"])
    df = pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=args.rows, freq="10ms"),
                       "host": hosts[rng.integers(0, len(hosts), args.rows)],
                       "metric": np.where(rng.random(args.rows) < 0.5, "cpu_pct", "mem_mb"),
                       "value": rng.random(args.rows).round(3)})
    print(f"encodings, {args.rows:,} rows of metrics with accented host names:")
    for label, suffix, kw in (("whole CSV", "csv", {}),
                              ("JSON lines, record by record", "jsonl", {"format": "jsonl"})):
        rates = {}
        for enc in ("utf-8", "latin-1"):
            path = os.path.join(tmp, f"metrics-{enc}.{suffix}")
            if suffix == "csv":
                df.to_csv(path, index=False, encoding=enc)
            else:
                with open(path, "w", encoding=enc) as f:
                    f.write(df.assign(timestamp=df["timestamp"].astype(str))
                            .to_json(orient="records", lines=True, force_ascii=False))
            rates[enc] = args.rows / best(lambda p=path, e=enc: end_to_end(p, encoding=e, **kw)[0],
                                          args.repeat)
        print(f"  {label:30s} utf-8 {rates['utf-8']:10,.0f} rows/s   latin-1 {rates['latin-1']:10,.0f} "
              f"rows/s = {rates['latin-1'] / rates['utf-8']:.2f}x (target >= 0.8x)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
