"""The rows a Subscriber keeps for ``frame()`` and ``collect()``: the last ``limit``, compacted.

Pure logic, no threads. A table decoded zero-copy from a small message keeps its whole
ZeroMQ frame and a few KiB of Arrow and Python objects alive while ``table.nbytes``
says a few bytes: a million one-row messages (every plain-text message is one) would
pin gigabytes that no limit saw. So consecutive small tables of one producer and
schema are combined into one contiguous table every :data:`COMPACT_EVERY` tables: the
frames are released and ``nbytes`` is again what the rows cost.
"""

from __future__ import annotations

import collections

import pyarrow as pa

__all__ = ["Retained", "SMALL_TABLE", "COMPACT_EVERY", "compact"]

#: Tables under this many bytes are combined with their neighbours.
SMALL_TABLE = 64 << 10
#: How many small tables wait before they are combined (and their frames released).
COMPACT_EVERY = 256


def size(table: pa.Table) -> int:
    """The bytes of the buffers ``table`` keeps alive.

    ``Table.nbytes`` counts only the ranges its rows reference, walking every buffer
    (~14 µs for a 1 MiB table: a tenth of receiving one); this sums buffer sizes (~0.4
    µs). For a slice it is the whole buffers - what the slice keeps in memory.
    """
    return table.get_total_buffer_size()


def compact(tables: list[pa.Table]) -> pa.Table:
    """One table of ``tables`` (one schema): contiguous, copied, if they are small."""
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables)
    if table.nbytes < SMALL_TABLE * len(tables):  # small on average: copying is cheap
        table = table.combine_chunks()
    return table


class Retained:
    """The last ``limit`` rows received (``None``: all, ``0``: none), each tagged with its producer.

    Parameters
    ----------
    limit : int or None
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.rows = 0
        self.nbytes = 0
        #: The columns of the last table received, rows or not: what an empty frame() has.
        self.schema: pa.Schema | None = None
        self._entries: collections.deque[tuple[bytes, pa.Table]] = collections.deque()
        self._tail: tuple[bytes, list[pa.Table]] | None = None  # small, not yet combined

    def add(self, producer: bytes, table: pa.Table) -> int:
        """Keep ``table``; return how many of the oldest rows were evicted to make room."""
        if table.num_columns:
            self.schema = table.schema
        if self.limit == 0 or not table.num_rows:
            return 0
        self.rows += table.num_rows
        nbytes = size(table)
        self.nbytes += nbytes
        if nbytes >= SMALL_TABLE:
            self._close_tail()
            self._entries.append((producer, table))
        else:
            tail = self._tail
            if tail is not None and (tail[0] != producer or not tail[1][0].schema.equals(table.schema)):
                self._close_tail()
                tail = None
            if tail is None:
                self._tail = (producer, [table])
            else:
                tail[1].append(table)
                if len(tail[1]) >= COMPACT_EVERY:
                    self._close_tail()
        return self._evict()

    def tables(self, producers: set[bytes] | None = None) -> list[pa.Table]:
        """The tables kept, oldest first (only those of ``producers`` if given)."""
        return [t for p, t in self.items() if producers is None or p in producers]

    def items(self) -> list[tuple[bytes, pa.Table]]:
        """(producer, table) for every table kept, oldest first."""
        out = list(self._entries)
        if self._tail is not None:
            out += [(self._tail[0], t) for t in self._tail[1]]
        return out

    def _close_tail(self) -> None:
        if self._tail is None:
            return
        producer, tables = self._tail
        self._tail = None
        table = compact(tables)
        self.nbytes += size(table) - sum(size(t) for t in tables)
        self._entries.append((producer, table))

    def _evict(self) -> int:
        if self.limit is None or self.rows <= self.limit:
            return 0
        evicted = 0
        while self.rows > self.limit:
            if not self._entries:
                self._close_tail()
            producer, first = self._entries[0]
            excess = self.rows - self.limit
            if first.num_rows <= excess:
                self._entries.popleft()
                gone = first.num_rows
                self.nbytes -= size(first)
            else:
                # zero-copy: the oldest rows go, the rest keeps the buffers it shares
                rest = first.slice(excess)
                self._entries[0] = (producer, rest)
                gone = excess
                self.nbytes -= size(first) - size(rest)
            self.rows -= gone
            evicted += gone
        return evicted
