"""Shared fixtures: a wait-for helper, producer processes, and a leak check on every test."""

from __future__ import annotations

import os
import subprocess
import sys
import json
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAMER = os.path.join(ROOT, "tests", "streamer.py")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _socket_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(f"{fd}->{target}")
    return out


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and not _process_wide(pid):
            kids.add(int(pid))
    return kids


def _process_wide(pid: str) -> bool:
    """multiprocessing's resource tracker and fork server: one per process, for its
    lifetime (started by the first multiprocessing user: a Dask LocalCluster, a history
    replay)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        return b"multiprocessing.resource_tracker" in cmdline or b"multiprocessing.forkserver" in cmdline
    except OSError:
        return False


def _threads() -> set[threading.Thread]:
    # Process-wide threads, started on first use and meant to outlive any one user:
    # pyzmq's zero-copy garbage collector, and Dask's offload executor (a client's).
    return {t for t in threading.enumerate()
            if "Garbage" not in type(t).__name__ and not t.name.startswith("Dask-Offload")}


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a thread, a child process or a socket behind."""
    threads, sockets, kids = _threads(), _socket_fds(), _children()
    yield
    deadline = time.monotonic() + 5
    while True:
        extra_threads = _threads() - threads
        extra_sockets = _socket_fds() - sockets
        extra_kids = _children() - kids
        if not (extra_threads or extra_sockets or extra_kids) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra_threads, f"threads left behind: {extra_threads}"
    assert not extra_kids, f"child processes left behind: {extra_kids}"
    assert not extra_sockets, f"sockets left behind: {extra_sockets}"


class Procs:
    """Start ``python -m zpandas ...`` processes; kill and reap any left at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "zpandas", *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def wait_all(self, timeout: float = 60) -> list[tuple[int, str]]:
        out = []
        for p in self.procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err))
        return out

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.cleanup()


class Streamers(Procs):
    """Start ``tests/streamer.py`` processes; kill and reap any left at the end."""

    def start(self, endpoint: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, STREAMER, "--endpoint", endpoint, *args], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("ready"), f"streamer did not start: {line!r}"
        p.endpoints = line.split()[1:]
        return p

    @staticmethod
    def tell(p: subprocess.Popen, word: str) -> None:
        p.stdin.write(word + "\n")
        p.stdin.flush()

    @staticmethod
    def result(p: subprocess.Popen, timeout: float = 60) -> dict:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def streamers():
    s = Streamers()
    yield s
    s.cleanup()
