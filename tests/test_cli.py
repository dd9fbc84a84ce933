"""The zpandas command: publish and subscribe as separate processes, the demo, errors."""

from __future__ import annotations

import json
import os
import socket

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from .conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_publish_to_subscribe_writes_parquet(tmp_path, procs):
    port = free_port()
    out = tmp_path / "rows.parquet"
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "-t", "m",
                      "--producers", "2", "--parquet", str(out))
    assert sub.stdout.readline().startswith("listening on tcp://127.0.0.1:")
    files = [os.path.join(ROOT, "data", f"node{n}", "metrics-1.csv") for n in (1, 2)]
    for f in files:
        procs.start("publish", f, "-e", f">tcp://127.0.0.1:{port}", "-t", "m")
    results = procs.wait_all(timeout=60)
    assert [code for code, _ in results] == [0, 0, 0], results
    assert "published 5,000 rows from 1 files" in results[1][1]  # the summary, after the bar
    got = pd.read_parquet(out)  # a folder of rolled files
    want = pd.concat([pd.read_csv(f) for f in files])
    assert len(got) == len(want) == 10_000
    assert sorted(got["value"]) == sorted(want["value"])
    for part in os.listdir(out):
        meta = json.loads(pq.read_schema(out / part).metadata[b"zpandas"])
        # provenance: the files (and byte ranges) the rows came from
        sources = {src for p in meta["producers"] for src in p["sources"]}
        # "<run>/<path>": each read of a file is a source of its own (rows carry offsets)
        assert sources and {s.split("/", 1)[1] for s in sources} <= {os.path.abspath(f) for f in files}


@pytest.mark.slow
def test_demo_runs_and_writes_its_outputs(tmp_path, procs):
    procs.start("demo", "--out", str(tmp_path))
    code, err = procs.wait_all(timeout=120)[0]
    assert code == 0, err
    agg = pd.read_parquet(tmp_path / "aggregate.parquet")
    assert agg["rows"].sum() == 40_000 and set(agg["host"]) == {"node1", "node2", "node3", "node4"}
    assert ds.dataset(tmp_path / "rows.parquet").count_rows() == 40_000
    assert (tmp_path / "cpu_by_host.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_clear_line(tmp_path, procs):
    (tmp_path / "a.csv").write_text("x\n1\n")
    procs.start("publish", str(tmp_path / "*.tsv"), "--wait-for", "0")
    procs.start("publish", str(tmp_path / "a.csv"), "-e", "udp://127.0.0.1:1", "--wait-for", "0")
    procs.start("publish", str(tmp_path / "a.csv"), "-e", ">tcp://127.0.0.1:1", "--wait-timeout", "0.2")
    (c1, e1), (c2, e2), (c3, e3) = procs.wait_all()
    assert c1 == 1 and "no file matches" in e1 and "Traceback" not in e1
    assert c2 == 1 and "unknown transport 'udp'" in e2
    assert c3 == 1 and "0 of 1 subscribers" in e3


def test_publish_schema_option_and_type_drift(tmp_path, procs):
    drift = tmp_path / "drift.csv"
    drift.write_text("id,code\n" + "".join(f"{i},{i}\n" for i in range(3000)) + "3000,A7\n")
    port = free_port()
    out = tmp_path / "rows.parquet"
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "--producers", "2",
                      "--parquet", str(out))
    assert sub.stdout.readline().startswith("listening on")
    endpoint = f">tcp://127.0.0.1:{port}"
    # inferred int64, then "A7": a reject, and said so (the rule of followed files too)
    procs.start("publish", str(drift), "-e", endpoint, "--block-size", "1000", "-t", "a")
    # the type given up front: every value fits
    procs.start("publish", str(drift), "-e", endpoint, "--schema", "code=string", "-t", "b")
    procs.start("publish", str(drift), "--schema", "code")          # no type
    procs.start("publish", str(drift), "--schema", "code=text")     # no such type
    procs.start("publish", str(drift), "--schema", "code=string", "--follow")
    results = procs.wait_all(timeout=60)
    assert [code for code, _ in results[:3]] == [0, 0, 0], results
    assert "published 3,000 rows" in results[1][1] and "1 lines rejected" in results[1][1]
    assert "rejected" not in results[2][1] and "published 3,001 rows" in results[2][1]
    assert results[3][0] == 2 and "expected NAME=TYPE" in results[3][1]
    assert results[4][0] == 2 and "unknown type 'text'" in results[4][1]
    assert results[5][0] == 1 and "schema= applies to whole CSV files" in results[5][1]
    got = pd.read_parquet(out)
    assert len(got) == 6001
    assert sorted(got["code"].astype(str)) == sorted([str(i) for i in range(3000)] * 2 + ["A7"])
