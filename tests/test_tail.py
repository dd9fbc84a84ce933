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
