"""The Subscriber's worker: one thread receives, validates, accounts and queues.

:class:`Receiver` is what the worker thread (``zpandas-subscriber-N``, run by
:class:`~zpandas._owner.OwnerThread`) does with the SUB socket it alone creates, uses and
closes: decode each message zero-copy (a bad one is counted by reason and skipped, never
the end of the thread), feed it to the stream protocol
(:class:`~zpandas.streams.ReceiveStream`) and act on the events - retain the rows, keep
gaps and rejects, hand tables to aggregations (which fold on threads of their own) and
micro-batches (Arrow tables) to the bounded queue that :meth:`Subscriber.get` takes
from. It waits in an untimed poll: the next batch's due time bounds the wait, and
``close()`` rings an inproc bell.

The Subscriber and its Receiver share one Condition: what it guards (queue, kept rows,
protocol state, gaps, rejects, counts) is changed here and read by the caller's methods.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import zmq

from . import history, wire
from ._batcher import MicroBatcher
from ._monitor import Monitor
from ._retained import Retained
from .endpoints import Curve, Endpoint, attach, secure
from .errors import WireError
from .sources.lines import Record
from .streams import EndOfStream, Gap, ReceiveStream, Rejects, Rows

log = logging.getLogger("zpandas")

#: The frame size RCVHWM is computed with (the producers' default ``frame_bytes``).
_TYPICAL_FRAME = 4 << 20
#: Bounds of what is kept for the caller (documented in docs/guarantees.md).
GAPS_KEPT = 10_000              # rows of gaps()
REJECTS_KEPT = 100_000          # rows of rejects()
#: History replies received and not yet decoded, at most (each request's credit bounds
#: them too): beyond this they are decoded as they come.
_REPLIES_LATER = 256
#: The bad-frame log line for one reason is written at most this often (seconds).
_BAD_LOG_EVERY = 10.0
#: The "producer" of plain text messages.
LEGACY = b"text".ljust(16, b"\0")


class Receiver:
    """The work of a Subscriber's worker thread (see the module's docstring)."""

    def __init__(self, *, ctx: zmq.Context, cond: threading.Condition, endpoints: list[Endpoint],
                 topics: tuple[bytes, ...], bell: str, policy: str, buffer_bytes: int,
                 batcher: MicroBatcher, retain: int | None, memory_budget: int,
                 max_bytes: int, text_format, curve: Curve | None, multicast: dict | None,
                 categories: frozenset = frozenset()) -> None:
        self._ctx, self._cond, self._endpoints, self.topics = ctx, cond, endpoints, topics
        self._bell, self.policy, self.buffer_bytes, self._batcher = bell, policy, buffer_bytes, batcher
        self._retain, self._memory_budget, self._max_bytes = retain, memory_budget, max_bytes
        self._text_format, self._curve, self._multicast = text_format, curve, multicast
        self._categories = categories
        # Read by the Subscriber under the condition.
        self.queue: collections.deque[pa.Table] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()   # each one's nbytes, once
        self.queued_bytes = 0
        self.consuming = False    # get() or iteration has been used
        self.collecting = 0       # collect() calls waiting: they take no micro-batches
        self.retained = Retained(retain)
        self.protocol = ReceiveStream()   # what the messages mean (sans-IO)
        self.gaps: collections.deque[dict] = collections.deque(maxlen=GAPS_KEPT)
        self.rejects: collections.deque[pa.Table] = collections.deque()
        self.bad = collections.Counter()
        self.aggregations: list = []
        self.memory_warning: str | None = None   # for the caller to warn about
        # History requests (zpandas.history): subscriptions the caller asks the worker to
        # make or drop, and the replies of each request still open, by its topic.
        self.commands: collections.deque[tuple[str, bytes]] = collections.deque()
        self.replies: dict[bytes, Replies] = {}
        self.others_replies = 0   # messages of other subscribers' requests (dropped)
        self.others_views = 0     # messages of views other subscribers asked for (dropped)
        self.view_refusals: list[dict] = []   # producers that cannot give our view
        self.notices: list[str] = []   # data-loss warnings for the caller to give
        #: Subscriber(since=...): the past first - live rows wait here until the replies
        #: are in (set before the thread starts, cleared by it).
        self.gate: Gate | None = None
        self.history_log: list[dict] = []   # how history requests went (the last 1,000)
        self._replayed: dict[str, tuple[int, int]] = {}   # source -> [start, end) the past gave
        #: since=: the producers the past was asked of (set when the gate opens), and the
        #: requests, so that one first heard from later is asked for its past on its own
        self._asked: set[bytes] | None = None
        self._asked_requests: list = []
        self._late: dict[bytes, Late] = {}   # producer -> its past, asked late; its live rows wait
        self._late_timeout = self._late_dead_after = 0.0
        self.error: BaseException | None = None  # what ended the loop
        self.stop = threading.Event()
        self.monitor: Monitor | None = None
        self.auth = None
        self.resolved: list[str] = []
        self._rejects_kept = 0
        self._bad_logged: dict[str, float] = {}   # reason -> when last logged
        self._memory_warned = False

    def pop(self) -> pa.Table:
        """The oldest micro-batch (caller holds the condition)."""
        table = self.queue.popleft()
        self.queued_bytes -= self._sizes.popleft()
        if self.policy == "block" and self.consuming:
            self._cond.notify_all()  # room for a worker waiting under policy="block"
        return table

    def setup(self) -> tuple[zmq.Socket, Monitor, zmq.Socket]:
        """The SUB socket and the bell, set up on the worker (which alone uses and closes them)."""
        sock = self._ctx.socket(zmq.SUB)
        try:
            # Not 0: on a peer's disconnect libzmq drops the messages still queued for us
            # unless the socket lingers (session_base_t: pipe terminate(delay=linger != 0)),
            # and a fast producer's last messages - end-of-stream - would go with them.
            sock.linger = 1000
            sock.rcvhwm = max(16, self.buffer_bytes // _TYPICAL_FRAME)
            sock.maxmsgsize = self._max_bytes
            for t in [*self.topics, *self.replies]:   # and the past, if asked at the start
                sock.subscribe(t)
            self.monitor = Monitor(sock, threading.current_thread().name)
            self.auth = secure(sock, self._ctx, self._curve, self._endpoints)
            self.resolved = attach(sock, self._endpoints, multicast=self._multicast)
            bell = self._ctx.socket(zmq.PULL)  # close() rings it: the loop's poll has no tick
            bell.bind(self._bell)
        except Exception:
            if self.monitor is not None:
                self.monitor.close()
            if self.auth is not None:
                self.auth.stop()
            sock.close()
            raise
        return sock, self.monitor, bell

    def failed(self, error: BaseException) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def teardown(self, state: tuple[zmq.Socket, Monitor, zmq.Socket]) -> None:
        sock, monitor, bell = state
        bell.close(linger=0)
        monitor.close()
        sock.close(linger=0)  # only subscriptions could be queued: close() must not wait
        if self.auth is not None:
            self.auth.stop()

    def loop(self, state: tuple[zmq.Socket, Monitor, zmq.Socket]) -> None:
        sock, monitor, bell = state
        batcher = self._batcher
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor.socket, zmq.POLLIN)
        poller.register(bell, zmq.POLLIN)
        later: collections.deque = collections.deque()   # history replies, after live rows
        while not self.stop.is_set():
            # Inside a zmq call even when idle (a bound SUB only greets new peers, and
            # sends them its subscriptions, while its thread is in one), without a tick:
            # the next batch's due time bounds the wait, close() rings the bell.
            wait = 0 if later else batcher.timeout(time.monotonic())
            if self.gate is not None or self._late:   # gates open on time, not on a message
                wait = 0.05 if wait is None else min(wait, 0.05)
            events = dict(poller.poll(None if wait is None else int(wait * 1000)))
            if monitor.socket in events:
                with self._cond:
                    monitor.drain()
            if bell in events:
                self._obey(sock, bell)
            if sock in events:
                for _ in range(1000):  # bounded, so batches still leave on time under load
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if _is_reply(frames) and len(later) < _REPLIES_LATER:
                        # The past waits for the present: a live message behind a few
                        # replies in the socket is not kept waiting while they decode.
                        later.append(frames)
                        continue
                    table = self._isolated(frames)
                    # no rows: columns only; a read of collecting without the lock at
                    # worst makes one batch collect() throws away
                    if table is not None and table.num_rows and not self.collecting:
                        for batch in batcher.add(table, time.monotonic()):
                            self._enqueue(batch)
            if later and sock not in events:   # no live message waits: one reply
                self._isolated(later.popleft())
            if self.commands:   # credit for history replies, granted as they come
                self._run_commands(sock)
            opened = self._open_gate(sock) if self.gate is not None and self._gate_opens() else []
            if self._late:
                opened += self._open_late(sock)
            for table in opened:
                for batch in [] if self.collecting else batcher.add(table, time.monotonic()):
                    self._enqueue(batch)
            for batch in batcher.due(time.monotonic()):
                self._enqueue(batch)

    def _obey(self, sock: zmq.Socket, bell: zmq.Socket) -> None:
        """Subscribe and unsubscribe as the caller asked (the worker owns the socket)."""
        while True:
            try:
                bell.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        self._run_commands(sock)

    def _run_commands(self, sock: zmq.Socket) -> None:
        with self._cond:
            commands, self.commands = list(self.commands), collections.deque()
        for op, topic in commands:
            (sock.subscribe if op == "subscribe" else sock.unsubscribe)(topic)

    def _reply(self, msg: wire.Message) -> None:
        """A history reply: to its request, if it is one of ours (caller holds nothing)."""
        with self._cond:
            replies = self.replies.get(msg.topic)
            if replies is None:
                self.others_replies += 1   # another subscriber's request (we take everything)
                return
            replies.add(msg)
            window, p = replies.request.window, msg.header.producer
            taken, granted = replies.taken.get(p, 0), replies.granted.get(p, 0)
            if window and taken - granted >= max(1, window // 2):
                # room for more: a subscription upstream, as the request itself went
                self.commands.append(("subscribe", history.credit_topic(msg.topic, p, taken)))
                if granted:
                    self.commands.append(("unsubscribe", history.credit_topic(msg.topic, p, granted)))
                replies.granted[p] = taken
            self._cond.notify_all()

    def _isolated(self, frames) -> pa.Table | None:
        """:meth:`_receive`, with whatever one message makes it raise counted and skipped.

        A peer's message never ends this thread: only errors of the socket (in
        :meth:`loop`) and of the queue hand-off do.
        """
        try:
            return self._receive(frames)
        except WireError as e:
            self._refuse(frames, e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - per-message isolation, counted and logged
            self._refuse(frames, "error", f"{type(e).__name__}: {e}", exc=e)
        return None

    def _refuse(self, frames, reason: str, detail: str, exc: BaseException | None = None) -> None:
        """Count a refused message under ``reason`` and under its stream, if its header reads."""
        now = time.time()
        header = topic = None
        if len(frames) == 3:
            try:
                header, topic = wire.Header.unpack(frames[1]), bytes(frames[0])
            except WireError:
                pass
        with self._cond:
            self.bad[reason] += 1
            who = "an unknown peer"
            if header is not None:
                who = f"{header.name!r} (topic {topic!r})"  # repr: a peer's name, no newlines
                self.protocol.refused((header.producer, topic))
            last = self._bad_logged.get(reason)
            if last is None or now - last >= _BAD_LOG_EVERY:
                self._bad_logged[reason] = now
                log.warning("%s: refused a message from %s: %s: %s (%d refused for this reason "
                            "so far; stats()['bad_frames'])", threading.current_thread().name, who, reason,
                            detail[:300], self.bad[reason], exc_info=exc)

    def _receive(self, frames) -> pa.Table | None:
        """Decode one message, let the protocol account for it; return its new rows."""
        now = time.time()
        if len(frames) == 1 and self._text_format is not None:
            return self._receive_text(frames[0], now)
        msg = wire.decode(frames, max_bytes=self._max_bytes, categories=self._categories)
        if history.is_history(msg.topic):
            self._reply(msg)
            return None
        if history.is_view(msg.topic) and (msg.topic not in self.topics
                                           or msg.kind is wire.Kind.HISTORY_END):
            self._view_message(msg)
            return None
        with self._cond:
            if self._asked is not None and msg.header.producer not in self._asked:
                self._ask_late(msg)
            rows, ended = self._act(self.protocol.receive(msg, now), msg.header.source)
            aggregations = list(self.aggregations)
        self._feed(aggregations, msg.header.producer, rows, ended)
        return rows

    def _view_message(self, msg: wire.Message) -> None:
        """Another subscriber's view (a subscriber to every topic takes them): dropped;
        or a producer refusing ours: kept, logged, and warned about by the caller."""
        with self._cond:
            if msg.topic not in self.topics:
                self.others_views += 1
                return
            try:
                end = history.read_end(msg.table)
            except ValueError as e:
                raise WireError("columns", f"a view's answer: {e}") from None
            refusal = {"producer": msg.header.producer.hex()[:12], "name": msg.header.name,
                       "topic": history.topic_name(msg.topic), "status": end["status"],
                       "reason": end["reason"]}
            self.view_refusals.append(refusal)
            del self.view_refusals[:-1000]
            self.notices.append(f"{msg.header.name!r} cannot send the rows asked for "
                                f"(where=/columns=): {end['reason']} (stats()['views'])")
        log.warning("%s: %s refused the view %s: %s", threading.current_thread().name,
                    msg.header.name, msg.topic[len(history.VIEW_PREFIX):][:200], end["reason"])

    # -- the past, then live (Subscriber(since=...)) ---------------------------------------

    def _gate_opens(self) -> bool:
        """Every producer alive - at least one - has answered the past (or gone), and no
        new one was heard from for a settling time (heartbeats come every second); or the
        gate's timeout."""
        gate, now = self.gate, time.monotonic()
        if now >= gate.deadline:
            return True
        wall = time.time()
        with self._cond:
            alive = {p for (p, _), st in self.protocol.streams.items()
                     if not st.finished and wall - st.last_seen <= gate.dead_after}
            answered = {p for rep in gate.replies.values() for p in rep.ends}
        if alive - gate.heard:   # a producer heard from for the first time: settle again
            gate.heard |= alive
            gate.settle = now + gate.settling
        # nobody heard from yet: producers still starting (or none): wait for one
        return now >= gate.settle and bool(alive) and alive <= answered

    def _open_gate(self, sock) -> list[pa.Table]:
        """The past's rows, then the live rows that waited (less those the past gave):
        kept, fed to aggregations and returned for the micro-batches, in that order."""
        gate = self.gate
        with self._cond:
            self.gate = None
            wall = time.time()
            expected = {p: st.name for (p, _), st in self.protocol.streams.items()
                        if not st.finished and wall - st.last_seen <= gate.dead_after}
            self._asked = {p for p, _ in self.protocol.streams} | gate.heard | {
                p for rep in gate.replies.values() for p in rep.ends}
            self._asked_requests = [rep.request for rep in gate.replies.values()]
            self._late_timeout, self._late_dead_after = gate.timeout, gate.dead_after
            for topic, rep in gate.replies.items():
                self._end_request(sock, topic, rep)
                self.history_log.extend(rep.log(expected))
            del self.history_log[:-1000]
            out = self._past_then_live(list(gate.replies.values()), gate.live)
        return self._handed(out)

    def _ask_late(self, msg: wire.Message) -> None:
        """since=: a producer first heard from after the past was asked for - its past is
        asked of it alone, and its live rows wait for it (caller holds the condition)."""
        p = msg.header.producer
        self._asked.add(p)
        # the request of the topic it sends on (the longest that matches), as first asked
        fits = [r for r in self._asked_requests if msg.topic.startswith(r.topic.encode("utf-8"))]
        base = max(fits or self._asked_requests, key=lambda r: len(r.topic))
        req = dataclasses.replace(base, id=uuid.uuid4().hex, producer=p.hex())
        topic = req.reply_topic
        self.replies[topic] = rep = Replies(req)
        self.commands.append(("subscribe", topic))
        # what came from the sources it names before (a restart of a producer that was
        # here): its past gives those rows again, and they are dropped
        seen: dict[str, int] = {}
        for (_, source), end in self.protocol.done.items():
            seen[source] = max(seen.get(source, -1), end)
        self._late[p] = Late(topic, rep, msg.header.name, seen,
                             time.monotonic() + self._late_timeout)

    def _open_late(self, sock) -> list[pa.Table]:
        """The past of producers asked late, once it came (or they went, or the time is
        up), then their live rows that waited: as :meth:`_open_gate`."""
        now, wall = time.monotonic(), time.time()
        out = []
        with self._cond:
            alive = {p for (p, _), st in self.protocol.streams.items()
                     if not st.finished and wall - st.last_seen <= self._late_dead_after}
            for p, late in list(self._late.items()):
                if p not in late.replies.ends and p in alive and now < late.deadline:
                    continue
                del self._late[p]
                self._end_request(sock, late.topic, late.replies)
                self.history_log.extend(late.replies.log({p: late.name}))
                del self.history_log[:-1000]
                end = late.replies.ends.get(p)
                if end is None or end["status"] in ("failed", "cancelled"):
                    said = "no answer" if end is None else f"{end['status']}: {end['reason']}"
                    self.notices.append(f"{late.name!r}, first heard from after the past was "
                                        f"asked for (since=), was asked for its past then: "
                                        f"{said} (stats()['history'])")
                parts = []
                for q, table, source, a, b in late.replies.parts:
                    kept = _drop_seen(table, late.seen.get(source, -1))
                    self.protocol.counts["duplicate_rows"] += table.num_rows - kept.num_rows
                    parts.append((q, kept, source, a, b))
                late.replies.parts = parts
                out += self._past_then_live([late.replies], late.live)
        return self._handed(out)

    def _end_request(self, sock, topic: bytes, rep: Replies) -> None:
        """Stop asking: its topic and credit unsubscribed (caller holds the condition)."""
        self.replies.pop(topic, None)
        for t in rep.subscriptions(topic):
            sock.unsubscribe(t)

    def _past_then_live(self, replies: list[Replies], live: list) -> list[tuple[bytes, pa.Table]]:
        """The rows of ``replies``, then the ``live`` rows held for them less those the past
        gave: kept, in that order (caller holds the condition)."""
        out = []
        for rep in replies:
            for producer, table, source, start, end in rep.parts:
                if source:
                    lo, hi = self._replayed.get(source, (start, end))
                    self._replayed[source] = (min(lo, start), max(hi, end))
                if table.num_rows:
                    out.append((producer, table))
        for producer, source, table in live:
            table = self._not_replayed(table, source)
            if table.num_rows:
                out.append((producer, table))
        for producer, table in out:
            self.protocol.counts["evicted_rows"] += self.retained.add(producer, table)
        self._cond.notify_all()
        return out

    def _handed(self, out: list[tuple[bytes, pa.Table]]) -> list[pa.Table]:
        """Rows let through a gate, fed to the aggregations (outside the lock); returned
        for the micro-batches."""
        with self._cond:
            aggregations = list(self.aggregations)
        for producer, table in out:
            self._feed(aggregations, producer, table, False)
        return [t for _, t in out]

    def _not_replayed(self, table: pa.Table, source: str) -> pa.Table:
        """Live rows less those a history reply already gave (same source, offset in its
        range). Caller holds the condition."""
        span = self._replayed.get(source) if source else None
        if span is None or "_offset" not in table.column_names:
            return table
        off = table.column("_offset")
        keep = pc.or_(pc.less(off, span[0]), pc.greater_equal(off, span[1]))
        dropped = table.num_rows - pc.sum(keep).as_py() if table.num_rows else 0
        if dropped:
            self.protocol.counts["duplicate_rows"] += dropped
            table = table.filter(keep)
        return table

    def _receive_text(self, frame, now: float) -> pa.Table | None:
        """A plain ``"topic payload"`` string from an existing ZeroMQ program."""
        topic, _, payload = bytes(frame).partition(b" ")
        s = self.protocol.streams.get((LEGACY, topic))   # only this thread changes it
        line = (s.messages if s else 0) + 1       # a message is a line of its stream
        try:
            table, rejects = self._text_format.parse([Record(payload, line, -1)],
                                                     topic.decode("utf-8", "replace"))
        except Exception as e:  # noqa: BLE001 - a line that breaks the parser is refused
            raise WireError("text", f"{type(e).__name__}: {e}") from None
        if table is not None:
            table = table.drop_columns(["_offset"])
        with self._cond:
            rows, _ = self._act(self.protocol.receive_rows((LEGACY, topic), "text", table,
                                                            rejects, len(payload), now))
            aggregations = list(self.aggregations)
        self._feed(aggregations, LEGACY, rows, False)
        return rows

    def _feed(self, aggregations: list, producer: bytes, rows: pa.Table | None,
              ended: bool) -> None:
        """Hand a producer's rows, and the end of its stream, to the aggregations,
        outside the lock (one may make us wait)."""
        for agg in aggregations:
            if rows is not None and rows.num_rows:
                agg._feed(producer, rows, block=self.policy == "block")
            if ended:
                agg._feed_end(producer)

    def _act(self, events: list, source: str = "") -> tuple[pa.Table | None, bool]:
        """Do what the protocol's events call for (caller holds ``_cond``): the new rows,
        and whether the stream ended."""
        rows, ended = None, False
        for e in events:
            if isinstance(e, Rows):
                waiting = self.gate or self._late.get(e.key[0])
                if waiting is not None:   # the past comes first: these wait
                    waiting.live.append((e.key[0], source, e.table))
                    continue
                rows = self._not_replayed(e.table, source)
                self.protocol.counts["evicted_rows"] += self.retained.add(e.key[0], rows)
                self._check_memory()
            elif isinstance(e, Gap):
                self.gaps.append({"time": e.time, "producer": e.key[0].hex()[:12],
                                   "name": e.name, "topic": history.topic_name(e.key[1]),
                                   "kind": e.kind, "messages": e.messages, "rows": e.rows})
                if e.kind == "gap":
                    log.warning("%s: lost %d messages (%d rows) from %s on topic %r",
                                threading.current_thread().name, e.messages, e.rows, e.name, e.key[1])
            elif isinstance(e, EndOfStream):
                ended = True
                self._cond.notify_all()
            elif isinstance(e, Rejects):
                self._keep_rejects(e.name, e.key[1], e.table)
        return rows, ended

    def _keep_rejects(self, name: str, topic: bytes, table: pa.Table) -> None:
        n = table.num_rows
        table = table.add_column(0, "topic", pa.array([history.topic_name(topic)] * n, pa.string()))
        self.rejects.append(table.add_column(0, "producer", pa.array([name] * n, pa.string())))
        self._rejects_kept += n
        while self._rejects_kept - self.rejects[0].num_rows >= REJECTS_KEPT:
            self._rejects_kept -= self.rejects.popleft().num_rows

    def _check_memory(self) -> None:
        kept = self.retained
        if self._retain is None and kept.nbytes > self._memory_budget and not self._memory_warned:
            self._memory_warned = True
            self.memory_warning = (
                f"rows kept for frame() and collect() passed memory_budget={self._memory_budget} "
                f"bytes ({kept.rows} rows, {kept.nbytes} bytes) and grow without bound: pass "
                "retain=N to keep only the last N rows, or take rows with get() and retain=0")
            log.warning("%s: %s", threading.current_thread().name, self.memory_warning)

    def _enqueue(self, table: pa.Table) -> None:
        size = table.nbytes   # once: it walks every buffer of every chunk
        with self._cond:
            def full() -> bool:
                return bool(self.queue) and self.queued_bytes + size > self.buffer_bytes
            if self.policy == "block" and self.consuming:
                # Stop reading until get() makes room: the socket's buffer fills, then
                # the producers' (which wait, under their own policy="block").
                while full() and not self.stop.is_set():
                    self._cond.wait()  # get() (room) and close() (stop) notify
            while full():
                old = self.queue.popleft()
                self.queued_bytes -= self._sizes.popleft()
                if self.policy == "drop":
                    self.protocol.counts["dropped_batches"] += 1
                    self.protocol.counts["dropped_rows"] += old.num_rows
            self.queue.append(table)
            self._sizes.append(size)
            self.queued_bytes += size
            self._cond.notify_all()


def _is_reply(frames) -> bool:
    """A history reply, told by its topic frame alone."""
    return len(frames) == 3 and frames[0].bytes[:len(history.PREFIX)] == history.PREFIX


class Replies:
    """What the producers answered to one history request (guarded by the caller's
    condition): their rows, and each one's end (status, reason, counts)."""

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
