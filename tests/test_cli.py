"""The zpandas command: publish and subscribe as separate processes, the demo, errors."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import zpandas as zp

from .conftest import ROOT, wait_for


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
@pytest.mark.timeout(300)
def test_demo_runs_from_a_plain_pip_install(tmp_path):
    """The wheel alone, run outside the repository: the demo makes its own data, the same
    bytes as the repository's data/ folder."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), ROOT], check=True, timeout=240, cwd=tmp_path)
    (wheel,) = wheels.glob("zpandas-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, timeout=240, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import zpandas; print(zpandas.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    out = tmp_path / "demo"
    demo = subprocess.run([sys.executable, "-m", "zpandas", "demo", "--out", str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr
    agg = pd.read_parquet(out / "aggregate.parquet")
    assert agg["rows"].sum() == 40_000 and set(agg["host"]) == {"node1", "node2", "node3", "node4"}
    assert ds.dataset(out / "rows.parquet").count_rows() == 40_000
    assert (out / "cpu_by_host.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for node in range(1, 5):
        for part in (1, 2):
            name = os.path.join(f"node{node}", f"metrics-{part}.csv")
            assert (out / "data" / name).read_bytes() == pathlib.Path(ROOT, "data", name).read_bytes()


def test_errors_are_one_clear_line(tmp_path, procs):
    (tmp_path / "a.csv").write_text("x\n1\n")
    procs.start("publish", str(tmp_path / "*.tsv"), "--wait-for", "0")
    procs.start("publish", str(tmp_path / "a.csv"), "-e", "udp://127.0.0.1:1", "--wait-for", "0")
    procs.start("publish", str(tmp_path / "a.csv"), "-e", ">tcp://127.0.0.1:1", "--wait-timeout", "0.2")
    (c1, e1), (c2, e2), (c3, e3) = procs.wait_all()
    assert c1 == 1 and "no file matches" in e1 and "Traceback" not in e1
    assert c2 == 1 and "unknown transport 'udp'" in e2
    assert c3 == 1 and "0 of 1 subscribers" in e3


def test_publish_says_what_it_waits_for_and_why_it_cannot_connect(procs):
    csv = os.path.join(ROOT, "data", "node1", "metrics-1.csv")
    procs.start("publish", csv, "-e", ">tcp://no-such-host.invalid:5556", "--wait-timeout", "2")
    procs.start("publish", csv, "-e", f">tcp://127.0.0.1:{free_port()}", "--wait-timeout", "2")
    (c1, e1), (c2, e2) = procs.wait_all()
    assert c1 == c2 == 1
    assert "cannot resolve 'no-such-host.invalid'" in e1   # said before any waiting
    assert "waiting for 1 subscriber on >tcp://no-such-host.invalid:5556" in e1
    assert "cannot connect to tcp://no-such-host.invalid:5556" in e1
    assert "cannot resolve" not in e2 and "waiting for 1 subscriber on >tcp://127.0.0.1:" in e2
    assert e2.count("cannot connect to tcp://127.0.0.1:") == 1   # once, not at every retry (100 ms)


def test_every_command_line_option_has_help():
    import argparse

    from zpandas.cli import _parser

    def missing(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from missing(sub, f"{where} {name}")
            elif not action.help:
                yield f"{where} {'/'.join(action.option_strings) or action.dest}"

    assert list(missing(_parser(), "zpandas")) == []


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_parquet_sink_stopped_by_a_signal_writes_everything_it_received(sig, tmp_path, procs, streamers):
    """Rows flowing, no file rolled yet (60 s): the signal makes the sink write every row it
    received, say so, and end by that signal (the shell shows 128 + its number)."""
    port = free_port()
    out = tmp_path / "rows"
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "--parquet", str(out))
    assert sub.stdout.readline().startswith("listening on tcp://127.0.0.1:")
    streamers.start(f">tcp://127.0.0.1:{port}", "--rows", "500", "--pause", "0.002", "--wait-for", "1")
    while True:  # the sink's progress lines: wait until rows flow
        line = sub.stdout.readline()
        assert line, sub.stderr.read()
        if re.search(r"rows=[1-9]", line) and "+0/s" not in line:
            break
    sub.send_signal(sig)
    stdout, stderr = sub.communicate(timeout=60)
    assert sub.returncode == -sig, stderr
    received, wrote = map(lambda s: int(s.replace(",", "")),
                          re.search(r"received ([\d,]+) rows; wrote ([\d,]+) rows", stdout).groups())
    got = pd.read_parquet(out)
    assert 0 < received <= wrote == len(got)
    # one producer's rows, in order from its first: every one, once
    assert sorted(got["id"]) == list(range(wrote))
    assert signal.Signals(sig).name in stderr and "Traceback" not in stderr


def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (an orphan's new parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _checkpointed(db) -> int:
    import sqlite3
    with sqlite3.connect(db) as c:
        return sum(row[0] for row in c.execute("SELECT offset FROM files"))


def _growing_log(path, stop):
    """A job appending numbered rows to a CSV log until ``stop`` is set."""
    import threading

    def write():
        with open(path, "w") as f:
            f.write("i\n")
            i = 0
            while not stop.wait(0.01):
                f.writelines(f"{i + k}\n" for k in range(50))
                f.flush()
                i += 50

    t = threading.Thread(target=write)
    t.start()
    return t


def test_publish_follow_ends_within_2_s_of_sigterm_with_its_checkpoint_saved(tmp_path, procs):
    """Even with its subscriber gone (a notebook's kernel killed): nothing holds the exit
    for the producer's linger (10 s)."""
    import threading
    stop = threading.Event()
    writer = _growing_log(tmp_path / "app.csv", stop)
    ckpt = tmp_path / "ckpt.db"
    try:
        with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
            p = procs.start("publish", str(tmp_path / "app.csv"), "--follow", "--checkpoint", str(ckpt),
                            "-e", ">" + sub.endpoints[0], "--quiet")
            wait_for(lambda: sub.stats()["rows"] >= 1000, timeout=60, what="rows flowing")
            wait_for(lambda: _checkpointed(ckpt) > 0, timeout=60, what="a first checkpoint")
        before = _checkpointed(ckpt)    # and now its subscriber is gone
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=2.0)
    finally:
        stop.set()
        writer.join(10)
    assert p.returncode == -signal.SIGTERM
    assert 0 < before <= _checkpointed(ckpt) <= (tmp_path / "app.csv").stat().st_size


def test_a_spawned_command_ends_when_its_parent_is_killed(tmp_path):
    """A notebook kernel killed (SIGKILL: no chance to clean up) takes its tails with it."""
    import threading
    stop = threading.Event()
    writer = _growing_log(tmp_path / "app.csv", stop)
    ckpt = tmp_path / "ckpt.db"
    kernel_code = (
        "import sys, zpandas as zp\n"
        "tail = zp.spawn('publish', sys.argv[1], '--follow', '--checkpoint', sys.argv[2], '-e', sys.argv[3],"
        " '--quiet')\n"
        "print(tail.pid, flush=True)\n"
        "sys.stdin.read()\n")
    try:
        with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
            kernel = subprocess.Popen([sys.executable, "-c", kernel_code, str(tmp_path / "app.csv"), str(ckpt),
                                       ">" + sub.endpoints[0]], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                tail = int(kernel.stdout.readline())
                wait_for(lambda: sub.stats()["rows"] >= 1000, timeout=60, what="the tail's rows")
                wait_for(lambda: _checkpointed(ckpt) > 0, timeout=60, what="a first checkpoint")
                kernel.kill()
                kernel.wait(10)
                wait_for(lambda: _ended(tail), timeout=10, what="the tail to end with its kernel")
            finally:
                if kernel.poll() is None:
                    kernel.kill()
                kernel.communicate()
    finally:
        stop.set()
        writer.join(10)
    assert _checkpointed(ckpt) > 0
