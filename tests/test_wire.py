"""Wire format v2: round trips, the byte layout, and named errors for malformed input."""

from __future__ import annotations

import struct

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zpandas import WireError, wire

TABLE = pa.table({"a": [1, 2, 3], "s": ["x", None, "zé"], "f": [0.5, None, 2.0]})
PRODUCER = bytes(range(16))


def good(**kw):
    header = wire.Header(producer=PRODUCER, seq=7, send_ns=123, total=500, name="node1:42",
                         source="/var/log/x.csv", start=10, end=99, **kw)
    return wire.encode(TABLE, topic="metrics", header=header)


def test_round_trip_data():
    msg = wire.decode(good())
    assert msg.topic == b"metrics"
    assert msg.table.equals(TABLE)
    h = msg.header
    assert (h.kind, h.producer, h.seq, h.send_ns, h.total, h.rows) == (
        wire.Kind.DATA, PRODUCER, 7, 123, 500, 3)
    assert (h.name, h.source, h.start, h.end) == ("node1:42", "/var/log/x.csv", 10, 99)
    assert h.fingerprint == wire.fingerprint(TABLE.schema)


@pytest.mark.parametrize("kind", [wire.Kind.END_OF_STREAM, wire.Kind.HEARTBEAT])
def test_round_trip_control(kind):
    frames = wire.encode(None, topic=b"t", header=wire.Header(kind=kind, seq=5))
    assert frames[2] == b""
    msg = wire.decode(frames)
    assert msg.kind is kind and msg.table is None and msg.header.seq == 5


def test_body_is_a_plain_arrow_ipc_stream():
    _, _, body = good()
    assert ipc.open_stream(body).read_all().equals(TABLE)


def test_header_layout_is_as_documented():
    _, header, _ = good()
    magic, version, kind = struct.unpack_from("<2sBB", header)
    assert (magic, version, kind) == (b"ZP", 2, 0)
    assert header[4:20] == PRODUCER
    assert struct.unpack_from("<QqQ", header, 20) == (7, 123, 500)
    assert header[44:52] == wire.fingerprint(TABLE.schema)
    assert struct.unpack_from("<Qqq", header, 52) == (3, 10, 99)
    name_len, source_len = struct.unpack_from("<HH", header, 76)
    assert header[80:80 + name_len] == b"node1:42"
    assert header[80 + name_len:] == b"/var/log/x.csv"
    assert len(header) == 80 + name_len + source_len


def test_stamp_writes_seq_time_and_total_in_place():
    _, header, body = good()
    header = bytearray(header)
    wire.stamp(header, 41, 999, 1234)
    h = wire.decode([b"t", header, body]).header
    assert (h.seq, h.send_ns, h.total, h.name) == (41, 999, 1234, "node1:42")


def _mutate(i: int, value: bytes):
    def f(frames):
        h = bytearray(frames[1])
        h[i:i + len(value)] = value
        return [frames[0], bytes(h), frames[2]]
    return f


BAD = [
    ("two frames", lambda f: f[:2], "frames"),
    ("four frames", lambda f: f + [b""], "frames"),
    ("empty header", lambda f: [f[0], b"", f[2]], "header"),
    ("short header", lambda f: [f[0], f[1][:40], f[2]], "header"),
    ("bad magic", _mutate(0, b"XX"), "magic"),
    ("unknown version", _mutate(2, b"\x01"), "version"),
    ("unknown kind", _mutate(3, b"\x09"), "kind"),
    ("string lengths lie", _mutate(76, b"\xff\x00"), "header"),
    ("name not utf-8", _mutate(80, b"\xff"), "header"),
    ("garbage body", lambda f: [f[0], f[1], b"not arrow at all"], "body"),
    ("truncated body", lambda f: [f[0], f[1], bytes(f[2])[:-20]], "body"),
    ("empty body", lambda f: [f[0], f[1], b""], "body"),
    ("fingerprint", _mutate(44, b"\x00" * 8), "fingerprint"),
    ("row count lies", _mutate(52, struct.pack("<Q", 4)), "rows"),
    ("control with body", lambda f: [f[0], f[1][:3] + b"\x01" + f[1][4:], f[2]], "body"),
]


@pytest.mark.parametrize("frames_fn,reason", [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_messages_raise_named_errors(frames_fn, reason):
    with pytest.raises(WireError) as info:
        wire.decode(frames_fn(good()))
    assert info.value.reason == reason


def test_oversize_is_rejected_before_parsing():
    with pytest.raises(WireError) as info:
        wire.decode(good(), max_bytes=100)
    assert info.value.reason == "oversize"


def test_unaligned_body_decodes():
    frames = good()
    body = bytes(frames[2])
    buf = bytearray(len(body) + 1)
    buf[1:] = body
    view = memoryview(buf)[1:]  # an odd address, as a frame inside a ZeroMQ message may be
    assert wire.decode([frames[0], frames[1], view]).table.equals(TABLE)


def test_encode_checks_its_arguments():
    with pytest.raises(ValueError):
        wire.encode(None, header=wire.Header())
    with pytest.raises(ValueError):
        wire.encode(TABLE, header=wire.Header(kind=wire.Kind.HEARTBEAT))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_decode_of_random_frames_raises_only_wire_error(frames):
    try:
        wire.decode(frames)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_decode_of_corrupted_messages_raises_only_wire_error(pos, junk):
    topic, header, body = good()
    blob = bytearray(header + bytes(body))
    pos %= len(blob)
    blob[pos:pos + len(junk)] = junk
    try:
        wire.decode([topic, bytes(blob[:len(header)]), bytes(blob[len(header):])])
    except WireError:
        pass
