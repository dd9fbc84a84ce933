"""The Subscriber's side of history: the replies to its requests, and since='s order.

:class:`Past` keeps every history request still open (its :class:`Replies`, by reply
topic) and how the finished ones went. For ``Subscriber(since=...)`` it also decides what
the live stream waits for: every live row behind a :class:`Gate` until each producer
answered (or went, or the time is up); later, a producer first heard from after that
behind its own request (:class:`Late`); and which live rows the past already gave.

Sans-IO and without a lock of its own: the Subscriber's condition guards it (callers hold
it). The worker (:class:`~zpandas._receiver.Receiver`) makes the subscriptions
:attr:`Past.commands` asks for, keeps the rows it is handed and feeds the aggregations.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from . import history, wire
from .errors import WireError
from .streams import ReceiveStream

#: Finished requests (stats()["history"]) and view refusals kept, the most recent.
LOG_KEPT = 1000


class Past:
    """History requests and since='s gates of one Subscriber (see the module's docstring).

    Parameters
    ----------
    commands : collections.deque
        The worker's queue of ``("subscribe" | "unsubscribe", topic)``.
    protocol : ReceiveStream
        The live streams: who is alive, what each source gave, the counts.
    """

    def __init__(self, commands: collections.deque, protocol: ReceiveStream) -> None:
        self.commands, self._protocol = commands, protocol
        self.replies: dict[bytes, Replies] = {}   # requests still open, by reply topic
        self.log: list[dict] = []                 # how requests went (the last LOG_KEPT)
        self.others_replies = 0   # messages of other subscribers' requests (dropped)
        self.others_views = 0     # messages of views other subscribers asked for (dropped)
        self.view_refusals: list[dict] = []   # producers that cannot give our view
        self.notices: list[str] = []   # data-loss warnings for the caller to give
        self.gate: Gate | None = None   # since=: set before the worker starts, cleared by it
        #: since=: the producers the past was asked of (set when the gate opens), and the
        #: requests, so that one first heard from later is asked for its past on its own
        self._asked: set[bytes] | None = None
        self._requests: list = []
        self._late: dict[bytes, Late] = {}   # producer -> its past, asked late; its live rows wait
        self._late_timeout = self._late_dead_after = 0.0
        self._replayed: dict[str, tuple[int, int]] = {}   # source -> [start, end) the past gave

    # -- requests ---------------------------------------------------------------------

    def open(self, requests) -> dict[bytes, Replies]:
        """Await the replies to ``requests`` (their topics subscribed to)."""
        replies = {r.reply_topic: Replies(r) for r in requests}
        self.replies.update(replies)
        self.commands.extend(("subscribe", t) for t in replies)
        return replies

    def close(self, replies: dict[bytes, Replies]) -> None:
        """Stop awaiting ``replies`` (their topics and credit unsubscribed)."""
        for topic, rep in replies.items():
            self.replies.pop(topic, None)
            self.commands.extend(("unsubscribe", t) for t in rep.subscriptions(topic))

    def record(self, rows: list[dict]) -> None:
        """How requests went: kept for stats()["history"]."""
        self.log.extend(rows)
        del self.log[:-LOG_KEPT]

    def open_replies(self) -> list[Replies]:
        """Every request still open."""
        return list(self.replies.values())

    def reply(self, msg: wire.Message) -> bool:
        """A history reply, to its request if it is one of ours (True: the caller notifies)."""
        replies = self.replies.get(msg.topic)
        if replies is None:
            self.others_replies += 1   # another subscriber's request (we take everything)
            return False
        replies.add(msg)
        window, p = replies.request.window, msg.header.producer
        taken, granted = replies.taken.get(p, 0), replies.granted.get(p, 0)
        if window and taken - granted >= max(1, window // 2):
            # room for more: a subscription upstream, as the request itself went
            self.commands.append(("subscribe", history.credit_topic(msg.topic, p, taken)))
            if granted:
                self.commands.append(("unsubscribe", history.credit_topic(msg.topic, p, granted)))
            replies.granted[p] = taken
        return True

    def view_refused(self, msg: wire.Message, topics) -> dict | None:
        """Another subscriber's view (a subscriber to every topic takes them): None; or a
        producer refusing ours (of ``topics``): kept, warned about, and returned."""
        if msg.topic not in topics:
            self.others_views += 1
            return None
        try:
            end = history.read_end(msg.table)
        except ValueError as e:
            raise WireError("columns", f"a view's answer: {e}") from None
        refusal = {"producer": msg.header.producer.hex()[:12], "name": msg.header.name,
                   "topic": history.topic_name(msg.topic), "status": end["status"],
                   "reason": end["reason"]}
        self.view_refusals.append(refusal)
        del self.view_refusals[:-LOG_KEPT]
        self.notices.append(f"{msg.header.name!r} cannot send the rows asked for "
                            f"(where=/columns=): {end['reason']} (stats()['views'])")
        return refusal

    # -- since=: the past, then live ----------------------------------------------------

    def start(self, requests, *, timeout: float, dead_after: float) -> None:
        """Ask for the past of ``requests`` before the worker starts (it subscribes to
        their topics as it sets up): live rows wait behind the gate."""
        replies = {r.reply_topic: Replies(r) for r in requests}
        self.replies.update(replies)
        # Heartbeats come every second: 2 s without a new producer, all were heard.
        self.gate = Gate(replies, timeout=timeout, settle=2.0, dead_after=dead_after)

    @property
    def waiting(self) -> bool:
        """Live rows wait for the past (gates open on time, not only on a message)."""
        return self.gate is not None or bool(self._late)

    def holds(self, producer: bytes) -> list | None:
        """Where ``producer``'s live rows wait for the past, or None: they go on."""
        if self.gate is not None:
            return self.gate.live
        late = self._late.get(producer)
        return None if late is None else late.live

    def ask_if_late(self, msg: wire.Message) -> None:
        """A producer first heard from after the past was asked for: its past is asked
        of it alone, and its live rows wait for it."""
        p = msg.header.producer
        if self._asked is None or p in self._asked:
            return
        self._asked.add(p)
        # the request of the topic it sends on (the longest that matches), as first asked
        fits = [r for r in self._requests if msg.topic.startswith(r.topic.encode("utf-8"))]
        base = max(fits or self._requests, key=lambda r: len(r.topic))
        (topic, rep), = self.open([dataclasses.replace(base, id=uuid.uuid4().hex,
                                                       producer=p.hex())]).items()
        # what came from the sources it names before (a restart of a producer that was
        # here): its past gives those rows again, and they are dropped
        seen: dict[str, int] = {}
        for (_, source), end in self._protocol.done.items():
            seen[source] = max(seen.get(source, -1), end)
        self._late[p] = Late(topic, rep, msg.header.name, seen,
                             time.monotonic() + self._late_timeout)

    def let_through(self) -> list[tuple[bytes, pa.Table]] | None:
        """The rows of every gate that opens now - the past, then the live rows that
        waited for it, less those the past gave - as (producer, table); None if none opens."""
        now = time.monotonic()
        opened = self.gate is not None and self._gate_opens(now)
        out = self._open_gate() if opened else []
        alive = self._protocol.alive(time.time(), self._late_dead_after) if self._late else {}
        for p, late in list(self._late.items()):
            if p in late.replies.ends or p not in alive or now >= late.deadline:
                opened = True
                out += self._open_late(p, late)
        return out if opened else None

    def not_replayed(self, table: pa.Table, source: str) -> pa.Table:
        """Live rows less those a history reply already gave (same source, offset in its
        range), counted as duplicates."""
        span = self._replayed.get(source) if source else None
        if span is None or "_offset" not in table.column_names:
            return table
        off = table.column("_offset")
        keep = pc.or_(pc.less(off, span[0]), pc.greater_equal(off, span[1]))
        dropped = table.num_rows - pc.sum(keep).as_py() if table.num_rows else 0
        if dropped:
            self._protocol.counts["duplicate_rows"] += dropped
            table = table.filter(keep)
        return table

    def _gate_opens(self, now: float) -> bool:
        """Every producer alive - at least one - has answered the past (or gone), and no
        new one was heard from for a settling time (heartbeats come every second); or the
        gate's timeout."""
        gate = self.gate
        if now >= gate.deadline:
            return True
        alive = set(self._protocol.alive(time.time(), gate.dead_after))
        answered = {p for rep in gate.replies.values() for p in rep.ends}
        if alive - gate.heard:   # a producer heard from for the first time: settle again
            gate.heard |= alive
            gate.settle = now + gate.settling
        # nobody heard from yet: producers still starting (or none): wait for one
        return now >= gate.settle and bool(alive) and alive <= answered

    def _open_gate(self) -> list[tuple[bytes, pa.Table]]:
        gate, self.gate = self.gate, None
        expected = self._protocol.alive(time.time(), gate.dead_after)
        self._asked = {p for p, _ in self._protocol.streams} | gate.heard | {
            p for rep in gate.replies.values() for p in rep.ends}
        self._requests = [rep.request for rep in gate.replies.values()]
        self._late_timeout, self._late_dead_after = gate.timeout, gate.dead_after
        self.close(gate.replies)
        for rep in gate.replies.values():
            self.record(rep.log(expected))
        return self._past_then_live(list(gate.replies.values()), gate.live)

    def _open_late(self, p: bytes, late: Late) -> list[tuple[bytes, pa.Table]]:
        """The past of a producer asked late came (or it went, or the time is up)."""
        del self._late[p]
        self.close({late.topic: late.replies})
        self.record(late.replies.log({p: late.name}))
        end = late.replies.ends.get(p)
        if end is None or end["status"] in ("failed", "cancelled"):
            said = "no answer" if end is None else f"{end['status']}: {end['reason']}"
            self.notices.append(f"{late.name!r}, first heard from after the past was asked "
                                f"for (since=), was asked for its past then: {said} "
                                "(stats()['history'])")
        parts = []
        for q, table, source, a, b in late.replies.parts:
            kept = _drop_seen(table, late.seen.get(source, -1))
            self._protocol.counts["duplicate_rows"] += table.num_rows - kept.num_rows
            parts.append((q, kept, source, a, b))
        late.replies.parts = parts
        return self._past_then_live([late.replies], late.live)

    def _past_then_live(self, replies: list[Replies], live: list) -> list[tuple[bytes, pa.Table]]:
        out = []
        for rep in replies:
            for producer, table, source, start, end in rep.parts:
                if source:
                    lo, hi = self._replayed.get(source, (start, end))
                    self._replayed[source] = (min(lo, start), max(hi, end))
                if table.num_rows:
                    out.append((producer, table))
        for producer, source, table in live:
            table = self.not_replayed(table, source)
            if table.num_rows:
                out.append((producer, table))
        return out


