"""Micro-batching by row count and latency: pure logic, no threads, no clock of its own.

The caller passes ``now`` (seconds, any monotonic clock), so tests drive it with a fake
clock. One micro-batch holds tables of one schema only: a table with a new schema
closes the pending batch first, so every micro-batch converts to one DataFrame.
"""

from __future__ import annotations

import pyarrow as pa

from ._retained import compact


class MicroBatcher:
    """Collect tables into micro-batches of ``max_rows`` rows, or fewer once ``max_latency`` old.

    Parameters
    ----------
    max_rows : int
        Rows are released in batches of exactly this many as soon as they are there.
    max_latency : float
        A pending batch is released once its oldest table is this many seconds old.
    """

    def __init__(self, max_rows: int, max_latency: float) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        if max_latency < 0:
            raise ValueError("max_latency must be >= 0")
        self.max_rows = max_rows
        self.max_latency = max_latency
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._since: float | None = None

    @property
    def pending_rows(self) -> int:
        return self._rows

    def add(self, table: pa.Table, now: float) -> list[pa.Table]:
        """Add ``table``; return the micro-batches that are now complete (maybe none)."""
        out = []
        if self._tables and not table.schema.equals(self._tables[0].schema):
            out.append(self._take())
        if self._since is None:
            self._since = now
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self.max_rows:
            # Full micro-batches of max_rows (zero-copy slices); the rest keeps waiting
            # with the age of the rows it holds.
            since = self._since
            whole = self._take()
            full = whole.num_rows - whole.num_rows % self.max_rows
            out += [whole.slice(i, self.max_rows) for i in range(0, full, self.max_rows)]
            if full < whole.num_rows:
                self._tables, self._rows, self._since = [whole.slice(full)], whole.num_rows - full, since
        return out

    def due(self, now: float) -> list[pa.Table]:
        """Return the pending batch if it has waited ``max_latency``; else nothing."""
        if self._since is not None and now - self._since >= self.max_latency:
            return [self._take()]
        return []

    def timeout(self, now: float) -> float | None:
        """Seconds until the pending batch is due, or ``None`` when nothing is pending."""
        if self._since is None:
            return None
        return max(0.0, self._since + self.max_latency - now)

    def flush(self) -> list[pa.Table]:
        """Return whatever is pending."""
        return [self._take()] if self._tables else []

    def _take(self) -> pa.Table:
        tables, self._tables, self._rows, self._since = self._tables, [], 0, None
        return compact(tables)
