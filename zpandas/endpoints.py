"""Endpoint strings: the CZMQ convention, validated before any socket exists.

``@tcp://*:5556`` binds, ``>tcp://host:5556`` connects. Without a prefix the role's
default applies (producers connect, subscribers bind). Wherever one endpoint is
accepted, a list (or one comma-separated string) is too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal, Union

import zmq

from .errors import EndpointError

__all__ = ["Endpoint", "parse_endpoints", "attach", "EndpointsLike"]

EndpointsLike = Union[str, Iterable[str]]
Action = Literal["bind", "connect"]

_SUPPORTED = ("tcp", "ipc")
_TCP = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>\*|\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    """One parsed endpoint: what to do (bind or connect) and the ZeroMQ address."""

    action: Action
    address: str

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
    if transport in ("pgm", "epgm"):
        raise EndpointError(f"endpoint {text!r}: multicast ({transport}://) is not supported yet; "
                            f"use tcp:// or ipc://")
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
        if port != "*" and not 0 < int(port) < 65536:
            raise EndpointError(f"endpoint {text!r}: port {port} is out of range")
        if action == "connect" and (port == "*" or m["host"] == "*"):
            raise EndpointError(f"endpoint {text!r}: cannot connect to a wildcard address")
    elif not rest:
        raise EndpointError(f"endpoint {text!r}: ipc:// needs a path")
    return Endpoint(action, f"{transport}://{rest}")


def attach(socket: zmq.Socket, endpoints: list[Endpoint]) -> list[str]:
    """Bind or connect ``socket`` to each endpoint; return the resolved addresses.

    A bind to port ``*`` resolves to the port the system chose, so the result can be
    handed to peers. Errors (address in use, unknown host) are re-raised as
    :class:`EndpointError` naming the endpoint.
    """
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
