"""Across hosts: network namespaces joined by a bridge, real tcp and real multicast.

Every producer and subscriber is a process on its own host (``tests/hosts.py``); they
report what they sent and received as JSON, checked here row by row.
"""

from __future__ import annotations

import json

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


def expect(p, word: str) -> str:
    """Read ``p``'s stdout until a line starting with ``word``; return it."""
    while True:
        line = p.stdout.readline()
        assert line, f"process ended before saying {word!r}"
        if line.startswith(word):
            return line.strip()


def report(p, timeout: float = 60) -> dict:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_three_producer_hosts_to_one_subscriber_host_over_tcp(hosts):
    net = hosts(4)
    sub = net.run(4, "collector.py", "--endpoint", f"@tcp://{net.ip(4)}:5556", "--producers", "3")
    expect(sub, "ready")
    producers = [net.run(i, "streamer.py", "--endpoint", f">tcp://{net.ip(4)}:5556",
                         "--name", f"host{i}", "--rows", "5000", "--sends", "20", "--wait-for", "1")
                 for i in (1, 2, 3)]
    sent = {f"host{i}": report(p)["rows"] for i, p in zip((1, 2, 3), producers, strict=True)}
    got = report(sub)["producers"]
    assert sent == {"host1": 100_000, "host2": 100_000, "host3": 100_000}
    for name, n in sent.items():
        assert got[name]["rows"] == n and got[name]["exact"], got[name]  # every row once


@pytest.mark.skipif(not zmq.has("pgm"), reason="this pyzmq's libzmq has no pgm: run `make multicast`")
def test_multicast_one_producer_host_two_subscriber_hosts(hosts):
    net = hosts(3)
    group = "239.192.77.1:5555"
    subs = [net.run(i, "collector.py", "--endpoint", f"epgm://{net.ip(i)};{group}") for i in (2, 3)]
    for s in subs:
        expect(s, "ready")
    # a modest rate (10 Mbit/s), heartbeats first: each subscriber sees the producer's
    # stream before any row is sent, so none joins late
    p = net.run(1, "streamer.py", "--endpoint", f"epgm://{net.ip(1)};{group}", "--name", "mc",
                "--rows", "2000", "--sends", "25", "--pause", "0.02", "--heartbeat", "0.1",
                "--multicast", json.dumps({"rate_kbps": 10_000}), "--go")
    expect(p, "ready")
    for s in subs:
        expect(s, "seen")
    p.stdin.write("go\n")
    p.stdin.flush()
    assert report(p)["rows"] == 50_000
    for s in subs:
        got = report(s)["producers"]["mc"]
        assert got["rows"] == 50_000 and got["exact"] and got["missed_rows"] == 0, got


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_link_down_and_up_mid_stream(hosts, policy):
    net = hosts(2)
    sub = net.run(2, "collector.py", "--endpoint", f"@tcp://{net.ip(2)}:5556", "--policy", policy)
    expect(sub, "ready")
    args = ["--endpoint", f">tcp://{net.ip(2)}:5556", "--name", "far", "--rows", "1000",
            "--policy", policy, "--wait-for", "1", "--progress", "--text-bytes", "100"]
    if policy == "drop":  # little room: an outage must overflow it
        args += ["--buffer-bytes", str(1 << 20), "--frame-bytes", str(64 << 10)]
    else:
        args += ["--buffer-bytes", str(4 << 20), "--frame-bytes", str(256 << 10)]
    p = net.run(1, "streamer.py", *args)
    expect(p, "ready")
    while int(expect(sub, "rows").split()[1]) < 20_000:
        pass
    net.link(2, up=False)  # the cable is out
    _, start, _, waits0 = expect(p, "sent").split()
    start, waits0 = int(start), int(waits0)
    while True:
        _, sent, _, waits = expect(p, "sent").split()
        if policy == "block" and int(waits) > waits0 + 5:
            break  # the producer has been waiting (half a second) instead of dropping
        if policy == "drop" and int(sent) - start > 200_000:
            break  # ~25 MB sent into a closed link: far more than any buffer holds
    net.link(2, up=True)
    at = int(expect(sub, "rows").split()[1])
    while int(expect(sub, "rows").split()[1]) < at + 20_000:
        pass  # rows flow again
    p.stdin.write("stop\n")
    p.stdin.flush()
    result = report(p)
    got = report(sub)["producers"]["far"]
    if policy == "block":
        assert got["rows"] == result["rows"] and got["exact"] and got["missed_rows"] == 0, got
    else:
        assert got["missed_rows"] > 0 and got["gaps"] >= 1, got          # the gap is reported
        assert got["rows"] + got["missed_rows"] == result["rows"], got   # and it is exact
        assert got["unique"]
