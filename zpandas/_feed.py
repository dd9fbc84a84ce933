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
    """A backlog of tables, folded by ``fold`` under ``lock`` on a thread of its own.

    Every table comes from a *source* (a producer's id): a run of one schema is folded
    as one table together with the sources of its rows, so that event-time progress can
    be kept per producer.

    Parameters
    ----------
    fold : callable (pyarrow.Table, list of (source, rows)) -> None
        Folds a run of tables of one schema, concatenated, with the source and row count
        of each table in order (called with ``lock`` held).
    end : callable (source) -> None
        A source ended its stream (called with ``lock`` held, after its rows were folded).
    settle : callable () -> None
        Called (with ``lock`` held) once everything taken was folded: where windows may
        close. Not between runs: rows taken together count together, so a backlog of
        several producers' rows is folded whole before any window becomes final.
    lock : threading.Lock
        The aggregation's lock.
    items : list of (source, pyarrow.Table)
        The backlog to start with (rows received before the aggregation existed).
    limit_bytes : int
        The backlog's bound.
    """

    def __init__(self, fold: Callable[[pa.Table, list], None], end: Callable[[object], None],
                 settle: Callable[[], None], lock: threading.Lock, items: list,
                 limit_bytes: int) -> None:
        self._fold, self._end, self._settle = fold, end, settle
        self._lock, self._limit = lock, limit_bytes
        # (source, table), or (source, None) for "source ended"
        self._items: collections.deque[tuple[object, pa.Table | None]] = collections.deque(items)
        self._bytes = sum(t.nbytes for _, t in items if t is not None)
        self._cond = threading.Condition()
        self._open = True
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"zpandas-aggregate-{next(_ids)}")
        self._thread.start()

    def put(self, source, table: pa.Table, block: bool) -> bool:
        """Hand a table over (cheap, no pandas); False if it was left out (backlog full
        and not ``block``)."""
        with self._cond:
            if self._items and self._bytes + table.nbytes > self._limit:
                if not block:
                    return False
                self._cond.wait_for(lambda: not self._items or not self._open
                                    or self._bytes + table.nbytes <= self._limit)
            self._items.append((source, table))
            self._bytes += table.nbytes
            self._cond.notify_all()
        return True

    def put_end(self, source) -> None:
        """``source`` ended its stream: said after its last table, in order."""
        with self._cond:
            self._items.append((source, None))
            self._cond.notify_all()

    def drain(self) -> None:
        """Fold the tables waiting now (caller holds ``lock``).

        Those waiting now, not any that come meanwhile, so a fast feed never keeps a
        caller of ``result()`` waiting for the lock; and runs of one schema as one
        table, so a stream of small messages costs one ``to_pandas`` and groupby per run.
        """
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()  # room for a socket thread waiting to put
        run: list[pa.Table] = []
        sources: list[tuple[object, int]] = []
        for source, table in items:
            if run and (table is None or not table.schema.equals(run[0].schema)):
                self._fold(pa.concat_tables(run), sources)
                run, sources = [], []
            if table is None:
                self._end(source)
            else:
                run.append(table)
                sources.append((source, table.num_rows))
        if run:
            self._fold(pa.concat_tables(run), sources)
        if items:
            self._settle()

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
                self._cond.wait_for(lambda: self._items or not self._open)
                if not self._items:
                    return
            with self._lock:
                self.drain()
