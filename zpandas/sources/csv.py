"""CSV files as a stream of Arrow tables, each tagged with its exact byte range.

The file is cut into blocks of whole records by a quote-aware scan (a newline ends a
record only outside quotes), and each block is parsed by ``pyarrow.csv``. Knowing where
each block starts and ends in the file is what lets a header say which bytes a frame
holds - and lets a follower resume at a record boundary.

Column types are inferred from the first block and then kept (or given by the caller),
so tables of a stream share one schema. A later number that needs a wider number type
widens its column (int64 to float64) from that block on, and receivers unify the two. A
value that is no number for a number column (or no time for a time column, and so on),
and a record with more fields than the header, is a reject with its file, line, offset
and reason; a record with fewer gets nulls for the rest, as pandas gives NaN: the rule of
followed CSV files (:class:`~zpandas.sources.lines.CsvLines`), so a file's rows have the
same types however it is published. Empty lines before the header are skipped.

Parsing is single-threaded on purpose: a producer runs beside the job that writes its
files, and Arrow's threaded reader spends a third more CPU for its speed-up. Whole
blocks of whole records also make Arrow's quote-aware chunking (``newlines_in_values``)
unnecessary work, but it stays on: a record may still span Arrow's internal blocks.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import SchemaMismatchError, SourceError
from .encoding import Transcoder
from .records import CR_AS_LF, Records, lone_cr, record_ends

__all__ = ["CsvReader", "Block", "first_record_end", "last_record_end", "unique_names"]

log = logging.getLogger("zpandas")

_BOM = b"\xef\xbb\xbf"
_BLANK = re.compile(rb"\s*")
_EMPTY_LINES = re.compile(rb"[\r\n]*")


@dataclass(frozen=True)
class Block:
    """Rows parsed from ``[start, end)`` of ``path``."""

    path: str
    start: int
    end: int
    table: pa.Table
    #: The byte offset of each row's record in the file (int64), or None where rows
    #: and records could not be matched one to one.
    offsets: np.ndarray | None = None


def last_record_end(buf, quote: bytes | None = b'"', end: int | None = None) -> int:
    """Offset just past the last newline of ``buf[:end]`` that ends a record, or 0 if none.

    ``buf`` (bytes or bytearray) must start at a record boundary. A newline inside a
    quoted field does not end a record: with RFC 4180 quoting (a quote inside a field is
    doubled), a newline is outside quotes exactly when an even number of quote
    characters precede it. Usually the last newline qualifies, so this costs one
    ``rfind`` and one count (numpy's, four times ``bytes.count``'s speed on a block).
    """
    end = len(buf) if end is None else end
    nl = buf.rfind(b"\n", 0, end)
    if quote is None or nl < 0:
        return nl + 1
    quotes = int(np.count_nonzero(np.frombuffer(buf, np.uint8, count=nl) == quote[0]))
    while quotes % 2:
        prev = buf.rfind(b"\n", 0, nl)
        if prev < 0:
            return 0
        quotes -= buf.count(quote, prev, nl)
        nl = prev
    return nl + 1


def first_record_end(buf, quote: bytes | None = b'"', end: int | None = None, *,
                     start: int = 0) -> int:
    """Offset just past the first newline of ``buf[start:end]`` that ends a record, or 0.

    ``start`` must be at a record boundary; the offset returned is one of ``buf``.
    """
    end = len(buf) if end is None else end
    nl = buf.find(b"\n", start, end)
    quotes = 0 if quote is None else buf.count(quote, start, max(nl, start))
    while nl >= 0 and quotes % 2:
        nxt = buf.find(b"\n", nl + 1, end)
        if nxt >= 0:
            quotes += buf.count(quote, nl, nxt)
        nl = nxt
    return nl + 1


def checked_skiprows(skiprows) -> int:
    """``skiprows`` if it is a number of lines (0 or more); else a ValueError naming it."""
    if not isinstance(skiprows, int) or isinstance(skiprows, bool) or skiprows < 0:
        raise ValueError(f"skiprows must be a number of lines, 0 or more, not {skiprows!r}")
    return skiprows


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique as ``pandas.read_csv`` does: ``a, a`` -> ``a, a.1``.

    An empty name becomes ``Unnamed: <position>``.
    """
    out: list[str] = []
    taken = set()
    for i, name in enumerate(names):
        name = name or f"Unnamed: {i}"
        new, n = name, 0
        while new in taken:
            n += 1
            new = f"{name}.{n}"
        out.append(new)
        taken.add(new)
    return out


