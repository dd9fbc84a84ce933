"""Proxy: an XSUB/XPUB forwarder so producers and subscribers only need its address.

Producers connect to the proxy's *frontend*, subscribers to its *backend*; subscriptions
flow upstream and data downstream, and either side can come and go (or the proxy can be
restarted: ZeroMQ reconnects everyone, and subscribers report what they missed).

Threads
-------
The forwarding is libzmq's own ``zmq_proxy_steerable``, run on a thread of its own
(``zpandas-proxy-N``, with the owner lifecycle of :mod:`zpandas._owner` that the
Producer and Subscriber use too), which creates, uses and closes both sockets. :meth:`Proxy.stats` and :meth:`Proxy.close` talk to
it over its control socket (``STATISTICS`` and ``TERMINATE``); the caller's end of that
inproc pair is used only under a lock. The sockets' connection events (ZeroMQ's socket
monitor) are read, logged and counted by a second thread, ``zpandas-proxy-N-monitor``,
which owns the two event sockets.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
import uuid
from typing import Literal

import zmq

from ._monitor import Monitor
from ._owner import OwnerThread
from .endpoints import Curve, EndpointsLike, attach, parse_endpoints, secure
from .errors import ClosedError

__all__ = ["Proxy"]

log = logging.getLogger("zpandas")

_ids = itertools.count(1)
_TYPICAL_FRAME = 4 << 20
_SIDES = ("frontend", "backend")
_COUNTERS = ("messages_received", "bytes_received", "messages_sent", "bytes_sent")


class Proxy:
    """Forward zpandas messages from any number of producers to any number of subscribers.

    Parameters
    ----------
    frontend : str or list of str, default "@tcp://*:5559"
        Where producers connect (``Producer(">tcp://proxy-host:5559")``).
    backend : str or list of str, default "@tcp://*:5560"
        Where subscribers connect (``Subscriber(">tcp://proxy-host:5560")``).
    policy : {"block", "drop"}, default "block"
        ``"block"``: a slow subscriber makes the proxy wait (and, behind it, producers
        whose policy is ``"block"``), so nothing is lost but everyone goes at its pace.
        ``"drop"``: the slow subscriber misses messages (it reports them), the others
        carry on.
    buffer_bytes : int, default 256 MiB
        Memory each side may queue per peer, as a high-water mark in ~4 MiB messages.
    curve : Curve, optional
        CURVE on both sides: the proxy is the server; ``allowed`` holds the public
        certificates of the producers and subscribers it admits.
    max_message_bytes : int, default 256 MiB
        A producer sending a larger frame is disconnected (``MAXMSGSIZE``).

    Examples
    --------
    >>> with zpandas.Proxy("@tcp://*:5559", "@tcp://*:5560") as proxy:  # doctest: +SKIP
    ...     print(proxy.stats())
    """

    def __init__(self, frontend: EndpointsLike = "@tcp://*:5559",
                 backend: EndpointsLike = "@tcp://*:5560", *,
                 policy: Literal["block", "drop"] = "block",
                 buffer_bytes: int = 256 << 20, curve: Curve | None = None,
                 max_message_bytes: int = 256 << 20) -> None:
        if policy not in ("block", "drop"):
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        self.policy = policy
        self._ctx = zmq.Context()
        self._control_address = f"inproc://zpandas-proxy-{uuid.uuid4().hex}"
        name = f"zpandas-proxy-{next(_ids)}"
        self._device = _Device(self._ctx, self._control_address,
                               parse_endpoints(frontend, default="bind"),
                               parse_endpoints(backend, default="bind"),
                               hwm=max(16, buffer_bytes // _TYPICAL_FRAME),
                               nodrop=policy == "block", name=name,
                               curve=curve, max_message_bytes=max_message_bytes)
        self._lock = threading.Lock()
        self._closed = False
        self._unanswered = 0   # STATISTICS requests whose reply has not been read
        self._thread = OwnerThread(name, self._device.setup, self._device.loop,
                                   self._device.teardown, self._device.failed)
        try:
            self._thread.start()  # a setup error (a port in use) is raised here
        except BaseException:
            self._ctx.term()
            self._closed = True
            raise
        self._control = self._ctx.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.connect(self._control_address)
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-monitor",
                                         daemon=True)
        self._watcher.start()

    @property
    def frontend(self) -> list[str]:
        """Addresses producers connect to (``*`` ports resolved)."""
        return list(self._device.resolved["frontend"])

    @property
    def backend(self) -> list[str]:
        """Addresses subscribers connect to (``*`` ports resolved)."""
        return list(self._device.resolved["backend"])

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self, timeout: float = 5.0) -> dict:
        """The proxy's own counters, from libzmq.

        Returns
        -------
        dict
            ``{"frontend": {...}, "backend": {...}}``, each with ``messages_received``,
            ``bytes_received``, ``messages_sent`` and ``bytes_sent``, as libzmq counts
            them (libzmq 4.3.5 counts each of a zpandas message's three parts, 4.3.4 the
            whole message); data flows frontend -> backend, subscriptions back. And
            ``peers`` (connections now) and ``auth_failures`` (CURVE handshakes refused).

        Raises
        ------
        ClosedError
            After :meth:`close`.
        TimeoutError
            If the proxy thread does not answer (it is waiting for a slow subscriber
            under ``policy="block"``).
        RuntimeError
            If the proxy thread failed; the original error is ``__cause__``.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise ClosedError("this Proxy is closed")
            if self._device.error is not None:
                raise RuntimeError(f"the proxy thread failed: {self._device.error!r}") \
                    from self._device.error
            # The control socket carries no request ids: replies to requests that timed
            # out arrive later, in order, and are read and dropped here first.
            while self._unanswered:
                if not self._control.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                    raise TimeoutError(f"the proxy did not answer within {timeout} s")
                self._control.recv_multipart()
                self._unanswered -= 1
            self._control.send(b"STATISTICS")
            self._unanswered += 1
            if not self._control.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"the proxy did not answer within {timeout} s")
            reply = self._control.recv_multipart()
            self._unanswered -= 1
        values = [struct.unpack("=Q", v)[0] for v in reply]
        out = {side: dict(zip(_COUNTERS, values[4 * i:4 * i + 4], strict=True))
               for i, side in enumerate(_SIDES)}
        with self._lock:
            for side, monitor in self._device.monitors.items():
                out[side].update(peers=monitor.peers, auth_failures=monitor.auth_failures)
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop forwarding and release both sockets. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._control.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.Again:
                pass  # no proxy thread takes it: it has failed and closed its end
            self._control.close()
        self._thread.join(timeout)
        self._device.stop_auth()
        # Terminating the context wakes the monitor watcher (ETERM in its untimed poll: it
        # closes its sockets and ends) and a proxy stuck sending to a slow subscriber,
        # which never reads TERMINATE (zmq.devices then closes its sockets).
        self._ctx.term()
        self._watcher.join()
        self._thread.join()

    def _watch(self) -> None:
        """Log and count both sockets' connection events until close()."""
        monitors = list(self._device.monitors.values())
        poller = zmq.Poller()
        for m in monitors:
            poller.register(m.socket, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())  # no tick: close() ends it by terminating the context
                with self._lock:
                    for m in monitors:
                        if m.socket in ready:
                            m.drain()
        except zmq.ContextTerminated:
            pass
        finally:
            for m in monitors:
                m.close(disable=False)  # the proxied sockets belong to the proxy thread

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<zpandas.Proxy {state} frontend={self.frontend} backend={self.backend}>"


