"""The stream protocol on top of the frame codec, without I/O.

:mod:`zpandas.wire` turns one message into frames and back. This module holds what a
*sequence* of messages means, the way h11 keeps HTTP's state machine apart from
sockets: the socket threads feed it messages and the clock, and act on what it returns.
So every loss and restart case is testable with no socket and a fake clock
(``tests/test_streams.py``).

Send side (:class:`SendStream`): data messages are numbered 0, 1, 2... per (producer,
topic) in send order, and carry the rows sent before them; control messages
(heartbeat, end-of-stream) carry the counts so far, so that a receiver also sees a lost
*last* message. It also decides which rows a checkpoint may claim.

Receive side (:class:`ReceiveStream`): one state per (producer, topic); events
:class:`Rows`, :class:`Gap` (``kind`` ``"gap"`` or ``"joined late"``),
:class:`EndOfStream`, :class:`Rejects` and :class:`Duplicate`. Rows of a source
already received (a restarted producer sending them again) are dropped here.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import history, wire

__all__ = ["SendStream", "ReceiveStream", "Rows", "Gap", "EndOfStream", "Rejects", "Duplicate",
           "StreamState", "Key"]

#: (producer id, topic)
Key = tuple[bytes, bytes]

#: Window over which rows/s is measured (seconds).
RATE_WINDOW = 5.0
#: Bounds of the receive state (documented in docs/guarantees.md): a peer that invents producer
#: ids or sources makes the oldest entries be forgotten, never memory grow.
MAX_STREAMS = 10_000            # (producer, topic) states
MAX_SOURCES = 100_000           # sources remembered for deduplication
SOURCES_PER_STREAM = 1_000      # byte ranges kept per stream


# -- events ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Rows:
    """New rows of a stream (never empty; already received rows removed)."""

    key: Key
    table: pa.Table


@dataclass(frozen=True)
class Gap:
    """Messages that never arrived: ``"gap"`` (lost on the way) or ``"joined late"``
    (sent before this receiver listened, or while it restarted)."""

    key: Key
    name: str
    kind: str
    messages: int
    rows: int
    time: float


@dataclass(frozen=True)
class EndOfStream:
    """The producer closed this stream (repeats are not reported again)."""

    key: Key


@dataclass(frozen=True)
class Rejects:
    """Lines the producer could not parse, as rows (``REJECT_SCHEMA``)."""

    key: Key
    name: str
    table: pa.Table


@dataclass(frozen=True)
class Duplicate:
    """Rows of a source that had been received already, dropped."""

    key: Key
    source: str
    rows: int


# -- send side ------------------------------------------------------------------------

class SendStream:
    """Numbering and checkpoint claims of one producer's messages, in send order.

    Parameters
    ----------
    producer : bytes
        The producer's 16-byte id.
    name : str
        Its human-readable name.
    in_flight : int
        How many data messages may still be inside this process after being handed to
        the socket (see :meth:`sent`).

    Not thread-safe: the caller serialises access.
    """

    def __init__(self, producer: bytes, name: str, in_flight: int) -> None:
        self.producer = producer
        self.name = name
        self.in_flight = in_flight
        self.topics: dict[bytes, list[int]] = {}    # topic -> [next seq, rows sent]
        self.claimed: dict[str, int] = {}          # source -> offset before which all rows left
        # (topic, source, end) of the last data messages sent (None: no source), oldest first
        self._unclaimed: collections.deque[tuple[bytes, str, int] | None] = collections.deque()
        # source -> topic -> starts of the parts accepted and not yet claimed, in order.
        # A block sharded by key goes out as one part per bucket topic, each covering
        # the block's byte range: the block is out only once every part is.
        self._parts: dict[str, dict[bytes, collections.deque[int]]] = {}
        self._ends: dict[str, int] = {}            # source -> largest end claimed

    def add_topic(self, topic: bytes) -> None:
        """A topic that gets end-of-stream at close, even if nothing is sent on it."""
        self.topics.setdefault(topic, [0, 0])

    def accepted(self, topic: bytes, source: str, start: int, end: int) -> None:
        """Rows of ``source``'s bytes ``[start, end)`` will go out on ``topic`` (in the
        order accepted on each topic); until they are claimed, no claim of ``source``
        passes ``start``."""
        if source and 0 <= start < end:
            self._parts.setdefault(source, {}).setdefault(topic, collections.deque()).append(start)

    def stamp(self, topic: bytes, header: bytearray, now_ns: int) -> None:
        """Number a packed header in place: the message is the next one on ``topic``."""
        seq, total = self.topics.setdefault(topic, [0, 0])
        wire.stamp(header, seq, now_ns, total)

    def sent(self, topic: bytes, kind: wire.Kind, rows: int, source: str = "",
             end: int = -1, *, claims: bool = True) -> None:
        """The socket took the message stamped last on ``topic``.

        A data message's rows may be claimed by a checkpoint once ``in_flight`` more
        data messages were sent after it: ZeroMQ's queue to a subscriber holds at most
        SNDHWM of them and its I/O thread one batch more, so by then they are in the
        kernel, which delivers them even if this process is killed. Rejects and control
        messages are not numbered and claim nothing: a chunk's rejects can leave while
        its rows still wait (a chunk of only rejects is read again after a restart, so
        its rejects may come twice; no row is lost). A live view's messages
        (``claims=False``) are numbered and claim nothing, nor count as in flight: they go
        to other subscribers' queues, behind which a data message waits no longer.

        A source's claim is where its first row still in this process starts (on any
        topic), or, with none left, the end of its last message claimed.
        """
        if kind is not wire.Kind.DATA:
            return
        counters = self.topics.setdefault(topic, [0, 0])
        counters[0] += 1
        counters[1] += rows
        if not claims:
            return
        # Every data message counts as one more behind the earlier ones; only sourced
        # ones have something to claim.
        self._unclaimed.append((topic, source, end) if source and end >= 0 else None)
        while len(self._unclaimed) > self.in_flight:
            self._claim(self._unclaimed.popleft())

    def all_sent(self) -> None:
        """Everything left the process (a normal close): claim the rest."""
        while self._unclaimed:
            self._claim(self._unclaimed.popleft())

    def _claim(self, item: tuple[bytes, str, int] | None) -> None:
        if item is None:
            return
        topic, source, end = item
        self._ends[source] = end = max(self._ends.get(source, -1), end)
        waiting = self._parts.get(source, {})
        starts = waiting.get(topic)
        while starts and starts[0] < item[2]:   # the parts this message carried
            starts.popleft()
        if starts is not None and not starts:
            del waiting[topic]
        if waiting:
            self.claimed[source] = min(s[0] for s in waiting.values())
        else:
            self._parts.pop(source, None)
            self.claimed[source] = end

    def control(self, kind: wire.Kind) -> list[tuple[bytes, bytes]]:
        """``(topic, packed header)`` of one heartbeat or end-of-stream per topic; stamp
        each when it is sent."""
        header = wire.Header(kind=kind, producer=self.producer, name=self.name).pack()
        return [(topic, header) for topic in self.topics]


# -- receive side ---------------------------------------------------------------------

@dataclass
class StreamState:
    """What arrived from one (producer, topic)."""

    name: str
    messages: int = 0
    rows: int = 0
    bytes: int = 0
    next_seq: int = 0
    next_total: int = 0      # rows the producer had sent before its next message
    missed: int = 0          # data messages lost (sequence gaps)
    missed_rows: int = 0
    skipped_rows: int = 0    # sent before we joined
    gaps: int = 0            # how many times a gap was seen
    first_seen: float = 0.0
    last_seen: float = 0.0
    lag: float = 0.0         # receive time - send time of the last message, seconds
    finished: bool = False
    received: int = 0        # messages of every kind accepted (heartbeats included)
    bad_frames: int = 0      # messages whose header named this stream but were refused
    sources: dict = field(default_factory=dict)  # source -> [first byte, end byte] seen
    # rows per whole second, for the last RATE_WINDOW seconds: [second, rows]
    recent: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=int(RATE_WINDOW) + 2))

    def count_rows(self, now: float, rows: int) -> None:
        second = int(now)
        if self.recent and self.recent[-1][0] == second:
            self.recent[-1][1] += rows
        else:
            self.recent.append([second, rows])

    def rate(self, now: float) -> float:
        span = min(RATE_WINDOW, max(now - self.first_seen, 1e-3))
        return sum(r for t, r in self.recent if t > now - RATE_WINDOW - 1) / span

    def add_source(self, source: str, start: int, end: int) -> None:
        span = self.sources.pop(source, None) or [start, end]
        span[0], span[1] = min(span[0], start), max(span[1], end)
        self.sources[source] = span  # re-inserted: the dict is oldest-first
        if len(self.sources) > SOURCES_PER_STREAM:
            del self.sources[next(iter(self.sources))]


#: Counters summed over streams (those forgotten past MAX_STREAMS included).
_LOSS_COUNTERS = ("missed", "missed_rows", "skipped_rows")


class ReceiveStream:
    """The receive side of every stream a subscriber hears.

    Feed it decoded messages with :meth:`receive` (or rows parsed from plain text with
    :meth:`receive_rows`) and the time; it returns the events they make. Not
    thread-safe: the caller serialises access.
    """

    def __init__(self) -> None:
        # Least recently heard from first; at most MAX_STREAMS.
        self.streams: collections.OrderedDict[Key, StreamState] = collections.OrderedDict()
        self.forgotten = collections.Counter()   # loss counters of streams dropped
        # (topic, source) -> end offset of rows received; least recently used first,
        # at most MAX_SOURCES
        self.done: collections.OrderedDict[tuple[bytes, str], int] = collections.OrderedDict()
        self.counts = collections.Counter()      # messages, rows, bytes, duplicate_rows, rejects

    def total(self, counter: str) -> int:
        """A per-stream counter summed over every stream ever heard."""
        return sum(getattr(s, counter) for s in self.streams.values()) + self.forgotten[counter]

    def finished(self) -> set[bytes]:
        """Producers that ended a stream."""
        return {p for (p, _), s in self.streams.items() if s.finished}

    def alive(self, now: float, dead_after: float) -> dict[bytes, str]:
        """Producers with a stream not finished and heard from within ``dead_after``
        seconds of ``now`` (seconds since the epoch), and their names."""
        return {p: s.name for (p, _), s in self.streams.items()
                if not s.finished and now - s.last_seen <= dead_after}

    def report(self, now: float, dead_after: float) -> list[dict]:
        """One dict per stream, least recently heard from first: its counters, its rate
        over the last RATE_WINDOW seconds, and ``alive`` (not finished, and heard from
        within ``dead_after`` seconds)."""
        return [{"producer": p.hex()[:12], "name": s.name, "topic": history.topic_name(t),
                 "messages": s.messages, "rows": s.rows, "sent_rows": s.next_total,
                 "bytes": s.bytes, "missed": s.missed, "missed_rows": s.missed_rows,
                 "skipped_rows": s.skipped_rows, "gaps": s.gaps,
                 "rows_per_s": s.rate(now), "lag_s": s.lag, "last_seen": s.last_seen,
                 "finished": s.finished,
                 "alive": not s.finished and now - s.last_seen <= dead_after,
                 "received": s.received, "bad_frames": s.bad_frames,
                 "sources": {k: tuple(v) for k, v in s.sources.items()}}
                for (p, t), s in self.streams.items()]

    def refused(self, key: Key) -> None:
        """A message whose header named ``key`` was refused; counted on a stream already
        heard from (a refused message's numbers are not trusted to start one)."""
        s = self.streams.get(key)
        if s is not None:
            s.bad_frames += 1

    def receive(self, msg: wire.Message, now: float) -> list:
        """Account for one decoded message received at ``now`` (seconds since the epoch)."""
        h = msg.header
        key = (h.producer, msg.topic)
        events: list = []
        s = self._state(key, h, now, events)
        s.last_seen = now
        s.received += 1
        s.lag = max(0.0, now - h.send_ns / 1e9)
        # Data messages are numbered 0, 1, 2...; the others (rejects, heartbeats,
        # end-of-stream) carry the count sent so far, so a lost last data message shows
        # too. ``total`` does the same in rows.
        if h.seq > s.next_seq:
            lost_rows = max(0, h.total - s.next_total)
            s.missed += h.seq - s.next_seq
            s.missed_rows += lost_rows
            s.gaps += 1
            events.append(Gap(key, s.name, "gap", h.seq - s.next_seq, lost_rows, now))
        if h.seq >= s.next_seq:
            is_data = h.kind is wire.Kind.DATA
            s.next_seq = h.seq + is_data
            s.next_total = h.total + (h.rows if is_data else 0)
        if h.kind is wire.Kind.REJECTS:
            self.counts["rejects"] += msg.table.num_rows
            events.append(Rejects(key, s.name, msg.table))
        elif h.kind is wire.Kind.END_OF_STREAM:
            if not s.finished:
                s.finished = True
                events.append(EndOfStream(key))
        elif h.kind is wire.Kind.DATA:
            table = self._deduplicate(key, msg, events)
            s.messages += 1
            s.rows += h.rows
            if h.source:
                s.add_source(h.source, h.start, h.end)
            self._count(s, now, table, msg.nbytes)
            if table.num_rows or not h.rows:   # rows, or a message of columns only
                events.append(Rows(key, table))
        return events

    def receive_rows(self, key: Key, name: str, table: pa.Table | None, rejects: pa.Table,
                     nbytes: int, now: float) -> list:
        """Rows that arrived outside the protocol (a plain text message): no numbers, so
        no gaps; counted like data."""
        events: list = []
        s = self._state(key, wire.Header(name=name), now, events)
        s.last_seen = now
        s.received += 1
        s.messages += 1
        if rejects.num_rows:
            self.counts["rejects"] += rejects.num_rows
            events.append(Rejects(key, name, rejects))
        if table is not None:
            s.rows += table.num_rows
            self._count(s, now, table, nbytes)
            if table.num_rows:
                events.append(Rows(key, table))
        return events

    # -- internals --------------------------------------------------------------------

    def _state(self, key: Key, h: wire.Header, now: float, events: list) -> StreamState:
        s = self.streams.get(key)
        if s is not None:
            self.streams.move_to_end(key)
            return s
        s = self.streams[key] = StreamState(h.name, first_seen=now, last_seen=now,
                                            next_seq=h.seq, next_total=h.total)
        if h.seq:
            s.skipped_rows = h.total
            events.append(Gap(key, s.name, "joined late", h.seq, h.total, now))
        while len(self.streams) > MAX_STREAMS:
            _, old = self.streams.popitem(last=False)  # heard from least recently
            for counter in _LOSS_COUNTERS:
                self.forgotten[counter] += getattr(old, counter)
        return s

    def _count(self, s: StreamState, now: float, table: pa.Table, nbytes: int) -> None:
        s.bytes += nbytes
        s.count_rows(now, table.num_rows)
        self.counts["messages"] += 1
        self.counts["rows"] += table.num_rows
        self.counts["bytes"] += nbytes

    def _deduplicate(self, key: Key, msg: wire.Message, events: list) -> pa.Table:
        """Drop rows of a source already received (a restarted producer resending)."""
        h = msg.header
        if not h.source or "_offset" not in msg.table.column_names:
            return msg.table
        # Per topic: a block sharded by key goes out as one message per bucket topic,
        # each with the block's byte range and its own rows of it.
        source = (msg.topic, h.source)
        done = self.done.pop(source, -1)
        self.done[source] = max(done, h.end)  # re-inserted: most recently used last
        if len(self.done) > MAX_SOURCES:
            self.done.popitem(last=False)
        table = msg.table
        if done < 0 or not table.num_rows:
            return table
        offsets = table.column("_offset").to_numpy()
        first_new = int(np.searchsorted(offsets, done))  # wire.decode checked they ascend
        if first_new:
            self.counts["duplicate_rows"] += first_new
            events.append(Duplicate(key, h.source, first_new))
            table = table.slice(first_new)
        return table
