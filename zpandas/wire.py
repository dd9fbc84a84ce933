"""Wire format v2: sans-IO encoding and decoding of zpandas messages.

A message is three ZeroMQ frames ``[topic, header, body]``:

* ``topic`` - raw bytes; the only frame a SUB socket prefix-matches.
* ``header`` - an 80-byte little-endian struct followed by two UTF-8 strings
  (producer name, source id); see ``docs/wire.md`` for the byte layout.
* ``body`` - for data messages, a complete Arrow IPC *stream* (schema, record
  batches, end-of-stream marker) that ``pyarrow.ipc.open_stream`` reads with nothing
  else; empty for end-of-stream and heartbeat messages.

This module knows nothing of sockets or threads: it turns tables into frames and
frames back into :class:`Message` objects, raising :class:`~zpandas.errors.WireError`
with a stable ``reason`` for anything malformed. Nothing is ever pickled.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ._validate import REASONS as VALIDATION_REASONS
from ._validate import check_body_messages, check_table
from .errors import WireError

__all__ = [
    "REASONS",
    "VERSION",
    "MAGIC",
    "HEADER_STRUCT",
    "Kind",
    "Header",
    "Message",
    "fingerprint",
    "encode_body",
    "COMPRESSIONS",
    "WIRE_DICTIONARY",
    "dictionary_encode",
    "restore",
    "encode",
    "decode",
    "stamp",
]

MAGIC = b"ZP"
VERSION = 2
#: magic, version, kind, producer id, seq, send_ns, total, fingerprint, rows,
#: source start, source end, producer-name length, source-id length
HEADER_STRUCT = struct.Struct("<2sBB16sQqQ8sQqqHH")
assert HEADER_STRUCT.size == 80
_MAX_STR = 0xFFFF
NO_FINGERPRINT = bytes(8)

#: Every ``WireError.reason`` that :func:`decode` raises, with what it means.
REASONS = {
    "frames": "not exactly three frames [topic, header, body]",
    "oversize": "the message is larger than the receiver's max_message_bytes",
    "header": "the header is too short, its string lengths disagree with its size, or not UTF-8",
    "magic": "the header does not start with b'ZP'",
    "version": "an unsupported wire version",
    "kind": "an unknown message kind",
    "body": "the body is not an Arrow IPC stream (or a control message has a body)",
    "fingerprint": "the body's schema does not match the header's fingerprint",
    "rows": "the header's row count differs from the body's",
    **VALIDATION_REASONS,
}

# Data may arrive at any address inside a ZeroMQ frame; Arrow copies only the buffers
# whose alignment its kernels need, instead of all of them.
_READ_OPTIONS = ipc.IpcReadOptions(ensure_alignment=ipc.Alignment.DataTypeSpecific)


class Kind(enum.IntEnum):
    """What a message carries."""

    DATA = 0
    END_OF_STREAM = 1
    HEARTBEAT = 2
    REJECTS = 3       # lines a source could not parse, as rows (not counted in seq/total)
    HISTORY_END = 4   # a history reply's last message: how it went (zpandas.history)
    HISTORY_PROGRESS = 5   # how far a history reply is: bytes of file read of all (zpandas.history)


#: Kind by its number: a dict lookup, where ``Kind(n)`` costs a few microseconds a message.
_KINDS = {int(k): k for k in Kind}

#: Kinds whose body is an Arrow IPC stream.
WITH_BODY = (Kind.DATA, Kind.REJECTS, Kind.HISTORY_END, Kind.HISTORY_PROGRESS)


@dataclass(frozen=True)
class Header:
    """The metadata sent with every message.

    Attributes
    ----------
    kind : Kind
        Data, end-of-stream or heartbeat.
    producer : bytes
        16-byte producer id (a UUID4), unique per Producer instance.
    seq : int
        Data messages are numbered 0, 1, 2, ... per (producer, topic). End-of-stream
        and heartbeat messages carry the number of data messages sent so far on their
        topic, so a receiver can also see that the *last* data message was lost.
    send_ns : int
        Send time, nanoseconds since the Unix epoch (the producer's clock).
    total : int
        Rows sent on this (producer, topic) before this message; for end-of-stream and
        heartbeat messages, all rows sent so far. With ``seq`` it tells a receiver how
        many *rows* it lost, and how many were sent before it joined.
    fingerprint : bytes
        8 bytes identifying the body's schema (see :func:`fingerprint`).
    rows : int
        Number of rows in the body.
    name : str
        Human-readable producer name (default ``host:pid``).
    source : str
        Where the rows came from (e.g. a file's identity); empty when unknown.
    start, end : int
        Byte range ``[start, end)`` of the rows in ``source``; -1 when unknown.
    """

    kind: Kind = Kind.DATA
    producer: bytes = bytes(16)
    seq: int = 0
    send_ns: int = 0
    total: int = 0
    fingerprint: bytes = NO_FINGERPRINT
    rows: int = 0
    name: str = ""
    source: str = ""
    start: int = -1
    end: int = -1

    def pack(self) -> bytes:
        """Serialize to header bytes."""
        name = self.name.encode("utf-8")[:_MAX_STR]
        source = self.source.encode("utf-8")[:_MAX_STR]
        if len(self.producer) != 16:
            raise ValueError("producer id must be 16 bytes")
        fixed = HEADER_STRUCT.pack(
            MAGIC, VERSION, int(self.kind), self.producer, self.seq, self.send_ns, self.total,
            self.fingerprint, self.rows, self.start, self.end, len(name), len(source),
        )
        return fixed + name + source

    @classmethod
    def unpack(cls, data) -> Header:
        """Parse header bytes; raise :class:`WireError` if they are not a header of this version."""
        mv = memoryview(data)
        if len(mv) < 4:
            raise WireError("header", f"header is {len(mv)} bytes, shorter than the {HEADER_STRUCT.size}-byte minimum")
        if bytes(mv[:2]) != MAGIC:
            raise WireError("magic", f"header starts with {bytes(mv[:2])!r}, not {MAGIC!r}")
        if mv[2] != VERSION:
            raise WireError("version", f"wire version {mv[2]} is not supported (this is version {VERSION})")
        if len(mv) < HEADER_STRUCT.size:
            raise WireError("header", f"header is {len(mv)} bytes, shorter than the {HEADER_STRUCT.size}-byte minimum")
        (_, _, kind, producer, seq, send_ns, total, fp, rows, start, end, name_len,
         source_len) = HEADER_STRUCT.unpack_from(mv)
        if len(mv) != HEADER_STRUCT.size + name_len + source_len:
            raise WireError("header", f"header is {len(mv)} bytes but its string lengths say "
                            f"{HEADER_STRUCT.size + name_len + source_len}")
        if kind not in _KINDS:
            raise WireError("kind", f"unknown message kind {kind}")
        kind = _KINDS[kind]
        off = HEADER_STRUCT.size
        try:
            name = bytes(mv[off:off + name_len]).decode("utf-8")
            source = bytes(mv[off + name_len:]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise WireError("header", f"producer name or source is not UTF-8: {e}") from None
        return cls(kind, producer, seq, send_ns, total, fp, rows, name, source, start, end)


@dataclass(frozen=True)
class Message:
    """A decoded message: its topic, header and (for data messages) the rows."""

    topic: bytes
    header: Header
    table: pa.Table | None
    nbytes: int

    @property
    def kind(self) -> Kind:
        return self.header.kind


def fingerprint(schema: pa.Schema) -> bytes:
    """Return 8 bytes identifying ``schema`` (field names, types and metadata).

    The first 8 bytes of the SHA-256 of the schema's Arrow IPC serialization: equal
    schemas give equal fingerprints in any process and any language.
    """
    return hashlib.sha256(schema.serialize()).digest()[:8]


#: Schemas whose fingerprints were computed, by fingerprint: a stream of messages of one
#: schema is checked by comparing schemas (~0.2 µs) instead of serializing and hashing
#: each (~4 µs). Bounded: cleared when full.
_KNOWN_SCHEMAS: dict[bytes, pa.Schema] = {}
_KNOWN_SCHEMAS_MAX = 1024


def _fingerprint_matches(schema: pa.Schema, fp: bytes) -> bool:
    known = _KNOWN_SCHEMAS.get(fp)
    if known is not None and known.equals(schema, check_metadata=True):
        return True
    if fingerprint(schema) != fp:
        return False
    if len(_KNOWN_SCHEMAS) >= _KNOWN_SCHEMAS_MAX:
        _KNOWN_SCHEMAS.clear()
    _KNOWN_SCHEMAS[fp] = schema
    return True


#: Codecs a body may be compressed with (Arrow IPC buffer compression).
COMPRESSIONS = ("zstd", "lz4")
#: Bodies smaller than this are sent plain: compressing them gains too little to pay.
MIN_COMPRESS_BYTES = 4096


def encode_body(data: pa.Table | pa.RecordBatch, compression: str | None = None) -> pa.Buffer:
    """Serialize a table or batch as a complete Arrow IPC stream.

    Parameters
    ----------
    compression : {"zstd", "lz4", None}
        Compress every buffer with Arrow IPC's buffer compression (LZ4 frame or ZSTD)
        when the body is at least :data:`MIN_COMPRESS_BYTES` and compressing makes it
        smaller; otherwise, and with None, the body is plain.
    """
    # Written twice: first to count the bytes (no copying), then into a buffer of
    # exactly that size - a growing buffer would copy the body again as it doubles.
    size = pa.MockOutputStream()
    _write_stream(size, data)
    if compression is not None and size.size() >= MIN_COMPRESS_BYTES:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS} or None, not {compression!r}")
        sink = pa.BufferOutputStream()
        _write_stream(sink, data, _WRITE_OPTIONS[compression])
        packed = sink.getvalue()
        if packed.size < size.size():
            return packed
    body = pa.allocate_buffer(size.size())
    _write_stream(pa.FixedSizeBufferWriter(body), data)
    return body


#: Field metadata of a column dictionary-encoded for the wire only: receivers turn it back
#: into the strings it was (unless asked for a category).
WIRE_DICTIONARY = {b"zpandas": b"wire-dictionary"}
_SAMPLE = 1024


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def dictionary_encode(table: pa.Table, *, ratio: float = 0.5, min_rows: int = 256) -> pa.Table:
    """Dictionary-encode the string columns whose values repeat, for the wire.

    A column is encoded when its first 1,024 values, then all of them, hold at most
    ``ratio`` distinct values per row (hosts, levels, methods, paths, user agents); each
    encoded field is marked with :data:`WIRE_DICTIONARY`. Tables under ``min_rows`` rows
    are left as they are: their dictionaries would cost what they save.
    """
    if table.num_rows < min_rows:
        return table
    for i, field in enumerate(table.schema):
        if not _is_text(field.type):
            continue
        col = table.column(i)
        head = pc.dictionary_encode(col.slice(0, _SAMPLE))
        if _distinct(head) > ratio * min(_SAMPLE, len(col)):
            continue
        coded = pc.dictionary_encode(col)   # one dictionary for every chunk
        if _distinct(coded) > ratio * len(col):
            continue
        table = table.set_column(i, field.with_type(coded.type).with_metadata(WIRE_DICTIONARY), coded)
    return table


def _distinct(coded: pa.ChunkedArray) -> int:
    return max((len(c.dictionary) for c in coded.chunks), default=0)


def restore(table: pa.Table, categories=()) -> pa.Table:
    """Columns as the sender had them: a wire dictionary back to its strings, but as a
    dictionary (a pandas ``category``) for the names in ``categories`` - also when a
    message carried that column plain, so that every message's schema agrees."""
    fields = table.schema
    if not categories and not any(f.metadata for f in fields):
        return table
    for i, field in enumerate(fields):
        wired = field.metadata == WIRE_DICTIONARY
        if field.name in categories:
            if wired:
                table = table.set_column(i, field.remove_metadata(), table.column(i))
            elif _is_text(field.type):
                coded = pc.dictionary_encode(table.column(i))
                table = table.set_column(i, field.with_type(coded.type), coded)
        elif wired:
            col = table.column(i)
            plain = pa.chunked_array([c.dictionary_decode() for c in col.chunks],
                                     type=field.type.value_type)
            table = table.set_column(i, pa.field(field.name, field.type.value_type, field.nullable),
                                     plain)
    return table


_WRITE_OPTIONS = {"zstd": ipc.IpcWriteOptions(compression="zstd"),
                  "lz4": ipc.IpcWriteOptions(compression="lz4")}


def _write_stream(sink, data: pa.Table | pa.RecordBatch, options=None) -> None:
    with ipc.new_stream(sink, data.schema, options=options) as writer:
        if isinstance(data, pa.RecordBatch):
            writer.write_batch(data)
        else:
            writer.write_table(data)


def encode(data: pa.Table | pa.RecordBatch | None, *, topic: bytes | str = b"",
           header: Header = Header(), compression: str | None = None) -> list:
    """Encode one message as its three frames ``[topic, header, body]``.

    For a data message, ``header.rows`` and ``header.fingerprint`` are filled in from
    ``data``; the body is a ``pyarrow.Buffer`` (send it with ``copy=False`` when large),
    compressed as :func:`encode_body` says.
    """
    if isinstance(topic, str):
        topic = topic.encode("utf-8")
    if header.kind in WITH_BODY:
        if data is None:
            raise ValueError(f"a {header.kind.name} message needs a table or record batch")
        header = replace(header, rows=data.num_rows, fingerprint=fingerprint(data.schema))
        body = encode_body(data, compression)
    else:
        if data is not None:
            raise ValueError(f"a {header.kind.name} message carries no rows")
        body = b""
    return [topic, header.pack(), body]


_STAMP = struct.Struct("<QqQ")
_STAMP_OFFSET = 20  # after magic (2), version (1), kind (1), producer id (16)


def stamp(header: bytearray, seq: int, send_ns: int, total: int) -> None:
    """Write ``seq``, ``send_ns`` and ``total`` into packed header bytes, in place.

    The producer encodes bodies on its callers' threads but numbers messages on the
    thread that owns the socket, in send order; this avoids re-packing the header.
    """
    _STAMP.pack_into(header, _STAMP_OFFSET, seq, send_ns, total)


def decode(frames, *, max_bytes: int | None = None, categories=()) -> Message:
    """Decode ``[topic, header, body]`` frames into a :class:`Message`.

    Parameters
    ----------
    frames : sequence of bytes-like
        The frames of one multipart message (``bytes``, ``memoryview`` or any object
        with the buffer protocol, e.g. a ``zmq.Frame``); the body is read zero-copy.
    max_bytes : int, optional
        Reject messages whose frames add up to more than this (reason ``"oversize"``),
        or whose compressed buffers declare more (reason ``"compressed"``).
    categories : collection of str
        String columns to return as dictionaries (pandas ``category``); other columns a
        producer dictionary-encoded for the wire come back as strings (see :func:`restore`).

    Raises
    ------
    WireError
        With ``reason`` one of ``frames``, ``oversize``, ``header``, ``magic``,
        ``version``, ``kind``, ``body``, ``fingerprint``, ``rows``, or of the full
        validation of bodies (:mod:`zpandas._validate`): ``compressed``, ``type``,
        ``invalid``, ``size``, ``value``, ``columns``. Nothing a peer sends raises
        anything else.
    """
    if len(frames) != 3:
        raise WireError("frames", f"expected 3 frames [topic, header, body], got {len(frames)}")
    views = [memoryview(f) for f in frames]
    nbytes = sum(v.nbytes for v in views)
    if max_bytes is not None and nbytes > max_bytes:
        raise WireError("oversize", f"message is {nbytes} bytes, over the {max_bytes}-byte limit")
    topic = bytes(views[0])
    header = Header.unpack(views[1])
    body = views[2]
    if header.kind not in WITH_BODY:
        if body.nbytes:
            raise WireError("body", f"a {header.kind.name} message must have an empty body")
        return Message(topic, header, None, nbytes)
    buffer = pa.py_buffer(body)
    # Compressed buffers' declared sizes, held to the limit before any is decompressed
    declared = check_body_messages(buffer, max_bytes)
    try:
        reader = ipc.open_stream(pa.BufferReader(buffer), options=_READ_OPTIONS)
        table = reader.read_all()
        table.validate()
    except (pa.ArrowException, ValueError, OSError) as e:
        if declared:
            raise WireError("compressed", f"the compressed body does not decompress: {e}") from None
        raise WireError("body", f"body is not an Arrow IPC stream: {e}") from None
    if not _fingerprint_matches(table.schema, header.fingerprint):
        raise WireError("fingerprint", "the body's schema does not match the header's fingerprint")
    if table.num_rows != header.rows:
        raise WireError("rows", f"header says {header.rows} rows, body has {table.num_rows}")
    if header.kind in (Kind.HISTORY_END, Kind.HISTORY_PROGRESS):
        from .history import read_end, read_progress
        try:
            (read_end if header.kind is Kind.HISTORY_END else read_progress)(table)
        except (ValueError, pa.ArrowException) as e:
            raise WireError("columns", f"a {header.kind.name.lower().replace('_', ' ')}: {e}") from None
    table = check_table(table, header.fingerprint, body_bytes=max(body.nbytes, declared),
                        rejects=header.kind is Kind.REJECTS, start=header.start, end=header.end)
    return Message(topic, header, restore(table, categories), nbytes)