class CsvReader:
    """Read CSV files into Arrow tables with one schema for all of them.

    Parameters
    ----------
    schema : pyarrow.Schema or mapping of column name to type, optional
        Types for some or all columns. The rest are inferred from the first block of
        the first file and kept: a later number that needs a wider type widens its
        column (listed in :attr:`widened`); a value of another kind, or a record with
        more fields than the header, is a reject (:attr:`rejects`); a record with
        fewer gets nulls for the missing ones (as pandas gives NaN).
    delimiter : str, default ","
    quote_char : str or False, default '"'
    block_size : int, default 4 MiB
        Bytes read per block; one block becomes one table (and usually one frame).
    encoding : str, default "utf-8"
        An encoding in which newlines, quotes and delimiters are the ASCII bytes
        (latin-1, cp1252, shift_jis...); each block is decoded to UTF-8 to be parsed.
        Offsets stay offsets in the file.
    errors : {"reject", "replace"}
        A record with bytes that do not decode is a reject, or they become U+FFFD.
    """

    def __init__(self, *, schema: pa.Schema | Mapping | None = None, delimiter: str = ",",
                 quote_char: str | bool = '"', block_size: int = 4 << 20,
                 encoding: str = "utf-8", errors: str = "reject", skiprows: int = 0) -> None:
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.skiprows = checked_skiprows(skiprows)
        self._codec = Transcoder(encoding, errors)
        if not self._codec.ascii_compatible:
            raise ValueError(f"CsvReader cuts blocks at newline bytes, which {encoding} does not "
                             "have: read such files record by record (publish_files does)")
        if isinstance(schema, pa.Schema):
            schema = {f.name: f.type for f in schema}
        self._given = dict(schema or {})
        self._quote = None if quote_char is False else quote_char.encode()
        self._parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char,
                                         newlines_in_values=quote_char is not False)
        self.block_size = block_size
        self.schema: pa.Schema | None = None
        self._schema_from: str | None = None
        self._names: list[str] | None = None   # columns of the first header seen
        self.widened: list[str] = []  # "'col' int64 -> double", as types were widened
        #: Records that do not parse or fit - more fields than the header,
        #: a value not of its column's type, an unclosed quote at the end of a file
        #: (which Arrow would take as one field swallowing the rest) - as rows of the
        #: reject schema: ``file``, ``line``, ``offset``, ``reason``, ``text``.
        self.rejects: list[dict] = []

    def read(self, path: str | os.PathLike) -> Iterator[Block]:
        """Yield the blocks of one file, in order; an empty file yields nothing.

        Raises
        ------
        SchemaMismatchError
            If the file's columns differ from the schema fixed by an earlier file.
        SourceError
            If the header cannot be parsed.
        """
        path = os.fspath(path)
        names: list[str] | None = None  # from this file's header line
        # One buffer for the whole file, refilled in place: pyarrow.csv copies what it
        # parses, so nothing refers to a block once it is parsed, and reusing the
        # memory spares a fresh allocation (and its page faults) per block.
        buf = bytearray(self.block_size)
        filled = 0  # bytes of buf holding data: the carried partial record, then new
        offset = 0  # file offset of buf[0]
        line = 1    # line number of buf[0]
        rows_seen = False
        cr = None   # its lines end with a lone CR: None until its first line break is read
        with _open(path) as f:
            eof = False
            while not eof:
                if len(buf) < filled + self.block_size:  # a record longer than a block
                    buf.extend(bytes(filled + self.block_size - len(buf)))
                with memoryview(buf) as view:
                    n = _read_full(f, view[filled:filled + self.block_size])
                if cr:   # lines end with a lone CR: read as LFs, byte for byte
                    buf[filled:filled + n] = buf[filled:filled + n].translate(CR_AS_LF)
                elif cr is None:   # no line break so far: all read is still in buf
                    cr = lone_cr(buf, 0, filled + n)
                    if cr:
                        buf[:filled + n] = buf[:filled + n].translate(CR_AS_LF)
                # A short read is the end of a regular file: its last record, even
                # without a final newline, is parsed (and typed) with the ones before.
                eof = n < self.block_size
                filled += n
                start = len(_BOM) if offset == 0 and buf.startswith(_BOM) else 0
                cut = filled if eof else last_record_end(buf, self._quote, filled)
                if eof and self._quote is not None:
                    cut = self._unclosed_at_end(path, buf, filled, offset, start, line)
                if cut <= start:
                    continue  # no complete record yet: read on
                if names is None:
                    lead = self._past_preamble(buf, start, cut)
                    if lead is None or _BLANK.fullmatch(buf, lead, cut):
                        if eof:
                            return  # an empty file, or only blank lines (or a preamble)
                        continue    # the header is still to come
                    lead = _EMPTY_LINES.match(buf, lead, cut).end()  # skipped, as by Arrow
                    start = first_record_end(buf, self._quote, cut, start=lead) or cut
                    names = self._header(path, buf, lead, start, offset)
                    self._check_names(path, names)
                if not _EMPTY_LINES.fullmatch(buf, start, cut):
                    table, rows = self._rows(path, buf, start, cut, offset, names,
                                             line + buf.count(b"\n", 0, start))
                    table = self._conform(path, table)
                    if table.num_rows:
                        if rows is None:
                            rows = _row_starts(buf, start, cut, self._quote, table.num_rows)
                            rows = None if rows is None else rows + offset
                        yield Block(path, offset + start, offset + cut, table, rows)
                        rows_seen = True
                line += buf.count(b"\n", 0, cut)
                buf[:filled - cut] = buf[cut:filled]  # the partial record moves to the front
                filled -= cut
                offset += cut
        if names is not None and not rows_seen:
            # A header and no rows: still its columns (typed as far as known), so that
            # what is made of them has columns, not nothing.
            known = {f.name: f.type for f in self.schema} if self.schema is not None else self._given
            empty = pa.schema([pa.field(n, known.get(n, pa.string())) for n in names]).empty_table()
            yield Block(path, offset, offset, empty, np.empty(0, np.int64))

    def _past_preamble(self, buf: bytearray, start: int, cut: int) -> int | None:
        """Where the ``skiprows`` records at a file's start end; None if not all are in
        ``buf[start:cut]`` yet."""
        for _ in range(self.skiprows):
            start = first_record_end(buf, self._quote, cut, start=start)
            if not start:
                return None
        return start

    def _unclosed_at_end(self, path: str, buf: bytearray, filled: int, offset: int,
                         start: int, line: int) -> int:
        """Where the file's records end: before a last record whose quote never closes
        (recorded as a reject), else at the end."""
        last = max(start, last_record_end(buf, self._quote, filled))
        if buf.count(self._quote, last, filled) % 2 == 0:
            return filled
        text = bytes(buf[last:filled]).decode("utf-8", "replace")
        self.rejects.append({"file": path, "line": line + buf.count(b"\n", 0, last),
                             "offset": offset + last, "reason": "unclosed quote",
                             "text": text[:1000]})
        log.warning("%s: the record at byte %d has an unclosed quote and runs to the end of "
                    "the file: rejected", path, offset + last)
        return last

    def _header(self, path: str, buf: bytearray, start: int, end: int, offset: int) -> list[str]:
        """Column names from the header record in ``buf[start:end]``, made unique."""
        header = bytes(buf[start:end])   # a copy (a header is short): buf stays free to grow
        if not self._codec.utf8:
            header = self._codec.decode(header, final=True).data
        if not header.endswith((b"\n", b"\r")):
            header += b"\n"   # a header with nothing after it, not even a newline: Arrow wants one
        try:
            header.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: the header (bytes {offset + start}-{offset + end}) is not "
                              f"{self._codec.name}: {e.reason} at byte {offset + start + e.start} (in "
                              "another encoding? say which: encoding=, --encoding)") from None
        try:
            names = pacsv.read_csv(pa.py_buffer(header), parse_options=self._parse,
                                   read_options=pacsv.ReadOptions(use_threads=False)).column_names
        except pa.ArrowInvalid as e:
            raise SourceError(f"{path}: header at bytes {offset + start}-{offset + end}: {e}") from e
        return unique_names(names)

    def _rows(self, path: str, buf: bytearray, start: int, end: int, offset: int,
              names: list[str], line: int) -> tuple[pa.Table, np.ndarray | None]:
        """The rows of ``buf[start:end]`` (file offset ``offset + start``, line ``line``),
        and where each starts in the file when the records had to be parsed one by one."""
        chunk = memoryview(buf)[start:end]
        try:
            block = None if self._codec.utf8 else self._codec.decode(bytes(chunk), final=True)
            table = self._convert(path, chunk if block is None else block.data, offset + start,
                                  pacsv.ReadOptions(column_names=names, use_threads=False))
            if table is not None:
                return table, None
            table = self._by_record(path, bytes(chunk), offset + start, line, names, block)
            return table.drop_columns(["_offset"]), table["_offset"].to_numpy()
        finally:
            chunk.release()

    def _by_record(self, path: str, raw: bytes, offset: int, line: int,
                   names: list[str], block=None) -> pa.Table:
        """A block some record of which does not fit: each record on its own, as a
        followed file's are. Records that do not parse (more fields than the header, an
        unclosed quote) and values that do not fit their column's type become rejects
        (:attr:`rejects`); the rest are rows, with an ``_offset`` column."""
        from .lines import CsvLines
        quoted = self._quote is not None
        data = raw if block is None else block.data   # UTF-8; offsets stay the file's
        ends = record_ends(data, quoted=quoted)
        if not len(ends) or ends[-1] < len(data):
            ends = np.append(ends, len(data))
        bounds = np.concatenate([[0], ends]).astype(np.int64)
        newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        starts = bounds[:-1] if block is None else block.to_source(bounds[:-1])
        records = Records(data, bounds, line + np.searchsorted(newlines, bounds[:-1]),
                          offset + starts, self._codec.name)
        text = CsvLines(delimiter=self._parse.delimiter, names=names)
        text.schema = pa.schema([pa.field(n, pa.string()) for n in names])  # no typing there
        table, rejects = text.parse_body(records, path)
        self.rejects += rejects.to_pylist()
        if table is None:
            return pa.table({**{n: pa.array([], pa.string()) for n in names},
                             "_offset": pa.array([], pa.int64())}).cast(self._typed(names))
        if self.schema is None:  # the first block: types from its rows, as the reader infers them
            rows = io.BytesIO()
            pacsv.write_csv(table.drop_columns(["_offset"]), rows,
                            pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
            inferred = pacsv.read_csv(
                pa.py_buffer(rows.getvalue()),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in self._given}, strings_can_be_null=True))
            self.schema = pa.schema([pa.field(f.name, self._given.get(
                f.name, pa.string() if pa.types.is_null(f.type) else f.type)) for f in inferred.schema])
            self._schema_from = path
        return self._fit(path, table, records)

    def _typed(self, names: list[str]) -> pa.Schema:
        fixed = {f.name: f.type for f in self.schema} if self.schema is not None else {}
        fixed.update(self._given)
        return pa.schema([pa.field(n, fixed.get(n, pa.string())) for n in names]
                         + [pa.field("_offset", pa.int64())])

    def _fit(self, path: str, table: pa.Table, records: Records) -> pa.Table:
        """Text columns cast to the fixed types. A row with a value that does not fit is
        a reject, named by its first misfit; an inferred int64 column whose misfits are
        numbers widens to float64 instead."""
        from .lines import _reject
        types = self._typed([n for n in table.column_names if n != "_offset"])
        nulls = pa.array(pacsv.ConvertOptions().null_values, pa.string())
        bad: dict[int, str] = {}
        columns = []
        for f in types:
            col = table[f.name]
            if f.name != "_offset":  # what pyarrow's reader takes as missing
                col = pc.if_else(pc.is_in(col, nulls), pa.scalar(None, pa.string()), col)
            if f.name == "_offset" or pa.types.is_string(f.type):
                columns.append(col)
                continue
            target = f.type
            fits = _fits(col, target)
            if (not fits.all() and f.name not in self._given and pa.types.is_integer(target)
                    and (_fits(col, pa.float64()) & ~fits).any()):
                target = pa.float64()  # 2.5 in an int64 column: a wider number, not a misfit
                fits = _fits(col, target)
                self._widen_to(path, f.name, target)
            for i in np.flatnonzero(~fits):
                bad.setdefault(int(i), f"{f.name}={col[int(i)].as_py()!r} does not fit {target}")
            columns.append(pc.if_else(pa.array(fits), col, pa.scalar(None, pa.string())).cast(target))
        out = pa.table(columns, names=types.names)
        if bad:
            at = np.searchsorted(records.offsets, table["_offset"].to_numpy())
            for i, why in sorted(bad.items()):
                self.rejects.append(_reject(path, records, int(at[i]), why))
            keep = np.ones(out.num_rows, bool)
            keep[list(bad)] = False
            out = out.filter(pa.array(keep))
        return out

    def _widen_to(self, path: str, name: str, wider: pa.DataType) -> None:
        old = self.schema.field(name).type
        self.schema = self.schema.set(self.schema.get_field_index(name), pa.field(name, wider))
        self.widened.append(f"{name!r} {old} -> {wider}")
        log.warning("%s: values that need a wider type than the first block's: widened column "
                    "%r from %s to %s", path, name, old, wider)

    def _conform(self, path: str, table: pa.Table) -> pa.Table:
        """Check ``table`` against the fixed schema, or fix the schema from it."""
        if self.schema is None:
            if not table.num_rows:
                return table  # no rows say nothing about types
            # A column empty in the first block would be typed null and then reject
            # every later value; string is the type that takes anything.
            self.schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type)
                                     else f for f in table.schema])
            self._schema_from = path
            return table.cast(self.schema)
        if table.column_names != self.schema.names:
            self._check_names(path, table.column_names)
            table = table.select(self.schema.names)  # same columns, another order
        return table

    def _check_names(self, path: str, names: list[str]) -> None:
        """Every file has the first file's columns - a header-only one included."""
        expected = self.schema.names if self.schema is not None else self._names
        if expected is None:
            self._names, self._schema_from = names, path
        elif sorted(names) != sorted(expected):
            raise SchemaMismatchError(f"{path}: columns {names} do not match {expected} "
                                      f"(fixed by {self._schema_from})")

    def _convert(self, path: str, chunk, offset: int, read: pacsv.ReadOptions) -> pa.Table | None:
        """The block parsed whole with the fixed types; None if some record does not fit."""
        types = self._given if self.schema is None else {f.name: f.type for f in self.schema}
        convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
        try:
            table = pacsv.read_csv(pa.py_buffer(chunk), read_options=read,
                                   parse_options=self._parse, convert_options=convert)
        except pa.ArrowInvalid:
            return None
        # Text that is not UTF-8 (not decodable in the file's encoding) comes back as a
        # binary column: record by record, where such records are rejects.
        if any(pa.types.is_binary(f.type) and not pa.types.is_binary(types.get(f.name, pa.null()))
               for f in table.schema):
            return None
        return table


