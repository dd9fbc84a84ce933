"""Where event time lies in each file: an index built as the live stream reads the files.

For each file incarnation (the live stream's key: a name that follows the file through a
rename and through copytruncate to its copy) the index holds *spans* of about
:data:`SPAN_BYTES` of file, contiguous from the file's start: ``(start, end, tmin, tmax,
crc, n)`` - the earliest and latest event time of the rows parsed from ``[start, end)``
and a CRC of the span's first ``n`` bytes. A replay asked for ``since`` starts at the first span
whose latest time is at or after it: every row before that is earlier, however out of
order the file is (bisection, for files the index has not seen, assumes times grow along
the file give or take a minute). The CRCs are checked against the file before any span
is skipped: an index that does not describe the file any more is not used.

With a checkpoint the spans are kept in its database (table ``times``) and expire with
its entries, so a restarted producer still knows the files it read before.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SPAN_BYTES", "TimeIndex", "start_from", "time_column"]

#: A span closes once it covers this many bytes of file.
SPAN_BYTES = 1 << 20
#: Bytes at a span's start its CRC covers.
CRC_BYTES = 64
#: A file's first record may start after a byte-order mark.
_BOM_BYTES = 4

#: (start, end, tmin, tmax, crc, n): event times in ns (None: no timed rows in it), the
#: CRC-32 of the n bytes at start
Span = tuple


def time_column(table: pa.Table) -> int | None:
    """The event time: the first timestamp column."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            return i
    return None


def _least(a, b):
    return b if a is None else a if b is None else min(a, b)


def _most(a, b):
    return b if a is None else a if b is None else max(a, b)


class TimeIndex:
    """Spans of event time per file key, noted as the live stream parses its chunks."""

    def __init__(self, checkpoint=None) -> None:
        self._lock = threading.Lock()
        self._ckpt = checkpoint
        self._spans: dict[str, list[Span]] = {}   # key -> spans in file order; the last grows
        self._unsaved: dict[str, set[int]] = {}   # key -> starts of spans changed since saved
        self._stopped: set[str] = set()           # keys whose index ends (a gap): not noted
        if checkpoint is not None:
            self._spans = checkpoint.load_times()

    @classmethod
    def of(cls, spans: dict[str, list[Span]]) -> TimeIndex:
        """An index of these spans (a replay's process gets a copy of the live one's)."""
        index = cls()
        index._spans = {k: list(v) for k, v in spans.items()}
        return index

    def note(self, key: str, start: int, end: int, data: bytes, base: int,
             table: pa.Table | None) -> None:
        """Chunk ``[start, end)`` of ``key`` was parsed into ``table`` (None: no rows; its
        ``_offset`` column says where each row starts); ``data`` holds the file's bytes
        from offset ``base``."""
        offsets = times = None
        if table is not None and table.num_rows and "_offset" in table.column_names:
            t = time_column(table)
            if t is not None:
                offsets = table.column("_offset").to_numpy()
                times = pc.cast(table.column(t), pa.timestamp("ns", "UTC")).cast(pa.int64())
        with self._lock:
            if key in self._stopped:
                return
            spans = self._spans.setdefault(key, [])
            changed = self._unsaved.setdefault(key, set())
            if spans and start < spans[-1][1]:
                # read again from an earlier place (a restart resumed at its checkpoint,
                # behind what was noted): what lies past it is noted again as it comes
                while spans and spans[-1][0] > start:
                    spans.pop()
            at = spans[-1][1] if spans else 0
            if start > at and (spans or start > _BOM_BYTES):
                # bytes never parsed here (resumed past what the index knew, or skipped):
                # their times are unknown, so the index of this file ends before them
                self._stopped.add(key)
                return
            pos, row = start, 0
            while pos < end:
                # the last span takes what it has room for (or a part it had again: its
                # times stay a superset of its rows', which only makes it skipped less);
                # then new spans, each ending where a row starts
                grows = bool(spans) and (pos < spans[-1][1] or spans[-1][1] - spans[-1][0] < SPAN_BYTES)
                limit = max(spans[-1][0] + SPAN_BYTES, spans[-1][1]) if grows else pos + SPAN_BYTES
                stop, upto = end, row
                if offsets is not None:
                    upto = int(np.searchsorted(offsets, limit, "left")) if limit < end else len(offsets)
                    upto = max(upto, row + 1)   # a piece takes a row at least
                    stop = int(offsets[upto]) if upto < len(offsets) else end
                    if stop <= pos:   # (a row past the chunk's start: never, but no loop)
                        stop = end
                lo = hi = None
                if offsets is not None and upto > row:
                    mm = pc.min_max(times.slice(row, upto - row))
                    lo, hi = mm["min"].as_py(), mm["max"].as_py()
                if grows:
                    s0, e0, lo0, hi0, crc, n = spans.pop()
                    span = (s0, max(e0, stop), _least(lo, lo0), _most(hi, hi0), crc, n)
                else:
                    head = data[pos - base:pos - base + min(CRC_BYTES, stop - pos)]
                    span = (pos, stop, lo, hi, zlib.crc32(head), len(head))
                spans.append(span)
                changed.add(span[0])
                pos, row = stop, upto

    def spans(self, keys) -> dict[str, list[Span]]:
        """The spans of each of ``keys`` known (a copy)."""
        with self._lock:
            return {k: list(self._spans[k]) for k in keys if self._spans.get(k)}

    def save(self) -> None:
        """Write the spans changed since the last save to the checkpoint (if any)."""
        if self._ckpt is None:
            return
        with self._lock:
            changed = {k: [sp for sp in self._spans.get(k, ()) if sp[0] in starts]
                       for k, starts in self._unsaved.items()}
            # spans past each key's last are gone (read again from an earlier place)
            last = {k: self._spans[k][-1][0] if self._spans.get(k) else -1 for k in self._unsaved}
            self._unsaved = {}
        if changed:
            self._ckpt.save_times(changed, last)

    def forget(self, present) -> None:
        """Drop the spans of keys not in ``present`` (files the live stream no longer knows)."""
        present = set(present)
        with self._lock:
            for k in [k for k in self._spans if k not in present]:
                del self._spans[k]
                self._unsaved.pop(k, None)
            self._stopped &= present


def start_from(spans: list[Span], since_ns: int, read_at) -> tuple[int, bool] | None:
    """Where a replay for ``since_ns`` starts by the index: ``(offset, exact)`` - exact when
    a span at or after ``since`` was found (else ``offset`` is where the index ends, and
    the rest of the file is to be searched); None if the spans do not describe the file
    (not contiguous from its start, or a CRC differs: ``read_at(offset, n)`` gives the
    file's n bytes there)."""
    at = spans[0][0] if spans and spans[0][0] <= _BOM_BYTES else 0
    for start, end, _lo, hi, crc, n in spans:
        if start != at or zlib.crc32(read_at(start, n)) != crc:
            return None
        if hi is not None and hi >= since_ns:
            return start, True
        at = end
    return at, False
