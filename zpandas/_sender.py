"""The Producer's socket owner: one thread sends, numbers, serves subscriptions and ends streams.

:class:`Sender` is what the owner thread (``zpandas-producer-N``, run by
:class:`~zpandas._owner.OwnerThread`) does with the XPUB socket it alone creates, uses
and closes: take the callers' encoded frames from the :class:`Handoff` (a bounded queue
and a doorbell pipe in its poller), encode rows that waited ``flush_interval``, send in
ticket order with the numbers of a :class:`~zpandas.streams.SendStream`, wait for or drop
for slow subscribers by policy, count subscriptions, send heartbeats, and at close send
end-of-stream and linger no longer than close()'s deadline. It waits in an untimed poll:
only times it knows of (rows due, the next heartbeat) bound the wait.

The Producer and its Sender share one lock (a Condition): the counters, subscriptions,
numbers and pending rows it guards are read by callers (``stats()``,
``wait_for_subscribers()``, ``sent_offsets()``) and changed here.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import zmq

from . import history, wire
from ._coalesce import Coalescer, LiveView
from ._monitor import Monitor
from .endpoints import MULTICAST_DEFAULTS, Curve, Endpoint, attach, secure
from .errors import ClosedError, ProducerBrokenError
from .streams import SendStream

ZERO_COPY_MIN = 64 * 1024  # below this a copy is cheaper than zero-copy bookkeeping
_SEND_TIMEOUT_MS = 100     # longest a blocked send holds the owner away from its loop
_REPAIR_BEAT = 0.1         # seconds between heartbeats while a multicast socket drains
_REPLIES_AHEAD = 8         # history messages waiting for the owner: memory stays bounded
_REPLY_RETRY = 0.005       # seconds before a history reply that met a full subscriber is tried again


class Sender:
    """The work of a Producer's owner thread (see the module's docstring)."""

    def __init__(self, *, ctx: zmq.Context, lock: threading.Condition, handoff: Handoff,
                 coalescer: Coalescer, stream: SendStream, endpoints: list[Endpoint],
                 curve: Curve | None, multicast: dict | None, linger: float, heartbeat: float,
                 policy: str, hwm: int) -> None:
        self._ctx, self._lock, self._handoff = ctx, lock, handoff
        self._coalescer, self._stream = coalescer, stream
        self._endpoints, self._curve, self._multicast = endpoints, curve, multicast
        self._linger, self._heartbeat, self.policy, self._hwm = linger, heartbeat, policy, hwm
        # Read by the Producer (under the lock where it says so).
        self.subscriptions: dict[bytes, int] = {}   # under lock
        self.sent = {"messages": 0, "rows": 0, "bytes": 0, "blocked_s": 0.0, "waits": 0,
                     "rejects": 0, "history_messages": 0, "view_messages": 0}   # under lock
        self.error: BaseException | None = None     # what ended the loop, under lock
        self.monitor: Monitor | None = None
        self.auth = None
        self.resolved: list[str] = []
        self.deadline: float | None = None  # close()'s, for the last messages
        self.closing = False                # close() was called (set by the Producer)
        self.abandoned = False              # gave up at close()'s deadline
        self._dropped = False  # "drop" had a full subscriber: its pipe may be parked
        self._first_send: float | None = None
        # History replies (zpandas.history): sent when no live message waits, numbered
        # per reply topic here (never in the live streams' numbering or heartbeats).
        self._replies: collections.deque[_Outgoing] = collections.deque()
        self._reply_numbers: dict[bytes, list[int]] = {}
        self._replies_retry: float | None = None   # a reply met a full subscriber: try then
        #: What answers history requests with rows (publish_files' FileHistory); None:
        #: "no history". Set before the producer is used.
        self.history_provider = None
        self._inbox: collections.deque[list] = collections.deque()   # replays' messages, under lock
        self._view_counts: dict[bytes, int] = {}   # live view -> subscriptions to it
        self.producer_id, self.name = coalescer.producer, coalescer.name

    def setup(self) -> tuple[zmq.Socket, Monitor]:
        """The XPUB socket, set up on the owner thread (which alone uses and closes it)."""
        try:
            xpub = self._ctx.socket(zmq.XPUB)
        except zmq.ZMQError:
            self._handoff.end(dead=True)
            raise
        monitor = None
        try:
            xpub.linger = int(self._linger * 1000)
            xpub.sndhwm = self._hwm
            xpub.maxmsgsize = 64 << 10  # it receives only subscriptions
            # Every subscribe and unsubscribe reaches us, so subscribers can be counted.
            xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            # A full subscriber makes send() fail with EAGAIN (a blocking send waits up to
            # SNDTIMEO) instead of libzmq dropping silently; _send_out then waits
            # ("block") or drops for that subscriber only ("drop"). Polling for POLLOUT
            # cannot tell: an XPUB is always writable (libzmq#1597).
            xpub.setsockopt(zmq.XPUB_NODROP, 1)
            xpub.sndtimeo = _SEND_TIMEOUT_MS
            monitor = self.monitor = Monitor(xpub, threading.current_thread().name)
            self.auth = secure(xpub, self._ctx, self._curve, self._endpoints)
            self.resolved = attach(xpub, self._endpoints, multicast=self._multicast)
        except Exception:
            if monitor is not None:
                monitor.close()
            if self.auth is not None:
                self.auth.stop()
            xpub.close(linger=0)
            self._handoff.end(dead=True)
            raise
        return xpub, monitor

    def serve(self, state: tuple[zmq.Socket, Monitor]) -> None:
        try:
            self._loop(*state)
        except zmq.ContextTerminated:
            pass  # close() past its deadline woke us: nothing left to do but release

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self.error = error
            self._lock.notify_all()

    def teardown(self, state: tuple[zmq.Socket, Monitor]) -> None:
        xpub, monitor = state
        monitor.close()
        # Linger only for what is left of close()'s time: the context's term() waits
        # that long for the queue to leave, and no longer.
        xpub.close(linger=self.linger_left())
        # Callers waiting for room: nobody takes any more (ClosedError if close() ended us).
        self._handoff.end(dead=True, closed=self.closing)
        if self.auth is not None:
            self.auth.stop()

    def linger_left(self) -> int:
        """Milliseconds the socket may still linger: what remains of close()'s deadline."""
        if self.deadline is None:
            return int(self._linger * 1000)
        return max(0, int((self.deadline - time.monotonic()) * 1000))

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _loop(self, xpub: zmq.Socket, monitor: Monitor) -> None:
        handoff = self._handoff
        poller = zmq.Poller()
        poller.register(xpub, zmq.POLLIN)
        poller.register(handoff.fileno(), zmq.POLLIN)
        poller.register(monitor.socket, zmq.POLLIN)
        waiting: dict[int, list | None] = {}   # ticket -> frames, until its turn comes
        out: collections.deque[_Outgoing] = collections.deque()  # in send order
        next_ticket = 0
        closing = False
        next_heartbeat = time.monotonic() + self._heartbeat
        lingering = False

        while True:
            if self.deadline is not None and not lingering:
                # close() was called: whatever happens now, the socket lingers no longer
                # than its deadline (also if term() has to wake us).
                xpub.linger = self.linger_left()
                lingering = True
            now = time.monotonic()
            # No tick: hand-offs, doorbells (rows starting to wait), close() and
            # subscriptions all arrive on polled sockets; only times we know of bound the
            # wait. With messages waiting, send() does the waiting.
            timeout = 0.0 if out else float("inf")
            if self._replies and self._replies_retry is not None:
                timeout = min(timeout, self._replies_retry - now)
            with self._lock:
                timeout = min(timeout, self._coalescer.next_due() - now)
            if self._heartbeat:
                timeout = min(timeout, next_heartbeat - now)
            events = dict(poller.poll(None if timeout == float("inf") else max(0, int(timeout * 1000))))

            if monitor.socket in events:
                with self._lock:
                    monitor.drain()
            if xpub in events:
                self._read_subscriptions(xpub)
            # While messages wait for a slow subscriber, leave the callers' hand-offs
            # where they are: the queue fills and send() waits - backpressure.
            if handoff.fileno() in events and len(out) < 2:
                for item in handoff.take():
                    if item[0] == b"C":
                        closing = True
                    else:
                        waiting[item[1]] = item[2:] if item[0] == b"D" else []

            # Rows that waited flush_interval are encoded here, on the owner thread.
            now = time.monotonic()
            with self._lock:
                due = self._coalescer.take_all() if closing else self._coalescer.take_due(now)
            for job in due:
                waiting[job[0]] = self._coalescer.encode(job)

            while next_ticket in waiting:
                frames = waiting.pop(next_ticket)
                next_ticket += 1
                for i in range(0, len(frames), 3):
                    out.append(_Outgoing(*frames[i:i + 3]))

            if self._heartbeat and time.monotonic() >= next_heartbeat:
                if not out:  # a subscriber still busy with data needs no heartbeat
                    out.extend(self._control(wire.Kind.HEARTBEAT))
                next_heartbeat = time.monotonic() + self._heartbeat

            self._send_out(xpub, out)
            if not out and (self._replies_retry is None or time.monotonic() >= self._replies_retry):
                # The past yields to the present: sent when no live message waits, and never
                # waited for - a subscriber's full queue leaves it for a moment, not the
                # owner (an XPUB cannot be polled for room: libzmq#1597)
                with self._lock:
                    while self._inbox and len(self._replies) < 2:
                        self._replies.append(_Outgoing(*self._inbox.popleft(), reply=True))
                        self._lock.notify_all()   # a replay waiting for room
                full = bool(self._replies) and self._send_out(xpub, self._replies, wait=False)
                self._replies_retry = time.monotonic() + _REPLY_RETRY if full else None

            if self._past_deadline():
                self.abandoned = True  # close() timed out: what is queued here is dropped
                return
            if closing and not out:
                with self._lock:
                    done = next_ticket == self._coalescer.tickets
                if done:
                    self._end_stream(xpub, poller, monitor)
                    self._drain_multicast(xpub)
                    return

    def _end_stream(self, xpub: zmq.Socket, poller: zmq.Poller, monitor: Monitor) -> None:
        """Send end-of-stream, never dropped: it is what ``collect()`` waits for.

        It waits for room under either policy (at most until close's deadline, which
        ends a wait with ETERM). But when libzmq drops a message for a full subscriber
        ("drop") it parks that subscriber's pipe until its reader has caught up by half
        the high-water mark, and anything sent meanwhile passes it by without a trace -
        end-of-stream too, ``XPUB_NODROP`` or not - and nothing tells when the pipe is
        back. So after drops end-of-stream is offered again, at growing intervals (up to
        1 s), until the only peer made a copy wait for room (its pipe is active again
        and the copy is queued behind its backlog), no peer is left, or close()'s
        deadline is near. Receivers take repeated end-of-stream messages as one.

        (Receivers acknowledging end-of-stream upstream would end this sooner, but any
        message reaching a producer as it closes its TCP connection makes the kernel
        reset that connection, and the reset discards what the producer sent last.)
        """
        interval = 0.05
        while True:
            out = collections.deque(self._control(wire.Kind.END_OF_STREAM))
            waited = False
            while out:
                if self._past_deadline():
                    self.abandoned = True
                    return
                waited |= self._send_out(xpub, out, final=True)
            if not self._dropped or (waited and monitor.peers == 1):
                return
            end = (self.deadline or time.monotonic()) - 0.1
            deadline = min(end, time.monotonic() + interval)
            while (left := deadline - time.monotonic()) > 0 and monitor.peers:
                events = dict(poller.poll(max(1, int(left * 1000))))
                if xpub in events:
                    self._read_subscriptions(xpub)
                if monitor.socket in events:
                    with self._lock:
                        monitor.drain()
            if monitor.peers == 0 or time.monotonic() >= end:
                return
            interval = min(interval * 2, 1.0)

    def _drain_multicast(self, xpub: zmq.Socket) -> None:
        """Stay until PGM's rate limiter has sent what was queued, then a bit for repairs.

        libzmq drops what a pgm/epgm socket still holds when it closes, whatever the
        linger; and it sends at most ``rate_kbps``. So the owner waits for the bytes sent
        so far to have left at that rate, sending heartbeats that let receivers ask for
        any lost packets, within ``linger``.
        """
        if self._first_send is None or not any(ep.multicast for ep in self._endpoints):
            return
        rate = {**MULTICAST_DEFAULTS, **(self._multicast or {})}["rate_kbps"] * 1000 / 8
        with self._lock:
            sent = self.sent["bytes"]
        left = sent / rate - (time.monotonic() - self._first_send) + 0.5
        end = time.monotonic() + min(max(left, 0.5), self._linger)
        if self.deadline is not None:
            end = min(end, self.deadline)
        # Heartbeats every _REPAIR_BEAT while the socket drains; in between the owner
        # waits in its poll (for those times only), still serving subscriptions.
        poller = zmq.Poller()
        poller.register(xpub, zmq.POLLIN)
        beat = time.monotonic()
        while (now := time.monotonic()) < end:
            if now >= beat:
                for m in self._control(wire.Kind.HEARTBEAT):
                    self._send_out(xpub, collections.deque([m]))
                beat = now + _REPAIR_BEAT
            wait = max(0.0, min(beat, end) - time.monotonic())
            if xpub in dict(poller.poll(int(wait * 1000) + 1)):
                self._read_subscriptions(xpub)

    def _read_subscriptions(self, xpub: zmq.Socket) -> None:
        while True:
            try:
                msg = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue  # not a subscription message
            if history.is_history(msg[1:]):
                self._history_request(msg[1:], subscribed=msg[0] == 1)
                continue
            if history.is_view(msg[1:]):
                self._view_subscription(msg[1:], subscribed=msg[0] == 1)
                continue
            with self._lock:
                n = self.subscriptions.get(msg[1:], 0) + (1 if msg[0] == 1 else -1)
                self.subscriptions[msg[1:]] = max(0, n)
                self._lock.notify_all()

    def _history_request(self, topic: bytes, *, subscribed: bool) -> None:
        """A subscriber asks for the past (or stops asking, or grants credit): answer
        under its topic."""
        credit = history.parse_credit(topic)
        if credit is not None:
            if subscribed and self.history_provider is not None:
                self.history_provider.credit(*credit)
            return
        if not subscribed:
            if self.history_provider is not None:
                self.history_provider.cancel(topic)
            return
        try:
            req = history.parse_request(topic)
        except history.RequestError as e:
            self._reply_end(topic, "refused", str(e))
            return
        if req.producer is not None and req.producer != self.producer_id.hex():
            return   # another producer is asked
        wanted = req.topic.encode("utf-8")
        with self._lock:
            mine = [t for t in self._stream.topics if t.startswith(wanted)]
        if not mine:
            return   # a request for another stream: its producers answer
        if self.history_provider is None:
            self._reply_end(topic, "no history",
                            "this producer keeps no history: it sends the rows it is given "
                            "(Producer.send), or publishes files without history on "
                            "(zpandas publish --history)")
            return
        answer = self.history_provider.start(req, topic)
        if answer is not None:
            self._reply_end(topic, *answer)

    def _view_subscription(self, topic: bytes, *, subscribed: bool) -> None:
        """A subscriber asks for a live view, or one stops: served while anyone asks (for
        its base topic, one subscriber more or less)."""
        try:
            view = history.parse_view(topic)
        except history.RequestError as e:
            if subscribed:
                self._reply_end(topic, "refused", str(e))
            return
        n = max(0, self._view_counts.get(topic, 0) + (1 if subscribed else -1))
        base = view.topic.encode("utf-8")
        with self._lock:
            self.subscriptions[base] = max(0, self.subscriptions.get(base, 0) + (1 if subscribed else -1))
            views = dict(self._coalescer.views)   # encode() reads the old one meanwhile
            if n and topic not in views:
                views[topic] = LiveView(topic, view)
                # heartbeats on it from now: its subscribers see this producer alive
                # (and a since= subscriber waits for its past) before a row matches
                self._stream.add_topic(topic)
            elif n and subscribed and views[topic].refused:
                self._reply_end(topic, "refused", views[topic].refused)   # to the newcomer
            elif not n:
                views.pop(topic, None)
            self._coalescer.views = views
            self._lock.notify_all()
        if n:
            self._view_counts[topic] = n
        else:
            self._view_counts.pop(topic, None)

    def post_reply(self, topic: bytes, frames: list, cancelled: threading.Event) -> bool:
        """A replay's message, for the owner to send when no live message waits (any
        thread). Waits while a few are ahead of it; False once cancelled or closing."""
        with self._lock:   # woken by the owner taking one, a cancel (wake), close or failure
            while (len(self._inbox) >= _REPLIES_AHEAD and not cancelled.is_set()
                   and not self.closing and self.error is None):
                self._lock.wait()
            if cancelled.is_set() or self.closing or self.error is not None:
                return False
            self._inbox.append(frames)
        self._handoff.ring()
        return True

    def wake(self) -> None:
        """Wake replays waiting in :meth:`post_reply` (one was cancelled)."""
        with self._lock:
            self._lock.notify_all()

    def _reply_end(self, topic: bytes, status: str, reason: str, **counts) -> None:
        numbers = self._reply_numbers.setdefault(topic, [0, 0])
        header = wire.Header(kind=wire.Kind.HISTORY_END, producer=self.producer_id, name=self.name,
                             seq=numbers[0], total=numbers[1], send_ns=time.time_ns())
        frames = wire.encode(history.end_table(status, reason, **counts), topic=topic, header=header)
        self._replies.append(_Outgoing(*frames, reply=True))

    def _send_out(self, xpub: zmq.Socket, out: collections.deque[_Outgoing], *,
                  final: bool = False, wait: bool = True) -> bool:
        """Send queued messages in order, until done or a subscriber is full ("block").

        Under "drop" a message meeting a full subscriber is dropped for that one only;
        ``final`` messages (end-of-stream) wait for room under either policy. Returns
        whether any send had to wait; with ``wait=False`` (history replies: neither
        dropped nor waited for) whether one met a full subscriber and stays first.
        """
        waited = False
        while out:
            m = out[0]
            topic = bytes(m.topic)
            if m.sent == 0 and not m.reply:
                # Numbered here, in send order; a retry after EAGAIN keeps the number.
                with self._lock:
                    self._stream.stamp(topic, m.header, time.time_ns())
            frames = (m.topic, m.header, m.body)
            while m.sent < 3:
                f = frames[m.sent]
                flags, copy = zmq.SNDMORE if m.sent < 2 else 0, len(f) < ZERO_COPY_MIN
                try:
                    xpub.send(f, flags | zmq.NOBLOCK, copy=copy)
                except zmq.Again:
                    if not wait:
                        return True
                    if self.policy == "drop" and not final:
                        # Lossy for this frame only: libzmq delivers it to every
                        # subscriber with room and drops it for the full ones.
                        self._dropped = True
                        xpub.setsockopt(zmq.XPUB_NODROP, 0)
                        try:
                            xpub.send(f, flags | zmq.NOBLOCK, copy=copy)
                        except zmq.Again:
                            return waited  # not expected when lossy; retried next turn
                        finally:
                            xpub.setsockopt(zmq.XPUB_NODROP, 1)
                        m.sent += 1
                        continue
                    # Wait for the full subscriber, at most SNDTIMEO at a time so that
                    # subscriptions and heartbeats are still served.
                    waited = True
                    t0 = time.perf_counter()
                    try:
                        xpub.send(f, flags, copy=copy)
                    except zmq.Again:
                        return waited
                    finally:
                        with self._lock:
                            self.sent["waits"] += 1
                            self.sent["blocked_s"] += time.perf_counter() - t0
                m.sent += 1
            out.popleft()
            if m.reply:
                with self._lock:
                    self.sent["history_messages"] += 1
                continue
            view = history.is_view(topic)
            with self._lock:
                self._stream.sent(topic, m.kind, m.rows, m.source, m.end, claims=not view)
                if m.kind is wire.Kind.DATA and view:
                    self.sent["view_messages"] += 1
                elif m.kind is wire.Kind.DATA:
                    self.sent["messages"] += 1
                    self.sent["rows"] += m.rows
                    self.sent["bytes"] += len(topic) + len(m.header) + len(m.body)
            if m.kind is wire.Kind.DATA and self._first_send is None:
                self._first_send = time.monotonic()
        return waited

    def _control(self, kind: wire.Kind) -> list[_Outgoing]:
        """End-of-stream or heartbeat messages, one per topic; numbered when sent."""
        with self._lock:  # send() may add a topic meanwhile
            return [_Outgoing(topic, header, b"") for topic, header in self._stream.control(kind)]



