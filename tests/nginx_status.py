"""Status lines shaped like NGINX Plus's ``/status`` JSON (about 7 KB, nested 4 levels).

The keys follow NGINX Plus's documented status data: connections, ssl, requests, server
zones with responses by class, upstreams with a list of peers (each with its own
responses and health checks), caches with hit/miss/... counters. Values are made up,
growing as counters do. Used by tests/test_json_nested.py and bench/bench_formats.py.
"""

from __future__ import annotations

import json
import random

ZONES = ["hg.nginx.org", "trac.nginx.org", "lxr.nginx.org", "demo.nginx.com", "api.nginx.com"]
UPSTREAMS = {"trac-backend": 2, "hg-backend": 2, "lxr-backend": 3, "demo-backend": 4}


def _responses(rng: random.Random, total: int) -> dict:
    parts = [int(total * p) for p in (0.0, 0.86, 0.08, 0.05, 0.01)]
    return {"1xx": parts[0], "2xx": parts[1], "3xx": parts[2], "4xx": parts[3], "5xx": parts[4],
            "total": sum(parts)}


def status(i: int, *, seed: int = 0, zones: list[str] | None = None) -> dict:
    """The ``i``-th status document of a server (counters grow with ``i``)."""
    rng = random.Random(seed * 1_000_003 + i)
    t = 1_733_000_000_000 + i * 1000
    base = 1_000_000 + i * 137
    doc = {
        "version": 8, "nginx_version": "1.25.3", "nginx_build": "nginx-plus-r31",
        "address": "10.0.0.1", "generation": 6, "load_timestamp": 1_732_990_000_000,
        "timestamp": t, "pid": 8712, "ppid": 8711,
        "processes": {"respawned": 0},
        "connections": {"accepted": 8_995_031 + i * 17, "dropped": 0, "active": rng.randint(1, 40),
                        "idle": rng.randint(10, 60)},
        "ssl": {"handshakes": 79_572 + i, "handshakes_failed": 21_025, "session_reuses": 15_762},
        "requests": {"total": 31_102_389 + i * 51, "current": rng.randint(1, 9)},
        "server_zones": {z: {"processing": rng.randint(0, 3), "requests": base + k,
                             "responses": _responses(rng, base + k), "discarded": k,
                             "received": (base + k) * 210, "sent": (base + k) * 5100}
                         for k, z in enumerate(zones if zones is not None else ZONES)},
        "upstreams": {name: {"peers": [{"id": p, "server": f"10.0.1.{p}:8080", "backup": False,
                                        "weight": 1, "state": "up", "active": rng.randint(0, 4),
                                        "requests": base // 3 + p, "responses": _responses(rng, base // 3 + p),
                                        "sent": base * 300, "received": base * 4000, "fails": 0,
                                        "unavail": 0, "health_checks": {"checks": i, "fails": 0,
                                                                        "unhealthy": 0,
                                                                        "last_passed": True},
                                        "downtime": 0, "selected": t - 5}
                                       for p in range(n)],
                             "keepalive": 0, "zombies": 0, "zone": name}
                      for name, n in UPSTREAMS.items()},
        "caches": {"http_cache": {"size": 530_915_328, "max_size": 536_870_912, "cold": False,
                                  **{kind: {"responses": base // 7 + j, "bytes": base * 90 + j}
                                     for j, kind in enumerate(["hit", "stale", "updating", "revalidated"])},
                                  "miss": {"responses": base // 9, "bytes": base * 70,
                                           "responses_written": base // 11, "bytes_written": base * 60},
                                  "expired": {"responses": base // 13, "bytes": base * 40,
                                              "responses_written": base // 17, "bytes_written": base * 30},
                                  "bypass": {"responses": base // 19, "bytes": base * 20,
                                             "responses_written": base // 23, "bytes_written": base * 10}}},
    }
    return doc


def write(path, n: int, *, seed: int = 0, zones_from: int | None = None) -> list[dict]:
    """``n`` status lines; from line ``zones_from`` on, a sixth server zone appears (keys
    that come and go). Returns the documents."""
    docs = [status(i, seed=seed, zones=ZONES + ["new.nginx.org"] if zones_from is not None
                   and i >= zones_from else None) for i in range(n)]
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return docs