class _Device:
    """The proxy thread's work: the XSUB and XPUB sockets and the control pair, created,
    used and closed on that thread (see :class:`~zpandas._owner.OwnerThread`)."""

    def __init__(self, ctx: zmq.Context, control: str, frontend, backend, *, hwm: int,
                 nodrop: bool, name: str, curve: Curve | None, max_message_bytes: int) -> None:
        self.name = name
        self._ctx = ctx
        self._control_address = control
        self._endpoints = {"frontend": frontend, "backend": backend}
        self._hwm = hwm
        self._nodrop = nodrop
        self.resolved: dict[str, list[str]] = {"frontend": [], "backend": []}
        self.error: BaseException | None = None
        self._curve = curve
        self._max_bytes = max_message_bytes
        self._auth = None
        self.monitors: dict[str, Monitor] = {}

    def stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def setup(self) -> list[zmq.Socket]:
        sockets = []
        try:
            front = self._ctx.socket(zmq.XSUB)
            sockets.append(front)
            back = self._ctx.socket(zmq.XPUB)
            sockets.append(back)
            control = self._ctx.socket(zmq.PAIR)
            sockets.append(control)
            for s in (back, control):
                s.linger = 0
            front.linger = 1000  # keep what a departing producer sent (see Receiver.setup)
            front.rcvhwm = back.sndhwm = self._hwm
            front.maxmsgsize = self._max_bytes
            back.maxmsgsize = 64 << 10  # it receives only subscriptions
            # Pass every subscription upstream, so producers can count subscribers.
            back.setsockopt(zmq.XPUB_VERBOSER, 1)
            if self._nodrop:
                back.setsockopt(zmq.XPUB_NODROP, 1)
            control.bind(self._control_address)
            self.monitors = {"frontend": Monitor(front, f"{self.name} frontend"),
                             "backend": Monitor(back, f"{self.name} backend")}
            self._auth = secure(front, self._ctx, self._curve, self._endpoints["frontend"])
            secure(back, self._ctx, self._curve, self._endpoints["backend"], auth=self._auth)
            self.resolved["frontend"] = attach(front, self._endpoints["frontend"])
            self.resolved["backend"] = attach(back, self._endpoints["backend"])
        except Exception:  # e.g. a port in use: re-raised by Proxy()
            for m in self.monitors.values():
                m.close()
            self.stop_auth()
            for s in sockets:
                s.close(linger=0)
            raise
        return sockets

    def loop(self, sockets: list[zmq.Socket]) -> None:
        front, back, control = sockets
        try:
            zmq.proxy_steerable(front, back, None, control)  # until TERMINATE
        except zmq.ContextTerminated:
            pass  # close() past its timeout: the proxy was stuck sending

    def failed(self, error: BaseException) -> None:
        self.error = error  # re-raised by Proxy.stats()
        log.error("%s: the proxy stopped forwarding: %r", self.name, error, exc_info=error)

    def teardown(self, sockets: list[zmq.Socket]) -> None:
        for s in sockets:
            s.close()
