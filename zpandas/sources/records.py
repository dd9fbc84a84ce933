"""Records of a block of a file, found and held without a Python object per line.

A block of bytes read from a file is cut into records by array operations: the
positions of its newlines (numpy), minus those inside quotes for CSV (a newline is
outside quotes when an even number of quote characters precede it), grouped into
multiline records by a start pattern evaluated over all lines at once. The records stay
one ``bytes`` object plus arrays of bounds, line numbers and byte offsets; a format turns
them into an Arrow string array without copying (see :meth:`Records.texts`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Record", "Records", "record_ends", "line_starts_matching", "CR_AS_LF", "lone_cr",
           "CrAsLf", "Holes"]

#: A file whose lines end with a lone CR (classic Mac OS, old spreadsheet exports) is read
#: with its CRs as LFs: one byte for one, so offsets stay the file's, and every record
#: cut, line count and parse sees the lines Arrow and pandas would. (Files in encodings
#: whose newline is not the byte 0x0A - UTF-16, UTF-32 - are decoded first instead.)
CR_AS_LF = bytes.maketrans(b"\r", b"\n")


def lone_cr(data, start: int = 0, end: int | None = None) -> bool | None:
    """Whether the first line break in ``data[start:end]`` is a lone CR; None if there is
    none yet (or a CR is the last byte: an LF may follow)."""
    end = len(data) if end is None else end
    cr, lf = data.find(b"\r", start, end), data.find(b"\n", start, end)
    if cr < 0 or 0 <= lf < cr:
        return None if lf < 0 else False
    return None if cr + 1 == end else data[cr + 1] != 0x0A


class CrAsLf:
    """A binary file whose lines end with a lone CR, read with them as LFs (:data:`CR_AS_LF`)."""

    def __init__(self, f) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n).translate(CR_AS_LF)

    def pread(self, n: int, at: int) -> bytes:
        return os.pread(self._f.fileno(), n, at).translate(CR_AS_LF)

    def seek(self, *args) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()


class Holes:
    """A block's NUL bytes, left out of its text: a log's holes are not text.

    A writer that kept its offset when ``copytruncate`` emptied its file writes its next
    line past a hole of NULs as long as the file was; a crash leaves blocks of NULs. Kept
    in, they glue themselves to the line after them, which then does not parse. Positions
    in :attr:`text` map back to positions in the block with :meth:`to_source`.
    """

    def __init__(self, data: bytes) -> None:
        edges = np.diff((np.frombuffer(data, np.uint8) == 0).view(np.int8), prepend=0, append=0)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        self._before = np.concatenate([[0], np.cumsum(ends - starts)])   # NULs before run k
        self._at = starts - self._before[:-1]   # where run k was, in the text
        self.text = data.replace(b"\0", b"")

    def to_source(self, positions):
        """Positions in :attr:`text` -> positions in the block. A position right after a
        run of NULs maps past them: the end of the text maps to the end of the block."""
        positions = np.asarray(positions, np.int64)
        return positions + self._before[np.searchsorted(self._at, positions, side="right")]


@dataclass(frozen=True)
class Record:
    """One record of a file: its bytes (without the final newline), line and offset."""

    raw: bytes
    line: int
    offset: int


@dataclass(frozen=True)
class Records:
    """Records of one block: record ``i`` is ``data[bounds[i]:bounds[i+1]]`` less one final newline.

    ``lines[i]`` is its line number and ``offsets[i]`` its byte offset in the file.
    ``data`` is UTF-8 (the file's bytes, or the file decoded from ``encoding``): bytes in
    it that are not UTF-8 did not decode.
    """

    data: bytes
    bounds: np.ndarray
    lines: np.ndarray
    offsets: np.ndarray
    encoding: str = "utf-8"

    @classmethod
    def of(cls, records: list[Record]) -> Records:
        """Records from :class:`Record` objects (plain text messages, tests)."""
        data = b"".join(r.raw + b"\n" for r in records)
        bounds = np.zeros(len(records) + 1, np.int64)
        np.cumsum([len(r.raw) + 1 for r in records], out=bounds[1:])
        return cls(data, bounds, np.array([r.line for r in records], np.int64),
                   np.array([r.offset for r in records], np.int64))

    @classmethod
    def empty(cls) -> Records:
        none = np.zeros(0, np.int64)
        return cls(b"", np.zeros(1, np.int64), none, none)

    def __len__(self) -> int:
        return len(self.lines)

    def raw(self, i: int) -> bytes:
        b = self.data[self.bounds[i]:self.bounds[i + 1]]
        return b[:-1] if b.endswith(b"\n") else b

    def __iter__(self):
        for i in range(len(self)):
            yield Record(self.raw(i), int(self.lines[i]), int(self.offsets[i]))

    def __getitem__(self, key: slice) -> Records:
        start, stop, _ = key.indices(len(self))
        stop = max(start, stop)
        return Records(self.data, self.bounds[start:stop + 1], self.lines[start:stop],
                       self.offsets[start:stop], self.encoding)

    def lengths(self) -> np.ndarray:
        """Bytes of each record, its final newline excluded."""
        n = np.diff(self.bounds)
        if len(n):
            last = self.bounds[1:] - 1
            ends_nl = np.frombuffer(self.data, np.uint8)[last] == 10 if len(self.data) else last < 0
            n = n - ends_nl
        return n

    def texts(self) -> pa.Array | None:
        """The records as one Arrow string array (a view of the block, final ``\\r\\n`` trimmed).

        None if the block is not valid UTF-8 (the caller then goes record by record).
        """
        if not len(self):
            return pa.array([], pa.string())
        lo, hi = int(self.bounds[0]), int(self.bounds[-1])
        view = memoryview(self.data)[lo:hi]
        try:
            str(view, "utf-8")  # one C pass: is it UTF-8 (and so is every record)?
        except UnicodeDecodeError:
            return None
        if hi - lo >= 1 << 31:
            offsets, kind = (self.bounds - lo).astype(np.int64), pa.large_string()
        else:
            offsets, kind = (self.bounds - lo).astype(np.int32), pa.string()
        arr = pa.Array.from_buffers(kind, len(self), [None, pa.py_buffer(offsets), pa.py_buffer(view)])
        return pc.utf8_rtrim(arr, characters="\r\n")


def record_ends(data, *, quoted: bool) -> np.ndarray:
    """Offsets just past each newline of ``data`` that ends a record (int64).

    ``data`` starts at a record boundary. With ``quoted`` (RFC 4180 CSV), a newline
    ends a record only outside quotes: when an even number of quotes precede it.
    """
    arr = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(arr == 10)
    if quoted and len(nl):
        quotes = np.flatnonzero(arr == 34)
        if len(quotes):
            nl = nl[np.searchsorted(quotes, nl) % 2 == 0]
    return nl.astype(np.int64) + 1


def line_starts_matching(texts: pa.Array, start: re.Pattern) -> np.ndarray:
    """Boolean mask: which lines match ``start`` at their beginning (``re.match``)."""
    if start.pattern not in _RUST_REFUSED:
        import polars as pl
        try:
            hit = pl.from_arrow(texts).str.contains("^(?:" + start.pattern + ")")
            return np.array(hit.fill_null(False).to_numpy(), dtype=bool)  # writable
        except pl.exceptions.PolarsError:  # look-around, back-references: Python's re
            _RUST_REFUSED.add(start.pattern)
    return np.fromiter((start.match(t) is not None for t in texts.to_pylist()), bool, len(texts))


_RUST_REFUSED: set[str] = set()  # patterns polars' regex engine would not compile


def first_bytes(path: str, n: int) -> bytes:
    """A file's first ``n`` bytes; empty if it cannot be read (gone meanwhile)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""
