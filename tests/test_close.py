"""Timeouts that hold: close(timeout=t) returns within about t on every owner, a second
close() finishes what a timed-out one left, and Proxy.stats() never answers with a stale reply.

The bounds asserted here are behaviour (a promised timeout), with generous slack for a
loaded CI machine - not performance targets.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pandas as pd
import pytest
import zmq

import zpandas as zp
from zpandas import wire

from .conftest import wait_for

LOCAL = "@tcp://127.0.0.1:*"
SLACK = 1.5


def _stuck_subscriber(ctx: zmq.Context, endpoint: str | None = None) -> tuple[zmq.Socket, str]:
    """A SUB that takes (almost) nothing: bound if no endpoint is given, else connected."""
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 1
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.linger = 0
    sub.subscribe(b"")
    if endpoint is None:
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        return sub, f">tcp://127.0.0.1:{port}"
    sub.connect(endpoint)
    return sub, endpoint


@pytest.mark.timeout(60)
def test_producer_close_timeout_holds_behind_a_stuck_subscriber():
    ctx = zmq.Context()
    sub, endpoint = _stuck_subscriber(ctx)
    try:
        p = zp.Producer(endpoint, buffer_bytes=1 << 20, frame_bytes=1 << 18, linger=10)
        while p.stats()["subscriptions"] < 1:
            sub.poll(10)  # a bound SUB greets its peers only inside a zmq call
        df = pd.DataFrame({"x": np.arange(100_000)})
        while p.stats()["waits"] == 0:  # until the owner waits for the full subscriber
            p.send(df)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="within 1 s"):
            p.close(timeout=1)
        elapsed = time.monotonic() - t0
        assert elapsed < 1 + SLACK, f"close(timeout=1) took {elapsed:.2f} s"
        assert p.closed and not p._thread.is_alive() and p._ctx.closed
        p.close()  # again: nothing left to do, returns at once
    finally:
        sub.close()
        ctx.term()


@pytest.mark.timeout(60)
def test_subscriber_close_after_a_timeout_finishes_the_job(monkeypatch):
    release = threading.Event()
    entered = threading.Event()
    real = zp.Subscriber._receive

    def slow(self, frames):
        entered.set()
        release.wait(30)  # a worker busy with one message (a huge aggregation, say)
        return real(self, frames)

    monkeypatch.setattr(zp.Subscriber, "_receive", slow)
    sub = zp.Subscriber(LOCAL)
    try:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, heartbeat=0) as p:
            p.send(pd.DataFrame({"a": [1]}))
        assert entered.wait(10)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="call close\\(\\) again"):
            sub.close(timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + SLACK
        assert sub.closed and sub._thread.is_alive() and not sub._ctx.closed
        release.set()
        sub.close()  # finishes: the thread is joined and the context terminated
        assert not sub._thread.is_alive() and sub._ctx.closed
        sub.close()
    finally:
        release.set()
        sub.close()


@pytest.mark.timeout(60)
def test_subscriber_close_is_bounded_when_idle():
    sub = zp.Subscriber(LOCAL)
    t0 = time.monotonic()
    sub.close(timeout=1)
    assert time.monotonic() - t0 < 1 + SLACK
    assert sub._ctx.closed


def _read_until_end_of_stream(sub: zmq.Socket) -> None:
    while True:
        assert sub.poll(30_000), "the proxy stopped forwarding"
        if wire.decode(sub.recv_multipart()).kind is wire.Kind.END_OF_STREAM:
            return


@pytest.mark.timeout(90)
def test_proxy_stats_after_a_timeout_is_never_stale():
    ctx = zmq.Context()
    proxy = zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*", policy="block",
                     buffer_bytes=1 << 20)
    sub, _ = _stuck_subscriber(ctx, proxy.backend[0])
    try:
        p = zp.Producer(proxy.frontend, wait_for_subscribers=1, frame_bytes=1 << 18,
                        buffer_bytes=1 << 20, heartbeat=0)
        df = pd.DataFrame({"x": np.arange(30_000)})  # about 240 KB a message
        stop = threading.Event()

        def flood():
            while not stop.is_set():
                p.send(df)
                p.flush()

        sender = threading.Thread(target=flood)
        sender.start()
        timeouts = 0

        def proxy_is_stuck() -> bool:
            nonlocal timeouts
            try:
                proxy.stats(timeout=0.2)
            except TimeoutError:
                timeouts += 1
                return True
            return False

        wait_for(proxy_is_stuck, timeout=30, what="the proxy to block on the stuck subscriber")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            proxy.stats(timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + SLACK
        stop.set()
        # Drain: read until the producer's end-of-stream arrives through the proxy.
        closer = threading.Thread(target=p.close)
        sender.join(30)
        closer.start()
        _read_until_end_of_stream(sub)
        closer.join(30)
        # More traffic after the drain: a reply left over from the timed-out requests
        # was computed before it, so it cannot count it.
        before = proxy.stats()
        with zp.Producer(proxy.frontend, heartbeat=0) as p2:
            wait_for(lambda: proxy.stats()["frontend"]["peers"] >= 1, what="p2 connected")
            for _ in range(5):
                p2.send(pd.DataFrame({"x": [1]}))
                p2.flush()
        _read_until_end_of_stream(sub)
        after = proxy.stats()
        assert after == proxy.stats()  # nothing moved in between
        assert after["frontend"]["messages_received"] > before["frontend"]["messages_received"]
    finally:
        stop.set()
        sub.close()
        proxy.close()
        ctx.term()


@pytest.mark.timeout(60)
def test_proxy_close_timeout_holds_when_blocked():
    ctx = zmq.Context()
    proxy = zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*", policy="block",
                     buffer_bytes=1 << 20)
    sub, _ = _stuck_subscriber(ctx, proxy.backend[0])
    try:
        p = zp.Producer(proxy.frontend, wait_for_subscribers=1, frame_bytes=1 << 18,
                        buffer_bytes=1 << 20, heartbeat=0)
        df = pd.DataFrame({"x": np.arange(30_000)})

        def stuck() -> bool:
            p.send(df)
            p.flush()
            try:
                proxy.stats(timeout=0.1)
            except TimeoutError:
                return True
            return False

        wait_for(stuck, timeout=30, what="the proxy to block")
        t0 = time.monotonic()
        proxy.close(timeout=1)
        assert time.monotonic() - t0 < 1 + SLACK + 1  # + the frontend's 1 s linger
        assert proxy.closed
        with contextlib.suppress(TimeoutError):  # not this test's subject
            p.close(timeout=0.5)
    finally:
        sub.close()
        ctx.term()
