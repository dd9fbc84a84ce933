"""Hostile bodies: every one is refused by ``wire.decode`` with a named reason, before it is accepted.

Each case builds a body as an attacker would (raw buffers that Arrow's writer ships as
they are) and checks the reason. The hypothesis tests then throw arbitrary bytes and
byte flips at ``decode``: it either raises ``WireError`` or returns a table that
converts to pandas - nothing else, ever.
"""

from __future__ import annotations

import datetime
import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpandas import WireError, _validate, wire
from zpandas.sources.lines import REJECT_SCHEMA

PRODUCER = bytes(range(16))


def frames_of(table: pa.Table, *, kind=wire.Kind.DATA, start=-1, end=-1, compression=None,
              metadata=None) -> list[bytes]:
    """Frames of a message carrying ``table`` exactly as given (no validation on the way)."""
    if metadata is not None:
        table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression=compression)
    with ipc.new_stream(sink, table.schema, options=options) as w:
        w.write_table(table)
    header = wire.Header(kind=kind, producer=PRODUCER, name="mallory", source="s" if start >= 0 else "",
                         rows=table.num_rows, fingerprint=wire.fingerprint(table.schema),
                         start=start, end=end)
    return [b"t", header.pack(), sink.getvalue().to_pybytes()]


def string_array(offsets, data: bytes, typ=pa.string()) -> pa.Array:
    width = np.int64 if typ == pa.large_string() else np.int32
    return pa.Array.from_buffers(typ, len(offsets) - 1,
                                 [None, pa.py_buffer(np.array(offsets, width).tobytes()),
                                  pa.py_buffer(data)])


def null_array(n: int) -> pa.Array:
    return pa.Array.from_buffers(pa.null(), n, [None])  # pa.nulls() would allocate a bitmap


def reason(frames) -> str:
    with pytest.raises(WireError) as e:
        wire.decode(frames)
    return e.value.reason


def table(**cols) -> pa.Table:
    return pa.table(cols)


