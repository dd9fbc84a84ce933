"""Rows waiting to become frames, and the tickets that keep frames in order.

A Producer coalesces small sends of one topic into frames of about ``frame_bytes``; rows
wait at most ``flush_interval`` for company. Each frame taken gets a ticket, in the
order its rows were accepted, and the socket owner sends in ticket order. Not
thread-safe: the Producer's lock guards it (encoding, :meth:`Coalescer.encode`, needs no
lock and runs on whichever thread took the frame).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from . import history, wire

#: A frame to encode: (ticket, topic, rows)
Job = tuple


@dataclass
class Pending:
    """Rows of one topic waiting to be coalesced into a frame."""

    tables: list = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0
    source: str = ""
    end: int = -1
    start: int = -1

    def accepts(self, table: pa.Table, source: str, start: int) -> bool:
        if not self.tables:
            return True
        # One header describes one source range, so only contiguous rows of the same
        # source (or rows with no source at all) are coalesced.
        return (table.schema.equals(self.tables[0].schema) and source == self.source
                and (not source or start == self.end))


class LiveView:
    """A live view this producer serves (:class:`zpandas.history.View`), parsed once;
    ``refused`` once its rows cannot give it (a column they lack)."""

    def __init__(self, subscription: bytes, view: history.View) -> None:
        from .where import parse
        self.subscription, self.view = subscription, view
        self.base = view.topic.encode("utf-8")
        self.where = None if view.where is None else parse(view.where)
        self.refused: str | None = None

    def serves(self, topic: bytes) -> bool:
        return self.refused is None and topic.startswith(self.base)


class Coalescer:
    """Per-topic pending rows and the ticket counter of one Producer."""

    def __init__(self, producer: bytes, name: str, frame_bytes: int, flush_interval: float,
                 compression: str | None = None, dictionary: bool = True) -> None:
        self.producer, self.name, self.compression = producer, name, compression
        self.dictionary = dictionary
        self.frame_bytes = frame_bytes
        self.flush_interval = flush_interval
        self.pending: dict[bytes, Pending] = {}
        self.tickets = 0          # tickets handed out
        #: Live views asked for, by subscription: replaced whole by the socket owner,
        #: read (never changed) by encode() on any thread.
        self.views: dict[bytes, LiveView] = {}

    def add(self, topic: bytes, table: pa.Table, source: str, start: int,
            end: int) -> tuple[list[Job], bool]:
        """Accept rows; return the frames now full, and whether rows started waiting."""
        jobs = []
        pend = self.pending.get(topic)
        started = pend is None or not pend.accepts(table, source, start)
        if started:
            if pend is not None:
                jobs.append(self.take(topic))
            pend = self.pending[topic] = Pending(since=time.monotonic(), source=source, start=start)
        pend.tables.append(table)
        pend.nbytes += table.nbytes
        pend.end = end
        if pend.nbytes >= self.frame_bytes:
            jobs.append(self.take(topic))
            started = False
        return jobs, started and not jobs

    def ticket(self) -> int:
        """A ticket for a message that is not coalesced (rejects)."""
        self.tickets += 1
        return self.tickets - 1

    def take(self, topic: bytes) -> Job:
        """The topic's pending rows as a frame to encode, with the next ticket."""
        return self.ticket(), topic, self.pending.pop(topic)

    def take_all(self) -> list[Job]:
        return [self.take(t) for t in list(self.pending)]

    def take_due(self, now: float) -> list[Job]:
        """Frames whose rows waited ``flush_interval``."""
        return [self.take(t) for t, p in list(self.pending.items())
                if now - p.since >= self.flush_interval]

    def next_due(self) -> float:
        """When the next pending rows are due (``inf`` if none wait)."""
        return min((p.since + self.flush_interval for p in self.pending.values()),
                   default=float("inf"))

    def encode(self, job: Job) -> list:
        """Encode a frame's rows as one message, or several of ~frame_bytes if unsourced."""
        _, topic, pend = job
        table = pend.tables[0] if len(pend.tables) == 1 else pa.concat_tables(pend.tables)
        header = wire.Header(producer=self.producer, name=self.name, source=pend.source,
                             start=pend.start, end=pend.end)
        views = [v for v in self.views.values() if v.serves(topic)]
        if not table.num_rows:   # columns only (see Producer.send)
            return wire.encode(table, topic=topic, header=header) + self._views(views, table, header)
        parts = 1 if pend.source else max(1, round(table.nbytes / self.frame_bytes))
        rows = table
        if self.dictionary:   # before slicing: the parts share the dictionaries
            table = wire.dictionary_encode(table)
        step = -(-table.num_rows // parts)
        frames = []
        for i in range(0, table.num_rows, step):
            frames += wire.encode(table.slice(i, step), topic=topic, header=header,
                                  compression=self.compression)
        return frames + self._views(views, rows, header)

    def _views(self, views: list[LiveView], table: pa.Table, header: wire.Header) -> list:
        """The messages of the live views of these rows: each view's rows under its own
        topic, with the rows' source range; or, once, why a view cannot be given."""
        frames = []
        for view in views:
            try:
                rows = history.select(table, view.where, view.view.columns)
            except (ValueError, pa.ArrowException) as e:
                view.refused = str(e)   # a column the rows lack (the columns they have)
                end = wire.Header(kind=wire.Kind.HISTORY_END, producer=self.producer, name=self.name)
                frames += wire.encode(history.end_table("refused", view.refused),
                                      topic=view.subscription, header=end)
                continue
            if table.num_rows and not rows.num_rows:
                continue   # nothing matched: nothing to send (heartbeats say we are here)
            if self.dictionary and rows.num_rows:
                rows = wire.dictionary_encode(rows)
            frames += wire.encode(rows, topic=view.subscription, header=header,
                                  compression=self.compression)
        return frames
