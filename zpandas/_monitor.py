"""Connection events of a socket (ZeroMQ's socket monitor), logged and counted.

Used on the thread that owns the socket: the owner polls :attr:`Monitor.socket` with its
own and calls :meth:`Monitor.drain` when it is readable. (The Proxy's sockets are owned
by libzmq's proxy loop, so a thread of its own does the polling there.) Events are logged on the
``zpandas`` logger (INFO for connections, WARNING for failed handshakes), which the CLI
shows and a notebook can turn on with ``logging.basicConfig(level="INFO")``.
"""

from __future__ import annotations

import collections
import logging

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("zpandas")

_EVENTS = {
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (protocol)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake failed (authentication)",
    zmq.EVENT_CONNECT_RETRIED: "connect retried",
}
_MASK = 0
for _event in _EVENTS:
    _MASK |= _event


class Monitor:
    """Watch ``sock``'s connection events; ``owner`` names the socket in log lines."""

    def __init__(self, sock: zmq.Socket, owner: str) -> None:
        self._sock = sock
        self._owner = owner
        self.socket = sock.get_monitor_socket(_MASK)
        self.peers = 0
        self.events: collections.Counter[str] = collections.Counter()
        # endpoints that failed to connect since they last connected: said once each,
        # not at every retry (ZeroMQ retries every 100 ms)
        self._failing: set[str] = set()

    @property
    def auth_failures(self) -> int:
        """Handshakes refused: wrong or unknown key, or a plaintext peer at a CURVE socket."""
        return sum(n for what, n in self.events.items() if what.startswith("handshake failed"))

    def drain(self) -> None:
        """Read and log every event waiting; never blocks."""
        while True:
            try:
                event = recv_monitor_message(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            what = _EVENTS.get(event["event"])
            if what is None:
                continue
            self.events[what] += 1
            endpoint = event["endpoint"].decode("utf-8", "replace")
            if event["event"] == zmq.EVENT_CONNECT_RETRIED:
                if endpoint not in self._failing:
                    self._failing.add(endpoint)
                    log.warning("%s: cannot connect to %s yet (nothing listening there, or its "
                                "host name does not resolve); retrying", self._owner, endpoint)
            elif event["event"] in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                self.peers += 1
                if endpoint in self._failing:
                    self._failing.discard(endpoint)
                    log.warning("%s: connected to %s", self._owner, endpoint)
                log.info("%s: peer %s on %s", self._owner, what, endpoint)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.peers = max(0, self.peers - 1)
                log.info("%s: peer disconnected from %s", self._owner, endpoint)
            else:
                log.warning("%s: %s on %s", self._owner, what, endpoint)

    def close(self, disable: bool = True) -> None:
        """Stop monitoring and close the event socket (before the owner closes ``sock``).

        ``disable=False`` only closes the event socket: for a thread that does not own
        ``sock`` (libzmq stops the monitor itself when ``sock`` closes).
        """
        if disable:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self.socket.close(linger=0)
