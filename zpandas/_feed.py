"""Tables handed over by one thread and folded on another: how a Subscriber's socket
thread feeds an aggregation without doing its pandas work.

The socket thread only appends (:meth:`Feed.put`); a thread of the feed's own
(``zpandas-aggregate-N``) folds what waits, and so does a caller that wants results now
(:meth:`Feed.drain`, under the aggregation's lock, so tables are folded in the order
they were put). A bounded backlog: past ``limit_bytes`` waiting, the socket thread waits
for the folding (``block``) or the table is left out and counted.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Callable

import pyarrow as pa

_ids = itertools.count(1)


class Feed:
    """A backlog of tables, folded by ``fold(table)`` under ``lock`` on a thread of its own.

    Parameters
    ----------
    fold : callable (pyarrow.Table) -> None
        Folds a run of tables of one schema, concatenated (called with ``lock`` held).
    lock : threading.Lock
        The aggregation's lock.
    tables : list of pyarrow.Table
        The backlog to start with (rows received before the aggregation existed).
    limit_bytes : int
        The backlog's bound.
    """

    def __init__(self, fold: Callable[[pa.Table], None], lock: threading.Lock, tables: list,
                 limit_bytes: int) -> None:
        self._fold, self._lock, self._limit = fold, lock, limit_bytes
        self._tables: collections.deque[pa.Table] = collections.deque(tables)
        self._bytes = sum(t.nbytes for t in tables)
        self._cond = threading.Condition()
        self._open = True
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"zpandas-aggregate-{next(_ids)}")
        self._thread.start()

    def put(self, table: pa.Table, block: bool) -> bool:
        """Hand a table over (cheap, no pandas); False if it was left out (backlog full
        and not ``block``)."""
        with self._cond:
            if self._tables and self._bytes + table.nbytes > self._limit:
                if not block:
                    return False
                self._cond.wait_for(lambda: not self._tables or not self._open
                                    or self._bytes + table.nbytes <= self._limit)
            self._tables.append(table)
            self._bytes += table.nbytes
            self._cond.notify_all()
        return True

    def drain(self) -> None:
        """Fold the tables waiting now (caller holds ``lock``).

        Those waiting now, not any that come meanwhile, so a fast feed never keeps a
        caller of ``result()`` waiting for the lock; and runs of one schema as one
        table, so a stream of small messages costs one ``to_pandas`` and groupby per run.
        """
        with self._cond:
            tables = list(self._tables)
            self._tables.clear()
            self._bytes = 0
            self._cond.notify_all()  # room for a socket thread waiting to put
        run: list[pa.Table] = []
        for table in tables:
            if run and not table.schema.equals(run[0].schema):
                self._fold(pa.concat_tables(run))
                run = []
            run.append(table)
        if run:
            self._fold(pa.concat_tables(run))

    def close(self, timeout: float | None) -> None:
        """No more tables come: fold what waits, then end the thread. A put after this
        does not wait, and is folded by the next :meth:`drain`."""
        with self._cond:
            self._open = False
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._tables or not self._open)
                if not self._tables:
                    return
            with self._lock:
                self.drain()
