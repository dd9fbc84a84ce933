"""Across hosts: network namespaces joined by a bridge, real tcp and real multicast.

Every producer and subscriber is a process on its own host (``tests/hosts.py``); they
report what they sent and received as JSON, checked here row by row.
"""

from __future__ import annotations

import json
import queue
import threading

import pytest
import zmq

from .hosts import Hosts, why_not

pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


@pytest.fixture
def hosts(request):
    made = []

    def make(n: int) -> Hosts:
        h = Hosts(n)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


class Watched:
    """A host process whose stdout lines are read as they come, on a thread of their own.

    ``latest`` skips to the newest line, so a test never acts on a stale count.
    """

    def __init__(self, p) -> None:
        self.p = p
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.seen.append(line.strip())
            self.lines.put(line.strip())

    def expect(self, word: str, timeout: float = 60) -> str:
        """The next line starting with ``word``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no {word!r} line within {timeout} s; last: {self.seen[-3:]}")
            if line.startswith(word):
                return line

    def latest(self, word: str, timeout: float = 60) -> str:
        """The newest line so far starting with ``word`` (waiting for one if there is none)."""
        while not self.lines.empty():
            self.lines.get()
        for line in reversed(self.seen):
            if line.startswith(word):
                return line
        return self.expect(word, timeout)

    def number(self, word: str, index: int = 1) -> int:
        return int(self.latest(word).split()[index])

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def report(self, timeout: float = 60) -> dict:
        self.p.wait(timeout)
        self.thread.join(timeout)
        assert self.p.returncode == 0, self.seen[-5:]
        return json.loads(self.seen[-1])


def test_three_producer_hosts_to_one_subscriber_host_over_tcp(hosts):
    net = hosts(4)
    sub = Watched(net.run(4, "collector.py", "--endpoint", f"@tcp://{net.ip(4)}:5556", "--producers", "3"))
    sub.expect("ready")
    producers = [Watched(net.run(i, "streamer.py", "--endpoint", f">tcp://{net.ip(4)}:5556",
                                 "--name", f"host{i}", "--rows", "5000", "--sends", "20", "--wait-for", "1"))
                 for i in (1, 2, 3)]
    sent = {f"host{i}": p.report()["rows"] for i, p in zip((1, 2, 3), producers, strict=True)}
    got = sub.report()["producers"]
    assert sent == {"host1": 100_000, "host2": 100_000, "host3": 100_000}
    for name, n in sent.items():
        assert got[name]["rows"] == n and got[name]["exact"], got[name]  # every row once


@pytest.mark.skipif(not zmq.has("pgm"), reason="this pyzmq's libzmq has no pgm: run `make multicast`")
def test_multicast_one_producer_host_two_subscriber_hosts(hosts):
    net = hosts(3)
    group = "239.192.77.1:5555"
    subs = [Watched(net.run(i, "collector.py", "--endpoint", f"epgm://{net.ip(i)};{group}")) for i in (2, 3)]
    for s in subs:
        s.expect("ready")
    # a modest rate (10 Mbit/s), heartbeats first: each subscriber sees the producer's
    # stream before any row is sent, so none joins late
    p = Watched(net.run(1, "streamer.py", "--endpoint", f"epgm://{net.ip(1)};{group}", "--name", "mc",
                        "--rows", "2000", "--sends", "25", "--pause", "0.02", "--heartbeat", "0.1",
                        "--multicast", json.dumps({"rate_kbps": 10_000}), "--go"))
    p.expect("ready")
    for s in subs:
        s.expect("seen")
    p.send("go")
    assert p.report()["rows"] == 50_000
    for s in subs:
        got = s.report()["producers"]["mc"]
        assert got["rows"] == 50_000 and got["exact"] and got["missed_rows"] == 0, got


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_link_down_and_up_mid_stream(hosts, policy):
    net = hosts(2)
    sub = Watched(net.run(2, "collector.py", "--endpoint", f"@tcp://{net.ip(2)}:5556", "--policy", policy))
    sub.expect("ready")
    args = ["--endpoint", f">tcp://{net.ip(2)}:5556", "--name", "far", "--rows", "1000",
            "--policy", policy, "--wait-for", "1", "--progress", "--text-bytes", "100"]
    if policy == "drop":  # little room: an outage must overflow it
        args += ["--buffer-bytes", str(1 << 20), "--frame-bytes", str(64 << 10)]
    else:
        args += ["--buffer-bytes", str(4 << 20), "--frame-bytes", str(256 << 10)]
    p = Watched(net.run(1, "streamer.py", *args))
    p.expect("ready")
    while sub.number("rows") < 20_000:
        sub.expect("rows")
    net.link(2, up=False)  # the cable is out
    start, waits0 = p.number("sent"), p.number("sent", 3)
    while True:
        line = p.expect("sent").split()
        if policy == "block" and int(line[3]) > waits0 + 5:
            break  # the producer has been waiting (half a second) instead of dropping
        if policy == "drop" and int(line[1]) - start > 200_000:
            break  # ~25 MB sent into a closed link: far more than any buffer holds
    net.link(2, up=True)
    at = sub.number("rows")
    while sub.number("rows") < at + 20_000:  # rows flow again (after TCP's retransmission)
        sub.expect("rows")
    # Let the subscriber catch up before closing: every row sent is then received or
    # reported missed (heartbeats carry the count sent), and end-of-stream goes out to an
    # idle subscriber.
    p.send("pause")
    sent = int(p.expect("paused").split()[1])
    while True:
        _, rows, _, missed = sub.latest("rows").split()
        if int(rows) + int(missed) >= sent:
            break
        sub.expect("rows")
    p.send("stop")
    result = p.report()
    assert result["rows"] == sent
    got = sub.report()["producers"]["far"]
    if policy == "block":
        assert got["rows"] == result["rows"] and got["exact"] and got["missed_rows"] == 0, got
    else:
        assert got["missed_rows"] > 0 and got["gaps"] >= 1, got          # the gap is reported
        assert got["rows"] + got["missed_rows"] == result["rows"], got   # and it is exact
        assert got["unique"]
