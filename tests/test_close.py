"""Timeouts that hold: close(timeout=t) returns within about t on every owner, a second
close() finishes what a timed-out one left, and Proxy.stats() never answers with a stale reply.

The bounds asserted here are behaviour (a promised timeout), with generous slack for a
loaded CI machine - not performance targets.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
import zmq

import zpandas as zp
from zpandas._receiver import Receiver
from zpandas import wire

from .conftest import wait_for

LOCAL = "@tcp://127.0.0.1:*"
SLACK = 1.5


def _flood(p: zp.Producer, df: pd.DataFrame, stop: threading.Event) -> threading.Thread:
    """A thread sending ``df`` until ``stop``, or until the producer is closed under it.

    A send blocked behind a stuck subscriber returns only when the producer is closed:
    it then raises ClosedError, kept in the thread's ``error``.
    """
    def run():
        try:
            while not stop.is_set():
                p.send(df)
                p.flush()
        except Exception as e:  # noqa: BLE001 - examined by the test
            thread.error = e

    thread = threading.Thread(target=run, name="flood")
    thread.error = None
    thread.start()
    return thread


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
        stop = threading.Event()
        sender = _flood(p, pd.DataFrame({"x": np.arange(100_000)}), stop)
        # until the owner has waited for the full subscriber long enough that every
        # buffer on the way (pipes, the kernel's) is full
        wait_for(lambda: p.stats()["blocked_s"] > 0.5, timeout=30, what="the producer to block")
        stop.set()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="within 1 s"):
            p.close(timeout=1)
        elapsed = time.monotonic() - t0
        sender.join(10)
        assert not sender.is_alive()
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
    real = Receiver._receive

    def slow(self, frames):
        entered.set()
        release.wait(30)  # a worker busy with one message (a huge aggregation, say)
        return real(self, frames)

    monkeypatch.setattr(Receiver, "_receive", slow)
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


@contextlib.contextmanager
def _blocked_proxy():
    """A Proxy (policy "block") stuck sending to a subscriber that reads nothing.

    Yields the proxy, that subscriber's socket, the producer flooding it and a function
    that stops the flood (and waits for its thread: someone must be reading by then, or
    the proxy must be closed); everything is closed afterwards.
    """
    ctx = zmq.Context()
    proxy = zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*", policy="block",
                     buffer_bytes=1 << 20)
    sub, _ = _stuck_subscriber(ctx, proxy.backend[0])
    p = zp.Producer(proxy.frontend, wait_for_subscribers=1, frame_bytes=1 << 18,
                    buffer_bytes=1 << 20, heartbeat=0)
    stop = threading.Event()
    sender = _flood(p, pd.DataFrame({"x": np.arange(30_000)}), stop)  # ~240 KB a message

    def stuck() -> bool:
        try:
            proxy.stats(timeout=0.2)
        except TimeoutError:
            return True
        return False

    def stop_flood() -> None:
        # (before p.close(): closing a Producer while another thread is inside its
        # send() ends that thread with ContextTerminated - issue 13)
        stop.set()
        sender.join(30)
        assert not sender.is_alive()

    try:
        wait_for(stuck, timeout=30, what="the proxy to block on the stuck subscriber")
        yield proxy, sub, p, stop_flood
    finally:
        stop.set()
        proxy.close()
        with contextlib.suppress(TimeoutError):
            p.close(timeout=1)  # ends a send still blocked in the flood
        sender.join(30)
        sub.close()
        ctx.term()


@pytest.mark.timeout(90)
def test_proxy_stats_after_a_timeout_is_never_stale():
    with _blocked_proxy() as (proxy, sub, p, stop_flood):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            proxy.stats(timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + SLACK
        # Drain: read until the producer's end-of-stream arrives through the proxy.
        reader = threading.Thread(target=_read_until_end_of_stream, args=(sub,))
        reader.start()
        stop_flood()
        p.close()
        reader.join(30)
        assert not reader.is_alive()
        # More traffic after the drain: a reply left over from the timed-out requests
        # was computed before it, so it cannot count it.
        before = proxy.stats()
        with zp.Producer(proxy.frontend, heartbeat=0) as p2:
            wait_for(lambda: proxy.stats()["frontend"]["peers"] >= 1, what="p2 connected")
            for _ in range(5):
                p2.send(pd.DataFrame({"x": [1]}))
                p2.flush()
        _read_until_end_of_stream(sub)
        # p2's disconnect reaches the proxy's monitor after its last message: seen first
        wait_for(lambda: proxy.stats()["frontend"]["peers"] == 0, what="p2 gone")
        after = proxy.stats()
        assert after == proxy.stats()  # nothing moved in between
        assert after["frontend"]["messages_received"] > before["frontend"]["messages_received"]


@pytest.mark.timeout(60)
def test_proxy_close_timeout_holds_when_blocked():
    with _blocked_proxy() as (proxy, _, _, _):
        t0 = time.monotonic()
        proxy.close(timeout=1)
        assert time.monotonic() - t0 < 1 + SLACK + 1  # + the frontend's 1 s linger
        assert proxy.closed


@pytest.mark.timeout(60)
def test_close_while_another_thread_is_blocked_in_send_ends_that_send_with_closed_error():
    """The blocked thread's socket is closed under its lock, never under its send."""
    ctx = zmq.Context()
    sub, endpoint = _stuck_subscriber(ctx)
    try:
        p = zp.Producer(endpoint, buffer_bytes=1 << 20, frame_bytes=1 << 18)
        while p.stats()["subscriptions"] < 1:
            sub.poll(10)
        sender = _flood(p, pd.DataFrame({"x": np.arange(100_000)}), threading.Event())
        wait_for(lambda: p.stats()["blocked_s"] > 0.5, timeout=30, what="the producer to block")
        with pytest.raises(TimeoutError):
            p.close(timeout=1)
        sender.join(5)
        assert not sender.is_alive()
        assert isinstance(sender.error, zp.ClosedError), repr(sender.error)
    finally:
        sub.close()
        ctx.term()


def test_a_thousand_short_lived_sending_threads_leave_no_sockets_behind():
    """Hand-offs are a queue and a doorbell, not a socket per calling thread: threads
    that send once and end leave nothing open (it was one ZeroMQ socket, and its file
    descriptor, per thread until close(); 1,020 threads ran out of file descriptors)."""
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1, flush_interval=0) as p:
            before = fds()
            for k in range(1000):
                t = threading.Thread(target=p.send, args=(pd.DataFrame({"k": [k]}),))
                t.start()
                t.join()
            p.flush()
            assert fds() - before < 10
        df = sub.collect(timeout=60)
    assert sorted(df["k"]) == list(range(1000))


def test_a_producer_that_cannot_start_leaves_no_file_descriptor_behind():
    with zp.Producer("@tcp://127.0.0.1:*") as taken:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises(zp.EndpointError):
                zp.Producer("@" + taken.endpoints[0])  # the port is in use
        assert len(os.listdir("/proc/self/fd")) - before < 5
