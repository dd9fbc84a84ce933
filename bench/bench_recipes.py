"""Parse rate of each loghub recipe (docs/recipes.md), printed as the docs' markdown table.

    python bench/bench_recipes.py [--copies 50]

Each loghub 2k sample (tests/data/loghub) is repeated ``--copies`` times into one block and
parsed with its format (the syslog preset or a ``regex:`` recipe, tests/test_corpora.py's
RECIPES) on one thread: lines per second of parsing, and the share of lines parsed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.test_corpora import LOGHUB, RECIPES  # noqa: E402
from zpandas.sources.lines import get_format  # noqa: E402
from zpandas.sources.records import Records  # noqa: E402


def records_of(data: bytes) -> Records:
    if not data.endswith(b"\n"):
        data += b"\n"
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    return Records(data, np.concatenate([[0], ends]), np.arange(1, len(ends) + 1),
                   np.concatenate([[0], ends[:-1]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=50)
    args = ap.parse_args()
    print("| system | format | lines parsed | lines/s (one core) |")
    print("|---|---|---:|---:|")
    for system, (fmt, time_format) in sorted(RECIPES.items()):
        data = (LOGHUB / f"{system}_2k.log").read_bytes()
        if system == "Thunderbird":
            import re
            data = re.sub(rb"(?m)^\S+ \d+ \d{4}\.\d\d\.\d\d \S+ ", b"", data)
        one = records_of(data)
        many = records_of(b"".join([data.rstrip(b"\n") + b"\n"] * args.copies))
        parsed, _ = get_format(fmt, time_format=time_format).parse(one, "x")
        fmt_obj = get_format(fmt, time_format=time_format)
        t0 = time.perf_counter()
        fmt_obj.parse(many, "x")
        rate = len(many) / (time.perf_counter() - t0)
        share = (parsed.num_rows if parsed is not None else 0) / len(one)
        shown = "`syslog` preset" if fmt == "syslog" else "recipe below"
        print(f"| {system} | {shown} | {share:.1%} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
