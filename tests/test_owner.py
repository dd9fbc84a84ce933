"""The socket-owner lifecycle shared by the Producer and the Subscriber (zpandas._owner)."""

from __future__ import annotations

import threading

import pytest
import zmq

import zpandas as zp
from zpandas._owner import OwnerThread


def test_a_setup_error_is_raised_by_start_with_the_thread_ended():
    calls = []
    owner = OwnerThread("zpandas-test-1", setup=lambda: 1 / 0, loop=calls.append,
                        teardown=calls.append, failed=calls.append)
    with pytest.raises(ZeroDivisionError):
        owner.start()
    assert not owner.is_alive() and calls == []   # neither loop nor teardown: setup cleans up


def test_loop_and_teardown_run_on_the_owner_thread_and_a_loop_error_is_handed_over():
    seen, stop = [], threading.Event()

    def loop(state):
        seen.append(("loop", state, threading.current_thread().name))
        stop.wait(10)
        raise RuntimeError("broken")

    owner = OwnerThread("zpandas-test-2", setup=lambda: "sockets", loop=loop,
                        teardown=lambda state: seen.append(("teardown", state, threading.current_thread().name)),
                        failed=lambda e: seen.append(("failed", repr(e), threading.current_thread().name)))
    owner.start()
    assert seen == [("loop", "sockets", "zpandas-test-2")]   # set up before start() returned
    stop.set()
    assert owner.join(10)
    assert seen[1:] == [("failed", "RuntimeError('broken')", "zpandas-test-2"),
                        ("teardown", "sockets", "zpandas-test-2")]


@pytest.mark.parametrize("make", [
    lambda port: zp.Producer(f"@tcp://127.0.0.1:{port}"),        # in use
    lambda port: zp.Subscriber(f"@tcp://127.0.0.1:{port}"),      # in use
    lambda port: zp.Subscriber("@ipc:///no/such/dir/socket"),
])
def test_owners_raise_their_setup_error_and_leave_no_thread(make):
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PULL)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        before = set(threading.enumerate())
        with pytest.raises((zmq.ZMQError, ValueError, OSError)):
            make(port)
        assert set(threading.enumerate()) <= before
    finally:
        taken.close(linger=0)
        ctx.term()


def test_a_proxy_whose_thread_fails_says_so_on_the_next_call(monkeypatch, caplog):
    def broken(*sockets):
        raise RuntimeError("forwarding broke")

    monkeypatch.setattr(zmq, "proxy_steerable", broken)
    with zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") as proxy:
        proxy._thread.join(10)
        with pytest.raises(RuntimeError, match="proxy thread failed") as info:
            proxy.stats()
        assert isinstance(info.value.__cause__, RuntimeError)
    assert any("stopped forwarding" in r.getMessage() for r in caplog.records)
