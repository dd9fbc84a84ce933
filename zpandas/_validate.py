"""Full validation of untrusted Arrow IPC bodies: sans-IO, used by :func:`zpandas.wire.decode`.

Anything a peer sends may be hostile or broken. Arrow's own reader checks that the
flatbuffer metadata is well formed and that every buffer lies inside the body, and
``validate()`` that buffers are large enough; neither looks at *values*. A string
column whose offsets point past its data buffer passes both and is then read out of
bounds by ``to_pandas``. So before a table is accepted this module checks:

* **compression** - *before* anything is decompressed, every compressed buffer's declared
  size is read (the 8 bytes Arrow writes in front of it) and their sum held to the
  receiver's limit: a few KiB of zstd can claim gigabytes. Only LZ4 frame and ZSTD, per
  buffer, as the format defines; Arrow then checks that each buffer decompresses to
  exactly its declared size;
* **types** - only those ``to_pandas`` converts without surprises (no views, run-end
  encoding, unions, intervals or extension types; bounded nesting; unique names), and
  a zero-row ``to_pandas`` of the schema must work (e.g. a known time zone);
* **structure** - offsets, lengths, UTF-8 of strings and dictionary indices
  (Arrow's full validation, with a vectorised path for plain string columns, which is
  most of the cost);
* **size** - no array may claim far more elements than its bytes can hold (a null
  column or a ``list<null>`` of 2^40 elements costs a few bytes to send and terabytes
  to convert);
* **values** - dates and times that ``to_pandas`` can represent;
* **zpandas' own columns** - ``_offset`` is int64, without nulls, ascending, and
  inside the header's byte range; a rejects message has the reject schema.

Each failure is a :class:`~zpandas.errors.WireError` with a stable ``reason``.
Schema-level checks are cached by schema fingerprint, so a stream of messages with
one schema pays them once.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import WireError

__all__ = ["check_body_messages", "check_table", "REASONS", "DEFAULT_LIMIT"]

#: Every ``reason`` this module raises, with what it means (documented in docs/wire.md).
REASONS = {
    "compressed": "a compressed body is malformed, declares more bytes than the receiver's "
                  "max_message_bytes, or does not decompress to what it declares",
    "type": "a column's type is not accepted, names repeat, or the schema does not convert",
    "invalid": "offsets, lengths, UTF-8 or dictionary indices are wrong, or a dictionary's values are null or repeated",
    "size": "an array claims far more elements than its bytes can hold",
    "value": "a date or time that pandas cannot represent",
    "columns": "a zpandas column (_offset, or a rejects message's columns) is malformed",
}

#: An array may hold at most this many elements per body byte, plus a fixed allowance:
#: 8 is one bit per element (a non-null boolean column), the densest honest encoding.
_ELEMENTS_PER_BYTE = 8
_ELEMENTS_ALLOWANCE = 1 << 16
_MAX_DEPTH = 32
_MAX_COLUMNS = 10_000
#: Tables up to this many rows are validated by one call of Arrow's full validation.
_SMALL_ROWS = 8192

#: Decompressed bytes a body may declare when the caller gives no limit.
DEFAULT_LIMIT = 256 << 20

# Flatbuffer layout of Arrow's Message (format/Message.fbs): union field ``header``
# takes slots 1 (type) and 2 (value), bodyLength slot 3; RecordBatch.buffers is slot 2
# (structs of offset and length, 16 bytes each), RecordBatch.compression slot 3
# (BodyCompression: codec slot 0, method slot 1); DictionaryBatch.data is slot 1.
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3
_CODECS = {0: "lz4_frame", 1: "zstd"}   # CompressionType
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")


def _field_pos(buf: memoryview, table: int, slot: int) -> int:
    """Position of a table's field ``slot``, or 0 if the field is absent."""
    vtable = table - _I32.unpack_from(buf, table)[0]
    vt_size = _U16.unpack_from(buf, vtable)[0]
    at = 4 + 2 * slot
    if at + 2 > vt_size:
        return 0
    off = _U16.unpack_from(buf, vtable + at)[0]
    return table + off if off else 0


def _child_table(buf: memoryview, pos: int) -> int:
    return pos + _U32.unpack_from(buf, pos)[0]


def _record_batch(meta: memoryview) -> int:
    """Position of the message's RecordBatch table (its own, or a DictionaryBatch's), or 0."""
    root = _U32.unpack_from(meta, 0)[0]
    type_pos = _field_pos(meta, root, 1)
    header_pos = _field_pos(meta, root, 2)
    if not type_pos or not header_pos:
        return 0
    kind = meta[type_pos]
    batch = _child_table(meta, header_pos)
    if kind == _DICTIONARY_BATCH:
        data_pos = _field_pos(meta, batch, 1)
        return _child_table(meta, data_pos) if data_pos else 0
    return batch if kind == _RECORD_BATCH else 0


