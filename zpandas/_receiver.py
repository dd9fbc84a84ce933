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

History replies, and since='s order of the past before the live rows, are kept and
decided by its :class:`~zpandas._past.Past`; the Receiver makes the subscriptions and
keeps and feeds what that lets through.

The Subscriber and its Receiver share one Condition: what it guards (queue, kept rows,
protocol state, history, gaps, rejects, counts) is changed here and read by the caller's
methods.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import pyarrow as pa
import zmq

from . import history, wire
from ._batcher import MicroBatcher
from ._monitor import Monitor
from ._past import Past
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
        # make or drop; the replies and since='s gates.
        self.commands: collections.deque[tuple[str, bytes]] = collections.deque()
        self.past = Past(self.commands, self.protocol)
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
            for t in [*self.topics, *self.past.replies]:   # and the past, if asked at the start
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
            if self.past.waiting:   # gates open on time, not on a message
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
            opened = self._let_through() if self.past.waiting else []
            if self.commands:   # credit for history replies as they come; requests that ended
                self._run_commands(sock)
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
        with self._cond:   # emptied in place: the Past appends to this deque too
            commands = list(self.commands)
            self.commands.clear()
        for op, topic in commands:
            (sock.subscribe if op == "subscribe" else sock.unsubscribe)(topic)

    def _reply(self, msg: wire.Message) -> None:
        """A history reply: to its request, if it is one of ours (caller holds nothing)."""
        with self._cond:
            if self.past.reply(msg):
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
            self.past.ask_if_late(msg)
            rows, ended = self._act(self.protocol.receive(msg, now), msg.header.source)
            aggregations = list(self.aggregations)
        self._feed(aggregations, msg.header.producer, rows, ended)
        return rows

    def _view_message(self, msg: wire.Message) -> None:
        """Another subscriber's view: dropped; or a producer refusing ours: logged."""
        with self._cond:
            refusal = self.past.view_refused(msg, self.topics)
        if refusal is not None:
            log.warning("%s: %s refused the view %s: %s", threading.current_thread().name,
                        msg.header.name, msg.topic[len(history.VIEW_PREFIX):][:200],
                        refusal["reason"])

    def _let_through(self) -> list[pa.Table]:
        """since=: rows a gate let through, the past first - kept, fed to the aggregations
        (outside the lock), returned for the micro-batches."""
        with self._cond:
            out = self.past.let_through()
            if out is None:
                return []
            for producer, table in out:
                self.protocol.counts["evicted_rows"] += self.retained.add(producer, table)
            self._cond.notify_all()
            aggregations = list(self.aggregations)
        for producer, table in out:
            self._feed(aggregations, producer, table, False)
        return [t for _, t in out]

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
                waiting = self.past.holds(e.key[0])
                if waiting is not None:   # the past comes first: these wait
                    waiting.append((e.key[0], source, e.table))
                    continue
                rows = self.past.not_replayed(e.table, source)
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