CASES = {
    # Arrow's cheap validate() checks only the first and last offsets: the middle ones
    # are what an attacker sets, and to_pandas then reads out of bounds
    "string offsets past the data": ("invalid", table(s=string_array([0, 4096, 4], b"abcd"))),
    "string offsets descending": ("invalid", table(s=string_array([0, 3, 1], b"abcd"))),
    "large_string offsets past the data": (
        "invalid", table(s=string_array([0, 1 << 40, 4], b"abcd", pa.large_string()))),
    "invalid UTF-8": ("invalid", table(s=string_array([0, 2, 4], b"ab\xff\xfe"))),
    "UTF-8 cut inside a character": ("invalid", table(s=string_array([0, 1, 2], "é".encode()))),
    "dictionary index out of range": ("invalid", table(d=pa.DictionaryArray.from_buffers(
        pa.dictionary(pa.int8(), pa.string()), 2,
        [None, pa.py_buffer(np.array([0, 9], np.int8).tobytes())], pa.array(["a"])))),
    "list offsets past the child": ("invalid", table(l=pa.Array.from_buffers(
        pa.list_(pa.int64()), 2, [None, pa.py_buffer(np.array([0, 50, 3], np.int32).tobytes())],
        children=[pa.array([1, 2, 3])]))),
    "a null column of 2^31 - 1 rows": ("size", pa.table({"n": null_array(2**31 - 1)})),
    "list<null> with 2^31 - 1 elements": ("size", table(l=pa.Array.from_buffers(
        pa.list_(pa.null()), 1, [None, pa.py_buffer(np.array([0, 2**31 - 1], np.int32).tobytes())],
        children=[null_array(2**31 - 1)]))),
    "string views": ("type", table(v=pa.array(["a", "b"], pa.string_view()))),
    "run-end encoded": ("type", table(r=pa.RunEndEncodedArray.from_arrays([1 << 30], ["x"]))),
    "union": ("type", table(u=pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])]))),
    "interval": ("type", table(i=pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()))),
    "repeated column names": ("type", pa.table([pa.array([1]), pa.array([2])], names=["a", "a"])),
    "unknown time zone": ("type", table(t=pa.array([0], pa.timestamp("ns", "Not/AZone")))),
    "date beyond year 9999": ("value", table(d=pa.array([2**31 - 1], pa.int32()).view(pa.date32()))),
    "date64 beyond year 9999": ("invalid", table(d=pa.array([2**62], pa.int64()).view(pa.date64()))),
    "time of day past 24 h": ("invalid", table(t=pa.array([100_000], pa.int32()).view(pa.time32("s")))),
    "time with nanoseconds": ("value", table(t=pa.array([1_000_000_001], pa.int64()).view(pa.time64("ns")))),
    "nested date out of range": ("value", table(l=pa.array([[2**31 - 1]], pa.list_(pa.int32())).cast(
        pa.list_(pa.int32())).view(pa.list_(pa.date32())))),
    "decimal beyond its precision": ("invalid", table(d=pa.Array.from_buffers(
        pa.decimal128(5, 0), 1, [None, pa.py_buffer((10**10).to_bytes(16, "little"))]))),
    "_offset as text": ("columns", table(x=[1, 2], _offset=["10", "20"])),
    "_offset descending": ("columns", table(x=[1, 2], _offset=pa.array([20, 10], pa.int64()))),
    "_offset with nulls": ("columns", table(x=[1, 2], _offset=pa.array([10, None], pa.int64()))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_body_is_refused_with_its_reason(name):
    expected, t = CASES[name]
    assert reason(frames_of(t)) == expected


def long_strings(typ=pa.string(), *, swap: int | None = None, data_at: int | None = None,
                 byte: bytes = b"") -> pa.Table:
    """150,000 values of "ab": more rows than Arrow's full validation is trusted with (one
    value at a time, slow), so zpandas' vectorised check decides; ``swap`` makes offset
    ``swap`` larger than the next, ``byte`` replaces the data at ``data_at``."""
    n = 150_000
    offsets = np.arange(n + 1) * 2
    if swap is not None:
        offsets[swap] = offsets[swap + 1] + 1
    data = bytearray(b"ab" * n)
    if data_at is not None:
        data[data_at:data_at + len(byte)] = byte
    return table(s=string_array(offsets, bytes(data), typ))


LONG_CASES = {
    # the CASES above are small tables, which Arrow's full validation checks in one call
    "descending offsets": long_strings(swap=140_000),
    "descending at the last offset": long_strings(swap=149_999),
    "large_string descending": long_strings(pa.large_string(), swap=100_000),
    "invalid UTF-8 near the end": long_strings(data_at=299_990, byte=b"\xff"),
    "UTF-8 cut inside a character": long_strings(data_at=200_001, byte="é".encode()),
}


@pytest.mark.parametrize("name", list(LONG_CASES))
def test_long_hostile_string_columns_are_refused(name):
    assert LONG_CASES[name].num_rows > _validate._SMALL_ROWS
    assert reason(frames_of(LONG_CASES[name])) == "invalid"
    assert wire.decode(frames_of(long_strings())).table.num_rows == 150_000


def lying(frames: list[bytes], honest: int, claim: int) -> list[bytes]:
    """``frames`` with the compressed buffer that declares ``honest`` bytes declaring ``claim``."""
    body = frames[2]
    prefix = struct.pack("<q", honest)
    assert body.count(prefix) == 1
    return [frames[0], frames[1], body.replace(prefix, struct.pack("<q", claim))]


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_bodies_decode_exactly(codec):
    t = pa.table({"x": np.arange(10_000), "host": pa.array([f"web{i % 7}" for i in range(10_000)]),
                  "level": pa.array(["info", "warn"] * 5_000).dictionary_encode()})
    frames = frames_of(t, compression=codec)
    assert len(frames[2]) < t.nbytes / 2
    assert wire.decode(frames).table.equals(t)
    # and as zpandas encodes them: a small body is sent plain, a large one compressed
    small = wire.encode(t.slice(0, 10), header=wire.Header(producer=PRODUCER), compression=codec)
    large = wire.encode(t, header=wire.Header(producer=PRODUCER), compression=codec)
    assert len(small[2]) == len(wire.encode(t.slice(0, 10), header=wire.Header(producer=PRODUCER))[2])
    assert len(large[2]) < len(frames_of(t)[2]) / 2
    assert wire.decode(large).table.equals(t)
    with pytest.raises(ValueError, match="compression must be one of"):
        wire.encode(t, header=wire.Header(producer=PRODUCER), compression="gzip")


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_compression_bomb_is_refused_before_it_is_decompressed(codec):
    # 800 MB of zeros in a few KB: decompressing it would be the attack.
    bomb = pa.table({"x": pa.array(np.zeros(100_000_000, np.int64))})
    frames = frames_of(bomb, compression=codec)
    assert len(frames[2]) < 4_000_000
    with pytest.raises(WireError, match="over the 268,435,456-byte limit") as e:
        wire.decode(frames)
    assert e.value.reason == "compressed"
    with pytest.raises(WireError, match="over the 1,000,000-byte limit"):
        wire.decode(frames_of(pa.table({"x": np.zeros(200_000, np.int64)}), compression=codec),
                    max_bytes=1_000_000)
    # also inside a dictionary batch: 5 MB of dictionary in a few KB
    d = pa.table({"d": pa.array([c * 1_000_000 for c in "abcde"] * 2).dictionary_encode()})
    frames = frames_of(d, compression=codec)
    assert len(frames[2]) < 100_000 and wire.decode(frames).table.equals(d)
    with pytest.raises(WireError, match="over the 1,000,000-byte limit"):
        wire.decode(frames, max_bytes=1_000_000)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_bodies_that_lie_are_refused_by_reason(codec):
    t = pa.table({"x": np.arange(1000, dtype=np.int64)})   # one 8,000-byte data buffer
    good = frames_of(t, compression=codec)
    # 1 KiB declaring 4 GiB: refused from the declaration alone
    assert reason(lying(good, 8000, 4 << 30)) == "compressed"
    # a size smaller or larger than what the buffer holds, or negative: Arrow's check
    for claim in (4000, 8001, 16000, -2):
        assert reason(lying(good, 8000, claim)) == "compressed", claim
    # a truncated compressed buffer (the body cut short, lengths kept)
    body = bytearray(good[2])
    at = body.index(struct.pack("<q", 8000)) + 8
    body[at + 8:at + 40] = bytes(32)   # scribble over compressed bytes
    assert reason([good[0], good[1], bytes(body)]) == "compressed"
    # a codec the format does not define (LZ4 frame is the default value: not written)
    if codec == "lz4":
        return
    body = bytearray(good[2])
    reader = ipc.MessageReader.open_stream(pa.BufferReader(good[2]))
    next(reader)
    meta = next(reader).metadata.to_pybytes()
    m = bytes(body).index(meta)
    codec_byte = 0 if codec == "lz4" else 1
    patched = None
    for i in range(len(meta)):   # the BodyCompression codec byte: the one whose change is noticed
        if meta[i] == codec_byte:
            trial = bytearray(body)
            trial[m + i] = 7
            try:
                wire.decode([good[0], good[1], bytes(trial)])
            except WireError as e:
                if "codec 7" in str(e):
                    patched = e
                    break
    assert patched is not None and patched.reason == "compressed"


@pytest.mark.timeout(10)
def test_negative_body_length_cannot_loop_the_framing_walk():
    """A batch whose bodyLength points back at itself: refused, not walked for ever."""
    frames = frames_of(table(x=[1, 2, 3]))
    body = bytearray(frames[2])
    reader = ipc.MessageReader.open_stream(pa.BufferReader(bytes(body)))
    next(reader)  # the schema
    batch = next(reader)
    meta = bytes(batch.metadata)
    # bodyLength (int64) equals the body's length in the batch's metadata: find and negate it
    at = body.index(meta) + meta.index(struct.pack("<q", batch.body.size))
    body[at:at + 8] = struct.pack("<q", -(len(meta) + 8))  # back to its own marker
    assert reason([frames[0], frames[1], bytes(body)]) == "body"


def test_offset_outside_the_header_range_is_refused():
    t = table(x=[1, 2], _offset=pa.array([100, 200], pa.int64()))
    assert wire.decode(frames_of(t, start=100, end=201)).table.num_rows == 2
    assert reason(frames_of(t, start=101, end=300)) == "columns"
    assert reason(frames_of(t, start=0, end=200)) == "columns"


def test_rejects_message_must_have_the_reject_schema():
    good = pa.Table.from_pylist([{"file": "f", "line": 1, "offset": 0, "reason": "r", "text": "t"}],
                                schema=REJECT_SCHEMA)
    assert wire.decode(frames_of(good, kind=wire.Kind.REJECTS)).table.num_rows == 1
    bad = table(file=["f"], producer=["x"])
    assert reason(frames_of(bad, kind=wire.Kind.REJECTS)) == "columns"
    # other writers' widths (pandas 3 text is large_string) are taken and cast
    wide = good.cast(pa.schema([("file", pa.large_string()), ("line", pa.int32()),
                                ("offset", pa.int64()), ("reason", pa.large_string()),
                                ("text", pa.string())]))
    assert wire.decode(frames_of(wide, kind=wire.Kind.REJECTS)).table.schema.equals(REJECT_SCHEMA)
    missing = good.drop_columns(["text"])
    assert reason(frames_of(missing, kind=wire.Kind.REJECTS)) == "columns"


def test_pandas_metadata_from_a_peer_is_dropped():
    """A peer's b"pandas" metadata would steer to_pandas (index columns that do not exist)."""
    meta = {b"pandas": b'{"index_columns": ["nope"], "columns": [], "pandas_version": "2"}'}
    msg = wire.decode(frames_of(table(x=[1, 2]), metadata=meta))
    assert msg.table.schema.metadata is None
    assert msg.table.to_pandas()["x"].tolist() == [1, 2]


def test_honest_tables_of_every_accepted_type_pass():
    t = pa.table({
        "b": [True, None], "i8": pa.array([1, -1], pa.int8()), "u64": pa.array([1, 2], pa.uint64()),
        "f16": pa.array([1.5, None], pa.float16()), "dec": pa.array([1, 2], pa.decimal128(5, 0)),
        "d": [datetime.date(1, 1, 1), datetime.date(9999, 12, 31)],
        "t": pa.array([0, 86_399_999_999_000], pa.time64("ns")),
        "ts": pa.array([0, None], pa.timestamp("s", "Europe/Paris")),
        "dur": pa.array([1, 2], pa.duration("ms")), "s": ["a", "é"],
        "ls": pa.array(["x", None], pa.large_string()), "bin": [b"\xff", b""],
        "fsb": pa.array([b"ab", b"cd"], pa.binary(2)), "n": pa.nulls(2),
        "dict": pa.array(["a", "b"]).dictionary_encode(),
        "list": [[1, 2], None], "struct": [{"a": 1, "s": "x"}, None],
        "map": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
        "_offset": pa.array([5, 9], pa.int64()),
    })
    msg = wire.decode(frames_of(t, start=5, end=10))
    assert msg.table.equals(t)
    assert len(msg.table.to_pandas()) == 2


def test_a_null_only_table_of_honest_size_passes():
    assert wire.decode(frames_of(pa.table({"n": pa.nulls(50_000)}))).table.num_rows == 50_000


def _converts_or_refused(frames) -> None:
    try:
        msg = wire.decode(frames)
    except WireError as e:
        assert e.reason in wire.REASONS
        return
    if msg.table is not None:
        msg.table.to_pandas()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=5))