def _declared_bytes(meta: memoryview, body: memoryview) -> int:
    """Bytes a message's buffers hold once decompressed (-1: the message is not compressed).

    Raises :class:`WireError` ("compressed") for a codec or method the format does not
    define, a buffer outside the body or too short for its size prefix, or a negative size.
    """
    batch = _record_batch(meta)
    if not batch:
        return -1
    compression = _field_pos(meta, batch, 3)
    if not compression:
        return -1
    spec = _child_table(meta, compression)
    codec_pos, method_pos = _field_pos(meta, spec, 0), _field_pos(meta, spec, 1)
    codec = meta[codec_pos] if codec_pos else 0
    method = meta[method_pos] if method_pos else 0
    if codec not in _CODECS or method != 0:
        raise WireError("compressed", f"compression codec {codec}, method {method} is not LZ4 frame "
                        "or ZSTD per buffer")
    buffers = _field_pos(meta, batch, 2)
    if not buffers:
        return 0
    vec = buffers + _U32.unpack_from(meta, buffers)[0]
    count = _U32.unpack_from(meta, vec)[0]
    if vec + 4 + 16 * count > len(meta):
        raise WireError("compressed", "the buffer list runs past the message's metadata")
    total = 0
    for i in range(count):
        offset, length = struct.unpack_from("<qq", meta, vec + 4 + 16 * i)
        if not length:
            continue
        if offset < 0 or length < 8 or offset + length > len(body):
            raise WireError("compressed", f"buffer {i} ({offset}, {length}) is not a compressed "
                            f"buffer inside the {len(body)}-byte message body")
        size = _I64.unpack_from(body, offset)[0]
        if size < -1:
            raise WireError("compressed", f"buffer {i} declares {size} bytes")
        total += length - 8 if size == -1 else size   # -1: stored as is
    return total


def check_body_messages(body, limit: int | None = None) -> int:
    """Check a body's compression before any of it is decompressed.

    Walks the IPC stream's framing (continuation marker, metadata length, flatbuffer
    metadata, body) without reading any batch; framing it cannot follow is left for
    Arrow's reader to refuse.

    Returns
    -------
    int
        The bytes its compressed buffers declare (0: nothing is compressed).

    Raises
    ------
    WireError
        "compressed": see :func:`_declared_bytes`, or the declared bytes add up to more
        than ``limit`` (default :data:`DEFAULT_LIMIT`).
    """
    limit = DEFAULT_LIMIT if limit is None else limit
    buf = memoryview(body)
    pos, n, declared = 0, len(buf), 0
    try:
        while pos + 8 <= n:
            length = _I32.unpack_from(buf, pos)[0]
            pos += 4
            if length == -1:  # continuation marker, then the length
                length = _I32.unpack_from(buf, pos)[0]
                pos += 4
            if length <= 0 or pos + length > n:
                break  # end of stream, or framing Arrow will refuse
            meta = buf[pos:pos + length]
            pos += length
            body_len_pos = _field_pos(meta, _U32.unpack_from(meta, 0)[0], 3)
            body_len = _I64.unpack_from(meta, body_len_pos)[0] if body_len_pos else 0
            if body_len < 0 or pos + body_len > n:
                break  # Arrow refuses it
            size = _declared_bytes(meta, buf[pos:pos + body_len])
            if size >= 0:
                declared += size
                if declared > limit:
                    raise WireError("compressed", f"the body declares {declared:,}+ bytes once "
                                    f"decompressed, over the {limit:,}-byte limit")
            pos += body_len
    except WireError:
        raise
    except (struct.error, IndexError, ValueError):
        # Metadata that points outside itself: Arrow's reader would refuse it too, but it
        # must not get the chance to decompress what was not measured.
        raise WireError("body", "the body's IPC metadata points outside itself") from None
    return declared


# -- schema ------------------------------------------------------------------------------

# fingerprint + kind -> (problem or None, plan: [(column index, check)])
_schema_cache: dict[bytes, tuple[tuple[str, str] | None, list[tuple[int, str]]]] = {}
_SCHEMA_CACHE_MAX = 1024


