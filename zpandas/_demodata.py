"""The demo's sample data: simulated nodes' service metrics, deterministic (seeded).

Shipped in the package so that ``zpandas demo`` works after a plain ``pip install``;
``data/generate.py`` writes the same files into the repository (byte for byte).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

SERVICES = ["api", "auth", "billing", "search"]
METRICS = {"cpu_pct": (35.0, 12.0), "mem_mb": (2048.0, 300.0), "req_per_s": (120.0, 40.0)}
STATUSES = np.array(["ok", "ok", "ok", "ok", "ok", "ok", "ok", "warn", "error"])
MESSAGES = np.array(["", "", "", "", "slow upstream, retrying", "cache miss",
                     'client said "hello, world"', "GC pause"])


def make_frame(node: int, part: int, rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows of one file: a node's metrics over time, with some realistic noise."""
    rng = np.random.default_rng([seed, node, part])
    start = pd.Timestamp("2026-11-01T00:00:00Z") + pd.Timedelta(hours=part - 1)
    ts = start + pd.to_timedelta(np.sort(rng.uniform(0, 3600, rows)), unit="s")
    metric = rng.choice(list(METRICS), rows)
    mean = np.array([METRICS[m][0] for m in metric]) * (1 + 0.1 * node)
    std = np.array([METRICS[m][1] for m in metric])
    return pd.DataFrame({
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "host": f"node{node}",
        "region": ["eu-west", "eu-west", "us-east", "ap-south"][(node - 1) % 4],
        "service": rng.choice(SERVICES, rows),
        "metric": metric,
        "value": np.round(np.abs(rng.normal(mean, std)), 3),
        "latency_ms": rng.integers(1, 500, rows),
        "status": rng.choice(STATUSES, rows),
        "message": rng.choice(MESSAGES, rows),
    })


def write(out: str, nodes: int = 4, files: int = 2, rows: int = 5000) -> list[str]:
    """Write ``out/node{1..nodes}/metrics-{1..files}.csv``; return the node folders."""
    folders = []
    for node in range(1, nodes + 1):
        folder = os.path.join(out, f"node{node}")
        os.makedirs(folder, exist_ok=True)
        for part in range(1, files + 1):
            make_frame(node, part, rows).to_csv(os.path.join(folder, f"metrics-{part}.csv"), index=False)
        folders.append(folder)
    return folders