#: What pyarrow's CSV reader takes as a number (numbers are the common misfit: a
#: pattern finds them at once; other types are found by halving, below).
_NUMBER = {"int": r"^[+-]?[0-9]+$",
           "float": r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$|^[+-]?(?i:inf|infinity|nan)$"}


def _fits(col, kind: pa.DataType) -> np.ndarray:
    """Which values of a text column cast to ``kind`` (missing ones do)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    try:
        col.cast(kind)
        return np.ones(len(col), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    pattern = (_NUMBER["int"] if pa.types.is_integer(kind)
               else _NUMBER["float"] if pa.types.is_floating(kind) else None)
    if pattern is not None:
        fits = pc.fill_null(pc.match_substring_regex(col, pattern), True).to_numpy(zero_copy_only=False)
        try:
            col.filter(pa.array(fits)).cast(kind)  # e.g. an int64 overflow would not
            return fits
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    # Each distinct value once (misfits tend to repeat: "-", "n/a", "unknown"), found by
    # halving: a misfit costs about 2 log2(n) casts, dense ones value by value.
    values = pc.unique(col.drop_null())
    good = np.ones(len(values), bool)

    def halve(lo: int, hi: int) -> None:
        try:
            values.slice(lo, hi - lo).cast(kind)
            return
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        if hi - lo <= 16:
            for i in range(lo, hi):
                try:
                    values.slice(i, 1).cast(kind)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    good[i] = False
            return
        mid = (lo + hi) // 2
        halve(lo, mid)
        halve(mid, hi)

    halve(0, len(values))
    ok = pc.or_(pc.is_in(col, values.filter(pa.array(good))), pc.is_null(col))
    return ok.to_numpy(zero_copy_only=False)


def _row_starts(buf, start: int, end: int, quote: bytes | None, rows: int) -> np.ndarray | None:
    """Where each record of ``buf[start:end]`` that Arrow made a row starts: every record
    but empty lines (Arrow skips those). None if that does not give ``rows`` records."""
    if quote not in (None, b'"'):
        return None
    with memoryview(buf) as view:
        ends = record_ends(view[start:end], quoted=quote is not None)
        if not len(ends) or ends[-1] < end - start:
            ends = np.append(ends, end - start)
        starts = np.concatenate([[0], ends[:-1]])
        arr = np.frombuffer(view[start:end], np.uint8)
        size = ends - starts - (arr[ends - 1] == 10)
        empty = (size == 0) | ((size == 1) & (arr[np.minimum(starts, len(arr) - 1)] == 13))
        found = starts[~empty].astype(np.int64) + start
        del arr
    return found if len(found) == rows else None


def _open(path: str):
    """``path``'s bytes: decompressed when it is compressed (a rotated ``.gz`` copy)."""
    from .compressed import HEAD, compression_of, open_decompressed
    with open(path, "rb") as f:
        kind = compression_of(f.read(HEAD))
    return open(path, "rb") if kind is None else open_decompressed(path, kind)


def _read_full(f, view: memoryview) -> int:
    """Fill ``view`` but at the end: a decompressor may return less before its end."""
    n = 0
    while n < len(view):
        got = f.readinto(view[n:])
        if not got:
            break
        n += got
    return n