#: Data messages ZeroMQ's I/O thread may hold beyond a queue: one 8 KiB batch of them
#: (each is a header of about 100 bytes and an Arrow IPC body of several hundred).
BATCH_MESSAGES = 16


class Handoff:
    """Messages from calling threads to the owner: a bounded queue and a doorbell.

    No socket is shared or left behind by a thread: callers append under a condition
    and write a byte to a pipe, whose read end is in the owner's poller (zmq.Poller
    takes plain file descriptors), so the owner sleeps in an untimed poll and any
    thread, short-lived or not, wakes it. A full queue makes callers wait -
    backpressure - until the owner takes, the Producer closes, or the owner dies.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.closed = False       # no more messages: callers get ClosedError
        self.dead = False         # the owner ended: nobody takes messages

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of unread rings: the owner is awake anyway
        except OSError:
            pass  # closed: the Producer is gone

    def put(self, item: list, deadline: float | None = None) -> None:
        with self._cond:
            while len(self._items) >= self.capacity:
                self._check()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the producer thread is not taking messages")
                self._cond.wait(left)
            self._check()
            self._items.append(item)
        self.ring()

    def _check(self) -> None:
        if self.closed:
            raise ClosedError("this Producer was closed while rows were being handed over")
        if self.dead:
            raise ProducerBrokenError("producer thread is gone")

    def take(self) -> list:
        """Everything queued (owner thread); rings are drained first, so none is lost."""
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items

    def end(self, *, closed: bool = False, dead: bool = False) -> None:
        with self._cond:
            self.closed |= closed
            self.dead |= dead
            self._cond.notify_all()

    def release(self) -> None:
        os.close(self._read)
        os.close(self._write)


class _Outgoing:
    """One message on its way out of the owner thread."""

    __slots__ = ("topic", "header", "body", "kind", "rows", "source", "end", "sent", "reply")

    def __init__(self, topic, header, body, reply: bool = False) -> None:
        self.topic = topic
        self.header = bytearray(header)   # stamped in place when its turn comes
        self.body = body
        h = wire.Header.unpack(self.header)
        self.kind = h.kind
        self.rows = h.rows
        self.source = h.source
        self.end = h.end
        self.sent = 0                     # frames already accepted by the socket
        self.reply = reply                # a history reply: numbered when it was made