def _type_problem(t: pa.DataType, depth: int = 0) -> str | None:
    if depth > _MAX_DEPTH:
        return f"nesting deeper than {_MAX_DEPTH}"
    if isinstance(t, pa.ExtensionType):
        return f"extension type {t.extension_name!r}"
    if pa.types.is_dictionary(t):
        if not pa.types.is_integer(t.index_type):
            return f"dictionary index type {t.index_type}"
        return _type_problem(t.value_type, depth + 1)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _type_problem(t.value_type, depth + 1)
    if pa.types.is_map(t):
        return _type_problem(t.key_type, depth + 1) or _type_problem(t.item_type, depth + 1)
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            problem = _type_problem(t.field(i).type, depth + 1)
            if problem:
                return problem
        return None
    plain = (pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t)
             or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_date(t)
             or pa.types.is_time(t) or pa.types.is_timestamp(t) or pa.types.is_duration(t)
             or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
             or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))
    return None if plain else f"type {t}"


def _schema_problem(schema: pa.Schema, rejects: bool) -> tuple[str, str] | None:
    if len(schema) > _MAX_COLUMNS:
        return "type", f"{len(schema)} columns, more than {_MAX_COLUMNS}"
    names = schema.names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        return "type", f"repeated column names {dup[:5]}"
    for f in schema:
        problem = _type_problem(f.type)
        if problem:
            return "type", f"column {f.name!r}: {problem} is not accepted"
    if "_offset" in names and schema.field("_offset").type != pa.int64():
        return "columns", f"_offset is {schema.field('_offset').type}, not int64"
    if rejects:
        from .sources.lines import REJECT_SCHEMA
        fits = schema.names == REJECT_SCHEMA.names and all(
            (pa.types.is_integer(f.type) if pa.types.is_integer(want.type)
             else pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
            for f, want in zip(schema, REJECT_SCHEMA))
        if not fits:
            return "columns", (f"a rejects message must have the columns {REJECT_SCHEMA.names} "
                               "(text and integers)")
    try:
        schema.empty_table().to_pandas()
    except Exception as e:  # noqa: BLE001 - whatever pandas or Arrow says, the schema is unusable
        return "type", f"does not convert to pandas: {type(e).__name__}: {e}"
    return None


def _check(t: pa.DataType) -> str | None:
    """Which value checks a column of type ``t`` needs beyond Arrow's basic validation.

    Fixed-width numbers, booleans, timestamps and durations need none: basic validation
    checks their buffers hold ``length`` values, and every bit pattern converts.
    """
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_date(t) or pa.types.is_time(t):
        return "temporal"
    if pa.types.is_null(t):
        return "null"
    if (pa.types.is_dictionary(t) or pa.types.is_decimal(t) or pa.types.is_nested(t)):
        return "full"
    return None


def _plan(schema: pa.Schema, fp: bytes, rejects: bool) -> list[tuple[int, str]]:
    """The checks of ``schema``'s columns; raise WireError if the schema itself is refused."""
    key = fp + (b"R" if rejects else b"D")
    cached = _schema_cache.get(key)
    if cached is None:
        problem = _schema_problem(schema, rejects)
        plan = [] if problem else [(i, c) for i, f in enumerate(schema) if (c := _check(f.type))]
        if problem is None and "_offset" in schema.names:
            plan.append((schema.get_field_index("_offset"), "offset"))
        if len(_schema_cache) >= _SCHEMA_CACHE_MAX:
            _schema_cache.clear()  # a peer inventing schemas pays the checks again, no more
        cached = _schema_cache[key] = (problem, plan)
    if cached[0]:
        raise WireError(*cached[0])
    return cached[1]


# -- values ------------------------------------------------------------------------------

_DAY_MIN, _DAY_MAX = -719_162, 2_932_896      # 0001-01-01 and 9999-12-31, days since 1970
_DAY_MS = 86_400_000
_TIME_LIMIT = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _arrays(arr: pa.Array):
    """``arr`` and every array nested in it (children, dictionary values)."""
    yield arr
    t = arr.type
    if pa.types.is_dictionary(t):
        yield from _arrays(arr.dictionary)
    elif pa.types.is_map(t):
        yield from _arrays(arr.keys)
        yield from _arrays(arr.items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _arrays(arr.values)
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _arrays(arr.field(i))


def _check_string(arr: pa.Array, *, utf8: bool = True) -> bool:
    """Validate a string or binary array quickly; False if Arrow's full check must decide."""
    n = len(arr)
    if n == 0:
        return False
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int64 if arr.type.id in _LARGE_IDS else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=width, count=n + 1, offset=arr.offset * width().itemsize)
    first, last = int(offsets[0]), int(offsets[-1])
    if first < 0 or last > (0 if data_buf is None else data_buf.size) or (offsets[1:] < offsets[:-1]).any():
        raise WireError("invalid", f"string offsets of a {arr.type} column are out of order or bounds")
    if not utf8 or last == first:
        return True
    data = np.frombuffer(data_buf, dtype=np.uint8, count=last - first, offset=first)
    return bool(data.max() < 0x80)  # ASCII is valid UTF-8 however it is cut


_LARGE_IDS = {pa.large_string().id, pa.large_binary().id}


def _check_values(arr: pa.Array) -> None:
    t = arr.type
    if pa.types.is_dictionary(t):
        # Arrow allows any dictionary; pandas' categories must be distinct and not null.
        values = arr.dictionary
        if values.null_count or pc.count_distinct(values, mode="all").as_py() != len(values):
            raise WireError("invalid", "a dictionary's values are null or not distinct")
        return
    if pa.types.is_date(t) or pa.types.is_time(t):
        if not len(arr) or arr.null_count == len(arr):
            return
        ints = arr.view(pa.int32() if t.bit_width == 32 else pa.int64())
        lo, hi = (v.as_py() for v in pc.min_max(ints).values())
        if lo is None:
            return
        if pa.types.is_date32(t):
            ok = _DAY_MIN <= lo and hi <= _DAY_MAX
        elif pa.types.is_date64(t):
            ok = _DAY_MIN * _DAY_MS <= lo and hi <= _DAY_MAX * _DAY_MS
        else:
            ok = 0 <= lo and hi < _TIME_LIMIT[t.unit]
            if ok and t.unit == "ns":  # Python's time has microseconds: pandas refuses nanos
                ok = not np.any(pc.fill_null(ints, 0).to_numpy() % 1000)
        if not ok:
            raise WireError("value", f"a {t} value is outside what pandas can represent")


def check_table(table: pa.Table, fp: bytes, *, body_bytes: int, rejects: bool = False,
                start: int = -1, end: int = -1) -> pa.Table:
    """Raise :class:`WireError` unless ``table`` is safe to accept; return it without schema metadata.

    Parameters
    ----------
    table : pyarrow.Table
        Read from a body that :func:`check_body_messages` accepted.
    fp : bytes
        The schema's fingerprint (the cache key).
    body_bytes : int
        Size of the body it came from: no array may claim more elements than that allows.
    rejects : bool
        The table is a rejects message's.
    start, end : int
        The header's byte range; ``_offset`` values must lie inside it when it is given.
    """
    # Schema metadata steers to_pandas (b"pandas": index columns, dtypes); ours carry
    # none, and a peer's must not decide how the notebook builds its DataFrames.
    if table.schema.metadata:
        table = table.replace_schema_metadata(None)
    plan = _plan(table.schema, fp, rejects)
    limit = _ELEMENTS_PER_BYTE * body_bytes + _ELEMENTS_ALLOWANCE
    # Sizes first: nothing below may scan an array that claims 2^31 elements.
    for i, check in plan:
        if check in ("null", "full"):
            for chunk in table.column(i).chunks:
                for arr in _arrays(chunk):
                    if len(arr) > limit:
                        raise WireError("size", f"an array of {len(arr)} elements in a body of "
                                        f"{body_bytes} bytes")
    # A small table is validated in one call; a large one column by column, with the
    # vectorised path for strings (Arrow checks UTF-8 one value at a time).
    small = table.num_rows <= _SMALL_ROWS
    try:
        if small:
            table.validate(full=True)
        for i, check in plan:
            column = table.column(i)
            if check == "offset":
                _check_offsets(column, start, end)
                continue
            for chunk in column.chunks:
                if check in ("string", "binary"):
                    if not small and not _check_string(chunk, utf8=check == "string"):
                        chunk.validate(full=True)
                elif check in ("temporal", "full"):
                    if not small:  # also what makes a lying null_count show
                        chunk.validate(full=True)
                    for arr in _arrays(chunk):
                        _check_values(arr)
    except pa.ArrowInvalid as e:
        raise WireError("invalid", str(e)) from None
    if rejects:
        from .sources.lines import REJECT_SCHEMA
        try:
            table = table.cast(REJECT_SCHEMA)  # large_string or int32 from other writers
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise WireError("columns", f"a rejects message's values do not fit: {e}") from None
    return table


def _check_offsets(column: pa.ChunkedArray, start: int, end: int) -> None:
    if column.null_count:
        raise WireError("columns", "_offset has nulls")
    if not len(column):
        return
    chunks = [c for c in column.chunks if len(c)]
    offsets = (np.frombuffer(chunks[0].buffers()[1], np.int64, len(chunks[0]), chunks[0].offset * 8)
               if len(chunks) == 1 else column.to_numpy())
    if len(offsets) > 1 and np.any(offsets[1:] < offsets[:-1]):
        raise WireError("columns", "_offset values are not ascending")
    if start >= 0 and offsets[0] < start or end >= 0 and offsets[-1] >= end:
        raise WireError("columns", f"_offset values [{offsets[0]}, {offsets[-1]}] lie outside "
                        f"the header's byte range [{start}, {end})")
