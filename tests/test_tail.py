"""Issue 12 correctness cases for tails that run for days: idle costs nothing, and no
record - however long, however unterminated - can stall a file or a one-pass publish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import zpandas as zp

from .conftest import ROOT, wait_for

LOCAL = "@tcp://127.0.0.1:*"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_idle_follow_producer_uses_under_one_percent_of_a_core(tmp_path):
    log = tmp_path / "app.log"
    log.write_text('{"a": 1}\n')
    with zp.Subscriber(LOCAL) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpandas", "publish", str(tmp_path / "app.log*"), "-f", "jsonl",
             "--follow", "-e", sub.endpoints[0], "-q"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=30, what="the first row")
            with open(log, "a") as f:  # and one more: it follows, then goes quiet
                f.write('{"a": 2}\n')
            wait_for(lambda: sub.stats()["rows"] == 2, timeout=30, what="the appended row")
            before = _cpu_seconds(proc.pid)
            t0 = time.monotonic()
            wait_for(lambda: time.monotonic() - t0 >= 10, timeout=20, interval=0.5,
                     what="10 s of idling")
            used = _cpu_seconds(proc.pid) - before
            assert used < 0.01 * (time.monotonic() - t0), f"{used:.2f} CPU s in 10 s"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), err


BIG = 10 << 20  # a 10 MiB line: more than the 4 MiB read block


def _rejects_and_rows(sub, rows: int, rejects: int):
    wait_for(lambda: sub.stats()["rows"] >= rows and sub.stats()["rejects"] >= rejects,
             timeout=60, what=f"{rows} rows and {rejects} rejects")
    return sub.frame(), sub.rejects()


@pytest.mark.timeout(120)
def test_a_line_longer_than_the_read_block_is_a_reject_and_following_goes_on(tmp_path):
    log = tmp_path / "app.log"
    log.write_text('{"i": 0}\n')
    with zp.Subscriber(LOCAL) as sub:
        from .test_follow import Publishing
        pub = Publishing([str(log)], sub.endpoints, format="jsonl", follow=True,
                         wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=30, what="the first row")
            with open(log, "ab") as f:
                f.write(b'{"i": "' + b"x" * BIG + b'"}\n')
                for i in range(1, 4):
                    f.write(b'{"i": %d}\n' % i)
            df, rejects = _rejects_and_rows(sub, 4, 1)
        finally:
            pub.finish()
    assert sorted(df["i"]) == [0, 1, 2, 3]
    (r,) = rejects.itertuples()
    assert (r.file, r.line, r.offset) == (str(log), 2, 9)
    assert r.reason == f"longer than {1 << 20} bytes"
    assert len(r.text) <= 1000


@pytest.mark.timeout(120)
def test_a_one_pass_publish_with_a_huge_line_ends(tmp_path, procs):
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.write(b'{"i": 0}\n{"i": "' + b"y" * BIG + b'"}\n{"i": 2}\n{"i": 3}')  # no final newline
    with zp.Subscriber(LOCAL) as sub:
        p = procs.start("publish", str(big), "-f", "jsonl", "-e", sub.endpoints[0], "-q")
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        df = sub.collect(timeout=30)
        assert sorted(df["i"]) == [0, 2, 3]
        assert sub.rejects()[["line", "offset"]].values.tolist() == [[2, 9]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lines", [False, True], ids=["whole-file", "line-mode"])
def test_an_unclosed_quote_at_the_end_of_a_one_pass_csv_is_a_reject(tmp_path, lines):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,x\n2,"never closed\n3,y\n')
    with zp.Subscriber(LOCAL) as sub:
        extra = {"checkpoint": tmp_path / "ck.sqlite"} if lines else {}
        result = zp.publish_files([str(path)], sub.endpoints, wait_for_subscribers=1, **extra)
        df = sub.collect(timeout=30)
        assert df["a"].tolist() == [1]
        assert result["rejects"] == 1
        (r,) = sub.rejects().itertuples()
        assert (r.line, r.reason) == (3, "unclosed quote")