def test_arbitrary_frames_raise_only_wire_errors(frames):
    _converts_or_refused(frames)


_TEMPLATE = frames_of(pa.table({
    "ts": pa.array([0, 10**18], pa.timestamp("ns", "UTC")), "s": ["abc", None],
    "d": [datetime.date(2020, 1, 1), None], "dict": pa.array(["x", "y"]).dictionary_encode(),
    "l": [[1, 2], [3]], "_offset": pa.array([0, 4], pa.int64())}), start=0, end=8)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)),
                                   min_size=1, max_size=4))
def test_byte_flips_raise_only_wire_errors(which, flips):
    frames = [bytearray(f) for f in _TEMPLATE]
    target = frames[which]
    if not target:
        return
    for pos, xor in flips:
        target[pos % len(target)] ^= xor
    _converts_or_refused([bytes(f) for f in frames])


def test_reasons_are_documented():
    with open(wire.__file__.replace("zpandas/wire.py", "docs/wire.md")) as f:
        doc = f.read()
    for r in wire.REASONS:
        assert f"`{r}`" in doc, r


@pytest.mark.parametrize("values", [["x", "x"], ["x", None]])
def test_a_dictionary_pandas_cannot_take_is_refused(values):
    """Arrow allows repeated or null dictionary values; pandas' categories do not (found
    by the byte-flip fuzzing above: "Categorical categories must be unique")."""
    column = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(values))
    with pytest.raises(WireError) as info:
        wire.decode(frames_of(pa.table({"d": column})))
    assert info.value.reason == "invalid"
