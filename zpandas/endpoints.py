"""Endpoint strings: the CZMQ convention, validated before any socket exists.

``@tcp://*:5556`` binds, ``>tcp://host:5556`` connects. Without a prefix the role's
default applies (producers connect, subscribers bind). Wherever one endpoint is
accepted, a list (or one comma-separated string) is too.

Multicast - ``epgm://<interface-or-ip>;<group>:<port>`` (PGM in UDP) and ``pgm://``
(raw PGM, needs root) - is the one-line switch for fan-out on a trusted segment: both
sides *connect* to the group. It needs a libzmq built with OpenPGM (``make multicast``).

CURVE security (:class:`Curve`) is set up here too: a socket that binds is a CURVE
server that admits the clients whose public certificates are in ``allowed``; a socket
that connects is a client that knows the server's public key (ZeroMQ's "ironhouse").
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Union

import zmq

from .errors import EndpointError, SecurityWarning

__all__ = ["Endpoint", "parse_endpoints", "attach", "EndpointsLike", "Curve", "secure",
           "MULTICAST_DEFAULTS"]

#: Socket options for pgm/epgm endpoints: ``rate_kbps`` (ZMQ_RATE; libzmq's 100 kbit/s
#: default is far too slow for rows), ``recovery_ms`` (ZMQ_RECOVERY_IVL: how long
#: receivers can ask for a repair), ``buffer_bytes`` (kernel send/receive buffers) and
#: ``hops`` (ZMQ_MULTICAST_HOPS: 1 keeps it on the local segment).
MULTICAST_DEFAULTS = {"rate_kbps": 100_000, "recovery_ms": 10_000, "buffer_bytes": 4 << 20,
                      "hops": 1}
_EPGM = re.compile(r"^(?P<iface>[^;]+);(?P<group>[0-9.]+):(?P<port>\d{1,5})$")

EndpointsLike = Union[str, Iterable[str]]
Action = Literal["bind", "connect"]

_SUPPORTED = ("tcp", "ipc", "epgm", "pgm")
MULTICAST = ("epgm", "pgm")
_TCP = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>\*|\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    """One parsed endpoint: what to do (bind or connect) and the ZeroMQ address."""

    action: Action
    address: str

    @property
    def multicast(self) -> bool:
        return self.address.split("://", 1)[0] in MULTICAST

    @property
    def on_this_machine(self) -> bool:
        """Its peers can only be on this machine: ipc://, inproc://, or tcp:// on a
        loopback address (``127.x.x.x``, ``::1``, ``localhost``)."""
        transport, _, rest = self.address.partition("://")
        if transport in ("ipc", "inproc"):
            return True
        if transport != "tcp":
            return False
        host = rest.rsplit(":", 1)[0].strip("[]")
        if ";" in host:        # tcp://source;destination: where the peers are
            host = host.split(";", 1)[1]
        return host == "localhost" or host == "::1" or host.startswith("127.")

    def __str__(self) -> str:
        return ("@" if self.action == "bind" else ">") + self.address


def parse_endpoints(spec: EndpointsLike, *, default: Action) -> list[Endpoint]:
    """Parse one endpoint, a comma-separated string of them, or a list.

    Parameters
    ----------
    spec : str or iterable of str
        ``"@tcp://*:5556"``, ``">tcp://node1:5556,>tcp://node2:5556"``, ``["ipc:///tmp/x"]``...
    default : {"bind", "connect"}
        The action for endpoints written without ``@`` or ``>``.

    Raises
    ------
    EndpointError
        Naming the offending endpoint: empty, malformed, or an unsupported transport.
    """
    if isinstance(spec, (bytes, bytearray)):
        spec = spec.decode()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if not all(isinstance(i, str) for i in items):
        raise TypeError(f"endpoints must be strings, got {spec!r}")
    parsed = [_parse_one(item.strip(), default) for item in items]
    if not parsed:
        raise EndpointError("no endpoint given")
    return parsed


def _parse_one(text: str, default: Action) -> Endpoint:
    action: Action = default
    addr = text
    if addr[:1] == "@":
        action, addr = "bind", addr[1:]
    elif addr[:1] == ">":
        action, addr = "connect", addr[1:]
    if not addr:
        raise EndpointError(f"empty endpoint in {text!r}")
    transport, sep, rest = addr.partition("://")
    if not sep:
        raise EndpointError(f"endpoint {text!r} has no transport; write e.g. 'tcp://host:5556'")
    transport = transport.lower()
    if transport in MULTICAST:
        if not zmq.has("pgm"):
            raise EndpointError(
                f"endpoint {text!r}: this pyzmq's libzmq has no multicast ({transport}://). "
                "PyPI's pyzmq wheels are built without it; on Debian/Ubuntu run `make multicast` "
                "(apt-get install libzmq3-dev, then PYZMQ_NO_BUNDLE=1 pip install --no-binary "
                "pyzmq --no-cache-dir pyzmq), or use tcp://")
        m = _EPGM.match(rest)
        if not m:
            raise EndpointError(f"endpoint {text!r}: expected {transport}://<interface-or-ip>;"
                                "<group>:<port>, e.g. epgm://10.0.0.5;239.192.1.1:5555")
        if not 224 <= int(m["group"].split(".")[0]) <= 239:
            raise EndpointError(f"endpoint {text!r}: {m['group']} is not a multicast group "
                                "(224.0.0.0 - 239.255.255.255)")
        # Multicast has no binding side: publishers and subscribers both join the group.
        return Endpoint("connect", f"{transport}://{rest}")
    if transport == "inproc":
        raise EndpointError(f"endpoint {text!r}: inproc:// only reaches sockets of the same "
                            "ZeroMQ context, and every zpandas object owns its own; use ipc:// instead")
    if transport not in _SUPPORTED:
        raise EndpointError(f"endpoint {text!r}: unknown transport {transport!r}; "
                            f"supported: {', '.join(_SUPPORTED)}")
    if transport == "tcp":
        m = _TCP.match(rest)
        if not m:
            raise EndpointError(f"endpoint {text!r}: expected tcp://HOST:PORT")
        port = m["port"]
        if port != "*" and not 0 <= int(port) < 65536:
            raise EndpointError(f"endpoint {text!r}: port {port} is out of range")
        if action == "connect" and (port in ("*", "0") or m["host"] == "*"):
            raise EndpointError(f"endpoint {text!r}: cannot connect to a wildcard address "
                                "(port * or 0 means any free port, for binding)")
        if port == "0":  # bind to any free port, as with sockets: ZeroMQ spells it *
            rest = f"{m['host']}:*"
    elif not rest:
        raise EndpointError(f"endpoint {text!r}: ipc:// needs a path")
    return Endpoint(action, f"{transport}://{rest}")


def attach(socket: zmq.Socket, endpoints: list[Endpoint], *,
           multicast: dict | None = None) -> list[str]:
    """Bind or connect ``socket`` to each endpoint; return the resolved addresses.

    A bind to port ``*`` resolves to the port the system chose, so the result can be
    handed to peers. Errors (address in use, unknown host) are re-raised as
    :class:`EndpointError` naming the endpoint. With a multicast endpoint, the
    :data:`MULTICAST_DEFAULTS` (updated by ``multicast``) are applied first.
    """
    if any(ep.multicast for ep in endpoints):
        opts = {**MULTICAST_DEFAULTS, **(multicast or {})}
        unknown = set(opts) - set(MULTICAST_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown multicast option(s) {sorted(unknown)}; "
                             f"known: {sorted(MULTICAST_DEFAULTS)}")
        socket.rate = int(opts["rate_kbps"])
        socket.recovery_ivl = int(opts["recovery_ms"])
        socket.sndbuf = socket.rcvbuf = int(opts["buffer_bytes"])
        socket.multicast_hops = int(opts["hops"])
    resolved = []
    for ep in endpoints:
        try:
            if ep.action == "bind":
                socket.bind(ep.address)
                resolved.append(socket.get(zmq.LAST_ENDPOINT).decode())
            else:
                socket.connect(ep.address)
                resolved.append(ep.address)
        except zmq.ZMQError as e:
            raise EndpointError(f"cannot {ep.action} {ep}: {e}") from e
    return resolved


@dataclass(frozen=True)
class Curve:
    """CURVE security for a zpandas socket: authenticated and encrypted (ironhouse).

    Make certificates with ``zpandas keygen DIR --name NAME`` (or
    ``zmq.auth.create_certificates``): ``NAME.key`` is public, ``NAME.key_secret`` is
    secret (readable by its owner only).

    Parameters
    ----------
    certificate : str or path
        This side's *secret* certificate (``NAME.key_secret``).
    server_key : str or path, optional
        For a socket that connects: the server's *public* certificate (``NAME.key``).
    allowed : str or path, optional
        For a socket that binds: a folder of the public certificates of the clients it
        admits. Anyone else is refused (and the refusal is logged and counted).
    """

    certificate: str | os.PathLike
    server_key: str | os.PathLike | None = None
    allowed: str | os.PathLike | None = None


def secure(socket: zmq.Socket, ctx: zmq.Context, curve: Curve | None,
           endpoints: list[Endpoint], *, auth=None):
    """Apply ``curve`` to ``socket`` before it binds or connects.

    Returns the started ``zmq.auth.thread.ThreadAuthenticator`` of a server socket (stop
    it before closing the context), or None. ``auth``: one already running in ``ctx``
    (a context has one ZAP handler, serving all its server sockets).

    Raises
    ------
    ValueError
        A socket that both binds and connects, a missing key, or a public certificate
        given where the secret one is needed.
    """
    if curve is None:
        return None
    if not zmq.has("curve"):
        raise EndpointError("this libzmq was built without CURVE security")
    unicast = [ep for ep in endpoints if not ep.multicast]
    if len(unicast) < len(endpoints):
        warnings.warn("libzmq does not apply CURVE to multicast (pgm/epgm): those endpoints are "
                      "neither authenticated nor encrypted. Use multicast only on a segment no "
                      "unauthorized party can join.", SecurityWarning, stacklevel=3)
    if not unicast:
        return None
    actions = {ep.action for ep in unicast}
    if len(actions) > 1:
        raise ValueError("with CURVE a socket is a server (binds) or a client (connects), not both")
    from zmq.auth import load_certificate
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = load_certificate(os.fspath(curve.certificate))
    if secret is None:
        raise ValueError(f"{curve.certificate} is a public certificate: give the .key_secret file")
    socket.curve_publickey, socket.curve_secretkey = public, secret
    if actions == {"connect"}:
        if curve.server_key is None:
            raise ValueError("a socket that connects with CURVE needs server_key= "
                             "(the server's public certificate)")
        socket.curve_serverkey = load_certificate(os.fspath(curve.server_key))[0]
        return None
    if curve.allowed is None or not os.path.isdir(curve.allowed):
        raise ValueError("a socket that binds with CURVE needs allowed= (a folder of the "
                         f"clients' public certificates); got {curve.allowed!r}")
    if auth is None:
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("zpandas.auth"))
        auth.start()
        auth.configure_curve(domain="*", location=os.fspath(curve.allowed))
    socket.curve_server = True
    return auth