class Replies:
    """What the producers answered to one history request: their rows, and each one's
    end (status, reason, counts)."""

    def __init__(self, request) -> None:
        self.request = request
        self.parts: list[tuple] = []               # (producer, table, source, start, end)
        self.progress: dict[bytes, dict] = {}      # producer id -> its last HISTORY_PROGRESS
        self.began = time.monotonic()
        self.ends: dict[bytes, dict] = {}          # producer id -> its HISTORY_END
        self.names: dict[bytes, str] = {}
        self.rows: dict[bytes, int] = {}
        self.missed: dict[bytes, int] = {}         # reply messages lost on the way
        self.taken: dict[bytes, int] = {}          # data messages received, by producer
        self.granted: dict[bytes, int] = {}        # credit given, by producer
        self.bytes: dict[bytes, int] = {}          # received, as on the wire
        self._next: dict[bytes, int] = {}

    def add(self, msg: wire.Message) -> None:
        h = msg.header
        self.names[h.producer] = h.name
        self.bytes[h.producer] = self.bytes.get(h.producer, 0) + msg.nbytes
        expected = self._next.get(h.producer, 0)
        if h.seq > expected:
            self.missed[h.producer] = self.missed.get(h.producer, 0) + h.seq - expected
        if h.kind is wire.Kind.HISTORY_END:
            self.ends[h.producer] = history.read_end(msg.table)
        elif h.kind is wire.Kind.HISTORY_PROGRESS:
            self.progress[h.producer] = history.read_progress(msg.table)
        elif h.kind is wire.Kind.DATA:
            self.taken[h.producer] = self.taken.get(h.producer, 0) + 1
            self._next[h.producer] = max(expected, h.seq + 1)
            self.rows[h.producer] = self.rows.get(h.producer, 0) + msg.table.num_rows
            if msg.table.num_rows:
                self.parts.append((h.producer, msg.table, h.source, h.start, h.end))

    @property
    def tables(self) -> list[pa.Table]:
        return [part[1] for part in self.parts]

    def report(self, now: float) -> list[dict]:
        """How far each producer that answered is: a row each (see Subscriber.history_progress)."""
        rows = []
        for p in {**self.progress, **self.ends}:
            pr, end = self.progress.get(p, {}), self.ends.get(p)
            total = pr.get("bytes_total", 0)
            done = total if end is not None else pr.get("bytes_done", 0)
            took = max(1e-9, now - self.began)
            rows.append({"request": self.request.id[:12], "topic": self.request.topic,
                         "producer": p.hex()[:12], "name": self.names.get(p, ""),
                         "status": end["status"] if end else "running",
                         "files": pr.get("files", end["files"] if end else 0),
                         "bytes_done": done, "bytes_total": total,
                         "rows": self.rows.get(p, 0),
                         "eta_s": 0.0 if end is not None or done >= total else
                         (float("nan") if not done else (total - done) * took / done)})
        return rows

    def subscriptions(self, topic: bytes) -> list[bytes]:
        """What this request subscribed to: its topic, and its last credit to each producer."""
        return [topic] + [history.credit_topic(topic, p, n) for p, n in self.granted.items() if n]

    def log(self, expected: dict[bytes, str]) -> list[dict]:
        """How it went, a row per producer that answered or was expected to."""
        rows = []
        for p in [*self.ends, *(p for p in expected if p not in self.ends)]:
            end = self.ends.get(p)
            rows.append({"request": self.request.id[:12], "topic": self.request.topic,
                         "producer": p.hex()[:12], "name": self.names.get(p) or expected.get(p, ""),
                         "status": end["status"] if end else "no answer",
                         "reason": end["reason"] if end else (
                             "no end of its reply: it went away, or was still busy at the "
                             "timeout; rows that came are kept"),
                         "rows": self.rows.get(p, 0), "missed": self.missed.get(p, 0),
                         "bytes": self.bytes.get(p, 0), "file_bytes": end["bytes"] if end else 0})
        return rows


class Late:
    """since=: a producer first heard from after the past was asked for - its own request,
    and its live rows held back until the answer."""

    def __init__(self, topic: bytes, replies: Replies, name: str, seen: dict[str, int],
                 deadline: float) -> None:
        self.topic, self.replies, self.name, self.seen = topic, replies, name, seen
        self.deadline = deadline
        self.live: list[tuple[bytes, str, pa.Table]] = []


def _drop_seen(table: pa.Table, seen: int) -> pa.Table:
    """Rows at or after offset ``seen`` (what a source gave before ends there)."""
    if seen < 0 or "_offset" not in table.column_names or not table.num_rows:
        return table
    return table.filter(pc.greater_equal(table.column("_offset"), seen))


class Gate:
    """Live rows held back while the past is asked for (Subscriber(since=...))."""

    def __init__(self, replies: dict, *, timeout: float, settle: float, dead_after: float) -> None:
        self.replies = replies
        self.timeout = timeout
        self.live: list[tuple[bytes, str, pa.Table]] = []
        now = time.monotonic()
        self.deadline, self.settle, self.dead_after = now + timeout, now + settle, dead_after
        self.settling = settle
        self.heard: set[bytes] = set()
