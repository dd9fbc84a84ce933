"""Endpoint parsing: the CZMQ @/> convention, lists, and clear errors."""

import pytest
import zmq

from zpandas import EndpointError
from zpandas.endpoints import Endpoint, parse_endpoints

CASES = [
    ("@tcp://*:5556", "connect", [Endpoint("bind", "tcp://*:5556")]),
    (">tcp://node1:5556", "bind", [Endpoint("connect", "tcp://node1:5556")]),
    ("tcp://127.0.0.1:5556", "connect", [Endpoint("connect", "tcp://127.0.0.1:5556")]),
    ("tcp://127.0.0.1:5556", "bind", [Endpoint("bind", "tcp://127.0.0.1:5556")]),
    ("@tcp://127.0.0.1:*", "connect", [Endpoint("bind", "tcp://127.0.0.1:*")]),
    (">tcp://[::1]:5556", "bind", [Endpoint("connect", "tcp://[::1]:5556")]),
    ("ipc:///tmp/zp.sock", "bind", [Endpoint("bind", "ipc:///tmp/zp.sock")]),
    (">tcp://a:1, >tcp://b:2", "bind", [Endpoint("connect", "tcp://a:1"), Endpoint("connect", "tcp://b:2")]),
    (["@tcp://*:1", ">ipc:///x"], "bind", [Endpoint("bind", "tcp://*:1"), Endpoint("connect", "ipc:///x")]),
]


@pytest.mark.parametrize("spec,default,expected", CASES)
def test_parse(spec, default, expected):
    assert parse_endpoints(spec, default=default) == expected


BAD = [
    ("", "empty"),
    ("@", "empty"),
    ("localhost:5556", "no transport"),
    ("udp://1.2.3.4:5", "unknown transport 'udp'"),
    ("inproc://x", "inproc"),
    ("tcp://host", "tcp://HOST:PORT"),
    ("tcp://host:99999", "out of range"),
    (">tcp://*:5556", "wildcard"),
    (">tcp://127.0.0.1:*", "wildcard"),
    (">tcp://127.0.0.1:0", "wildcard"),
    ("ipc://", "needs a path"),
    ([], "no endpoint"),
]


@pytest.mark.parametrize("spec,words", BAD)
def test_errors_name_the_endpoint(spec, words):
    with pytest.raises(EndpointError) as info:
        parse_endpoints(spec, default="connect")
    assert words in str(info.value)
    if isinstance(spec, str) and spec:
        assert repr(spec) in str(info.value) or spec in str(info.value)


def test_endpoint_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_endpoints("nope", default="bind")


def test_multicast_endpoints_when_libzmq_has_pgm(monkeypatch):
    monkeypatch.setattr(zmq, "has", lambda what: True)
    for spec in ("epgm://eth0;239.192.1.1:5555", "@epgm://10.0.0.5;239.192.1.1:5555",
                 ">pgm://10.0.0.5;239.1.2.3:7000"):
        (ep,) = parse_endpoints(spec, default="bind")
        assert ep.action == "connect" and ep.multicast  # both sides join the group
    with pytest.raises(EndpointError, match="not a multicast group"):
        parse_endpoints("epgm://eth0;10.1.2.3:5555", default="connect")
    with pytest.raises(EndpointError, match="interface-or-ip>;<group>:<port>"):
        parse_endpoints("epgm://eth0:5555", default="connect")


def test_multicast_without_pgm_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(zmq, "has", lambda what: what != "pgm")
    with pytest.raises(EndpointError, match="make multicast"):
        parse_endpoints("epgm://eth0;239.192.1.1:5555", default="connect")


def test_bind_to_port_0_means_any_free_port():
    """As with sockets: @tcp://host:0 binds a free port, and endpoints name it."""
    import pandas as pd

    import zpandas as zp
    with zp.Subscriber("@tcp://127.0.0.1:0") as sub:
        (resolved,) = sub.endpoints
        assert resolved.startswith("tcp://127.0.0.1:") and not resolved.endswith((":0", ":*"))
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(pd.DataFrame({"a": [1]}))
        assert sub.collect(timeout=30)["a"].tolist() == [1]
