"""Producer: publish DataFrames and Arrow tables as wire-format messages on a PUB socket.

Threads
-------
One thread (``zpandas-producer-N``, see :mod:`zpandas._owner`) owns the XPUB socket: it
alone sends, numbers messages (:class:`zpandas.streams.SendStream`), reads subscriptions
and sends heartbeats. Callers on any thread encode their
Arrow IPC bodies themselves (the expensive part, in parallel) and hand the frames to the
owner through a bounded queue and a doorbell pipe in the owner's poller (``_Handoff``) -
no socket is touched by two threads, and no calling thread leaves one behind. Each
hand-off carries a ticket taken under a lock when the rows were accepted;
the owner sends in ticket order, so rows leave in the order ``send()`` accepted them and
sequence numbers are gap-free.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket as _socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import pyarrow as pa
import zmq

from . import wire
from .endpoints import MULTICAST_DEFAULTS, Curve, EndpointsLike, attach, parse_endpoints, secure
from ._monitor import Monitor
from ._owner import OwnerThread
from .errors import ClosedError, ProducerBrokenError
from .streams import SendStream

__all__ = ["Producer", "to_table"]

_ids = itertools.count(1)
Policy = Literal["block", "drop"]
_TICKET = "<Q"
ZERO_COPY_MIN = 64 * 1024  # below this a copy is cheaper than zero-copy bookkeeping
_SEND_TIMEOUT_MS = 100     # longest a blocked send holds the owner away from its loop
_OWNER_GRACE = 0.5         # close(): how long past its deadline the owner may take to notice


def to_table(data) -> pa.Table:
    """Convert a DataFrame, Table or RecordBatch to a Table without schema metadata.

    A DataFrame's index is kept as column(s) unless it is the default RangeIndex; pandas
    metadata is dropped so that equal columns give equal schemas (and fingerprints)
    whatever produced them.
    """
    if isinstance(data, pd.DataFrame):
        if not isinstance(data.index, pd.RangeIndex) or data.index.name is not None:
            data = data.reset_index()
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"cannot convert this DataFrame to Arrow: {e}") from e
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        table = data
    else:
        raise TypeError(f"send() takes a pandas DataFrame, pyarrow Table or RecordBatch, "
                        f"not {type(data).__name__}")
    return table.replace_schema_metadata(None) if table.schema.metadata else table


@dataclass
class _Pending:
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


class Producer:
    """Publish DataFrames on a ZeroMQ PUB socket as Arrow IPC frames.

    Parameters
    ----------
    endpoint : str or list of str
        Where to publish. ``">tcp://host:5556"`` connects (the default without a
        prefix), ``"@tcp://*:5556"`` binds. A list or a comma-separated string
        publishes on several at once.
    topic : str, default ""
        The topic of messages sent without an explicit ``topic=``. Subscribers match
        topics by prefix, as ZeroMQ does.
    name : str, optional
        A human-readable name shown in the subscriber's stats (default ``host:pid``).
    frame_bytes : int, default 4 MiB
        Rows are coalesced into frames of roughly this size; small sends wait at most
        ``flush_interval`` seconds for company.
    flush_interval : float, default 0.05
        The longest a small send waits before it is sent in a frame of its own.
    wait_for_subscribers : int, default 0
        Block in the constructor until this many subscriptions matching ``topic`` have
        arrived, so a batch job never publishes into the void (the slow-joiner effect).
    wait_timeout : float, default 30
        Seconds to wait for those subscribers before raising ``TimeoutError``.
    linger : float, default 10
        Seconds ``close()`` waits for queued messages to reach the network.
    heartbeat : float, default 1.0
        Seconds between heartbeats on each topic (0 disables them).
    policy : {"block", "drop"}, default "block"
        What happens when a subscriber cannot keep up and ``buffer_bytes`` are queued
        for it:

        * ``"block"`` never loses a row: sending waits until the subscriber catches up
          (ZeroMQ's ``XPUB_NODROP``), and :meth:`send` blocks once the socket thread
          is behind. The time spent waiting is ``stats()["blocked_s"]``. For batch
          jobs (with a subscriber whose own policy is ``"block"``).
        * ``"drop"`` never slows this node: messages for that subscriber are dropped
          (others still get them), and the subscriber reports exactly how many
          messages and rows it missed (``Subscriber.gaps()``). For live monitoring.
          End-of-stream is the exception: after drops, ``close()`` offers it again
          while the subscriber is connected, for up to ``linger`` seconds.

        A message sent while no subscriber is connected is dropped under both.
    buffer_bytes : int, default 256 MiB
        Memory the socket may queue per subscriber, translated to ZeroMQ's high-water
        mark in messages of ``frame_bytes``.
    curve : Curve, optional
        CURVE security: authenticated, encrypted connections (see :class:`Curve`).
    multicast : dict, optional
        Options for ``epgm://``/``pgm://`` endpoints, over ``MULTICAST_DEFAULTS``
        (``rate_kbps``, ``recovery_ms``, ``buffer_bytes``, ``hops``).

    Examples
    --------
    >>> with zpandas.Producer(">tcp://127.0.0.1:5556", topic="metrics") as p:  # doctest: +SKIP
    ...     p.send(df)
    """

    def __init__(self, endpoint: EndpointsLike, *, topic: str = "", name: str | None = None,
                 frame_bytes: int = 4 << 20, flush_interval: float = 0.05,
                 wait_for_subscribers: int = 0, wait_timeout: float = 30.0,
                 linger: float = 10.0, heartbeat: float = 1.0, policy: Policy = "block",
                 buffer_bytes: int = 256 << 20, curve: Curve | None = None,
                 multicast: dict | None = None) -> None:
        if policy not in ("block", "drop"):
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        if frame_bytes < 1:
            raise ValueError("frame_bytes must be positive")
        if wait_for_subscribers < 0:
            raise ValueError("wait_for_subscribers must be >= 0")
        self._endpoints = parse_endpoints(endpoint, default="connect")
        if wait_for_subscribers and all(ep.multicast for ep in self._endpoints):
            raise ValueError("wait_for_subscribers needs a tcp:// or ipc:// endpoint: multicast "
                             "carries no subscriptions back to the publisher")
        self._curve = curve
        self._multicast = multicast
        self._auth = None
        self._first_send: float | None = None
        self.topic = topic
        self.id = uuid.uuid4().bytes
        self.name = name or f"{_socket.gethostname()}:{os.getpid()}"
        self.frame_bytes = frame_bytes
        self.flush_interval = flush_interval
        self._linger = linger
        self._heartbeat = heartbeat
        self.policy = policy
        self._hwm = max(16, buffer_bytes // frame_bytes)

        self._lock = threading.Condition()
        self._pending: dict[bytes, _Pending] = {}
        self._tickets = 0          # tickets handed out, under _lock
        self._closing = False
        self._error: BaseException | None = None
        self._subscriptions: dict[bytes, int] = {}
        self._sent = {"messages": 0, "rows": 0, "bytes": 0, "blocked_s": 0.0, "waits": 0,
                      "rejects": 0}
        # Numbers and checkpoint claims (sans-IO, under _lock). A message may still be in
        # ZeroMQ's queues in this process until SNDHWM + one batch more were sent after it.
        self._stream = SendStream(self.id, self.name, in_flight=self._hwm + _BATCH_MESSAGES)
        self._stream.add_topic(_topic_bytes(topic))
        self._deadline: float | None = None  # close()'s, for the owner's last messages
        self._dropped = False  # "drop" had a full subscriber: its pipe may be parked
        self._abandoned = False  # the owner gave up at close()'s deadline
        self._monitor: Monitor | None = None

        self._ctx = zmq.Context()
        # Calling threads' messages to the owner (see _Handoff); a full queue makes
        # send() wait (backpressure), as the owner leaves it alone behind a slow subscriber.
        self._handoff = _Handoff(capacity=8)
        self._thread = OwnerThread(f"zpandas-producer-{next(_ids)}", self._setup, self._serve,
                                   self._teardown, self._failed)
        try:
            self._thread.start()
        except BaseException:
            self._ctx.term()
            self._handoff.release()
            self._closing = True
            raise
        if wait_for_subscribers:
            try:
                self.wait_for_subscribers(wait_for_subscribers, timeout=wait_timeout)
            except BaseException:
                self.close()
                raise

    # -- public API -------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """The addresses this producer is bound or connected to (ports resolved)."""
        return list(self._resolved)

    @property
    def closed(self) -> bool:
        return self._closing

    def send(self, data, *, topic: str | None = None, source: str = "",
             offsets: tuple[int, int] = (-1, -1)) -> None:
        """Queue rows for sending; safe to call from any number of threads at once.

        Parameters
        ----------
        data : pandas.DataFrame, pyarrow.Table or pyarrow.RecordBatch
            The rows. A DataFrame's non-default index is sent as column(s).
        topic : str, optional
            Overrides the producer's default topic for these rows.
        source : str, optional
            Where the rows came from (e.g. a file identity), carried in the header.
        offsets : (int, int), optional
            The byte range ``[start, end)`` of the rows in ``source``.

        Raises
        ------
        ClosedError
            After ``close()``.
        ProducerBrokenError
            If the socket thread failed; the original error is ``__cause__``.
        """
        table = to_table(data)
        tkey = _topic_bytes(self.topic if topic is None else topic)
        start, end = offsets
        jobs = []
        with self._lock:
            self._check()
            self._stream.add_topic(tkey)
            if table.num_rows == 0:
                return
            pend = self._pending.get(tkey)
            started = pend is None or not pend.accepts(table, source, start)
            if started:
                if pend is not None:
                    jobs.append(self._take(tkey))
                pend = self._pending[tkey] = _Pending(since=time.monotonic(), source=source,
                                                      start=start)
            pend.tables.append(table)
            pend.nbytes += table.nbytes
            pend.end = end
            if pend.nbytes >= self.frame_bytes:
                jobs.append(self._take(tkey))
                started = False
        for job in jobs:
            self._encode_and_push(*job)
        if started and not jobs:
            # Rows now wait for company: ring the owner, whose poll has no timeout for
            # them yet, so that they leave flush_interval from now, not later.
            self._handoff.ring()

    def send_rejects(self, rejects, *, topic: str | None = None, source: str = "",
                     offsets: tuple[int, int] = (-1, -1)) -> None:
        """Send lines that could not be parsed, so subscribers can count and show them.

        Parameters
        ----------
        rejects : DataFrame or Table
            One row per reject: ``file``, ``line``, ``offset``, ``reason``, ``text``.
        source, offsets
            As for :meth:`send`: the range of the source the rejects were found in.
        """
        from .sources.lines import REJECT_SCHEMA
        table = to_table(rejects)
        if not table.num_rows:
            return
        try:  # receivers take exactly these columns (a DataFrame's text is large_string)
            table = table.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"rejects need the columns {REJECT_SCHEMA.names}: {e}") from None
        tkey = _topic_bytes(self.topic if topic is None else topic)
        header = wire.Header(kind=wire.Kind.REJECTS, producer=self.id, name=self.name,
                             source=source, start=offsets[0], end=offsets[1])
        frames = wire.encode(table, topic=tkey, header=header)
        jobs = []
        with self._lock:
            self._check()
            self._stream.add_topic(tkey)
            if tkey in self._pending:  # rows accepted before these rejects leave first
                jobs.append(self._take(tkey))
            ticket = self._tickets
            self._tickets += 1
            self._sent["rejects"] += table.num_rows
        for job in jobs:
            self._encode_and_push(*job)
        self._handoff.put([b"D", ticket, *frames])

    def sent_offsets(self) -> dict[str, int]:
        """For each ``source``: the end offset of the last rows that have surely left
        this process (rejects do not count: their rows may still be waiting).

        What a checkpoint may safely record, whatever a slow subscriber holds back:
        rows up to there are in the kernel's socket buffers or beyond, which deliver
        them even if this process is killed. A message is counted once ``SNDHWM`` + 16
        more have been sent after it (ZeroMQ's queue to a subscriber holds at most
        ``SNDHWM``, its I/O thread one batch more), or when :meth:`close` has sent
        everything.
        """
        with self._lock:
            return dict(self._stream.claimed)

    def flush(self) -> None:
        """Send rows still being coalesced now, without waiting for ``flush_interval``."""
        with self._lock:
            self._check()
            jobs = [self._take(t) for t in list(self._pending)]
        for job in jobs:
            self._encode_and_push(*job)

    def wait_for_subscribers(self, n: int = 1, *, topic: str | None = None,
                             timeout: float | None = 30.0) -> None:
        """Block until ``n`` subscriptions matching a topic are present.

        A subscription matches when it is a prefix of the topic (ZeroMQ's rule), so a
        subscriber to everything counts for every topic.

        Parameters
        ----------
        n : int
        topic : str, optional
            Default: this producer's topic.
        timeout : float, optional

        Raises
        ------
        TimeoutError
            If they do not arrive within ``timeout`` seconds.
        """
        topic = self.topic if topic is None else topic
        tkey = _topic_bytes(topic)
        with self._lock:
            ok = self._lock.wait_for(
                lambda: self._error is not None or self._closing
                or self._matching_subscriptions(tkey) >= n, timeout)
            self._check()
            if not ok:
                raise TimeoutError(f"{self._matching_subscriptions(tkey)} of {n} subscribers to "
                                   f"topic {topic!r} after {timeout} s on "
                                   f"{', '.join(map(str, self._endpoints))}")

    def stats(self) -> dict:
        """Counters of what was sent.

        Returns
        -------
        dict
            ``messages``, ``rows``, ``bytes``: data sent. ``blocked_s`` and ``waits``:
            time spent, and times, waiting for a slow subscriber (``policy="block"``,
            and end-of-stream under either policy).
            ``subscriptions``: subscriptions present now. ``peers``: connections now.
            ``rejects``: unparsable lines sent with :meth:`send_rejects`.
            ``auth_failures``: CURVE handshakes refused.
        """
        with self._lock:
            out = dict(self._sent)
            out["subscriptions"] = sum(self._subscriptions.values())
            out["peers"] = self._monitor.peers if self._monitor else 0
            out["auth_failures"] = self._monitor.auth_failures if self._monitor else 0
            return out

    def close(self, timeout: float | None = None) -> None:
        """Flush, send end-of-stream on every topic used, and release the socket.

        Idempotent. Waits up to ``timeout`` seconds (default: ``linger``) for queued
        messages to leave, then drops the rest and raises ``TimeoutError``.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            jobs = [self._take(t) for t in list(self._pending)]
        deadline = time.monotonic() + (self._linger if timeout is None else timeout)
        self._deadline = deadline
        try:
            for job in jobs:
                self._encode_and_push(*job, deadline=deadline)
            # Wake the owner: it sends what is left, then end-of-stream.
            self._handoff.put([b"C"], deadline=deadline)
        except (TimeoutError, ClosedError, ProducerBrokenError):
            # The owner is stuck behind a slow subscriber, gave up at the deadline (and
            # closed the hand-off: ClosedError) or is gone: reported below.
            pass
        finally:
            # The owner notices the deadline itself within one send timeout (it checks
            # between sends); term() must not start before, or libzmq refuses the
            # shorter LINGER the owner sets (ETERM) and waits out the old one.
            self._thread.join(max(0.0, deadline - time.monotonic()) + _OWNER_GRACE)
            stuck = self._abandoned or self._thread.is_alive()
            # A thread blocked handing off gets ClosedError now.
            self._handoff.end(closed=True)
            # term() returns once the owner's socket has sent its queue (or lingered):
            # zero-copy buffers are never freed while libzmq may still read them. A stuck
            # owner is woken by it (ETERM), closes its socket and ends.
            self._ctx.term()
            self._thread.join()
            self._handoff.release()
            if not stuck:  # everything was sent: term() waited for ZeroMQ's queues
                with self._lock:
                    self._stream.all_sent()
        if stuck:
            raise TimeoutError(f"{self._thread.name} had not sent everything within "
                               f"{self._linger if timeout is None else timeout} s; the rest was dropped")
        if self._error is not None:
            raise ProducerBrokenError(f"producer thread failed: {self._error}") from self._error

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<zpandas.Producer {self.name!r} topic={self.topic!r} {state} {self._endpoints}>"

    # -- caller side --------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise ProducerBrokenError(f"producer thread failed: {self._error}") from self._error
        if self._closing:
            raise ClosedError("this Producer is closed")

    def _matching_subscriptions(self, tkey: bytes) -> int:
        return sum(n for prefix, n in self._subscriptions.items() if tkey.startswith(prefix))

    def _take(self, tkey: bytes):
        """Remove the topic's pending rows and give them a ticket (caller holds _lock)."""
        pend = self._pending.pop(tkey)
        ticket = self._tickets
        self._tickets += 1
        return ticket, tkey, pend

    def _encode(self, tkey: bytes, pend: _Pending) -> list:
        """Encode pending rows as one message, or several of ~frame_bytes if unsourced."""
        table = pend.tables[0] if len(pend.tables) == 1 else pa.concat_tables(pend.tables)
        header = wire.Header(producer=self.id, name=self.name, source=pend.source,
                             start=pend.start, end=pend.end)
        parts = 1 if pend.source else max(1, round(table.nbytes / self.frame_bytes))
        step = -(-table.num_rows // parts)
        frames = []
        for i in range(0, table.num_rows, step):
            frames += wire.encode(table.slice(i, step), topic=tkey, header=header)
        return frames

    def _encode_and_push(self, ticket: int, tkey: bytes, pend: _Pending,
                         deadline: float | None = None) -> None:
        item: list = [b"S", ticket]  # "skip" that ticket if encoding fails
        try:
            item = [b"D", ticket, *self._encode(tkey, pend)]
        finally:
            self._handoff.put(item, deadline)

    # -- socket owner thread ------------------------------------------------------------

    def _setup(self) -> tuple[zmq.Socket, Monitor]:
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
            monitor = self._monitor = Monitor(xpub, threading.current_thread().name)
            self._auth = secure(xpub, self._ctx, self._curve, self._endpoints)
            self._resolved = attach(xpub, self._endpoints, multicast=self._multicast)
        except Exception:
            if monitor is not None:
                monitor.close()
            if self._auth is not None:
                self._auth.stop()
            xpub.close(linger=0)
            self._handoff.end(dead=True)
            raise
        return xpub, monitor

    def _serve(self, state: tuple[zmq.Socket, Monitor]) -> None:
        try:
            self._loop(*state)
        except zmq.ContextTerminated:
            pass  # close() past its deadline woke us: nothing left to do but release

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            self._error = error
            self._lock.notify_all()

    def _teardown(self, state: tuple[zmq.Socket, Monitor]) -> None:
        xpub, monitor = state
        monitor.close()
        # Linger only for what is left of close()'s time: the context's term() waits
        # that long for the queue to leave, and no longer.
        xpub.close(linger=self._linger_left())
        # Callers waiting for room: nobody takes any more (ClosedError if close() ended us).
        self._handoff.end(dead=True, closed=self._closing)
        if self._auth is not None:
            self._auth.stop()

    def _linger_left(self) -> int:
        """Milliseconds the socket may still linger: what remains of close()'s deadline."""
        if self._deadline is None:
            return int(self._linger * 1000)
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

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
            if self._deadline is not None and not lingering:
                # close() was called: whatever happens now, the socket lingers no longer
                # than its deadline (also if term() has to wake us).
                xpub.linger = self._linger_left()
                lingering = True
            now = time.monotonic()
            # No tick: hand-offs, doorbells (rows starting to wait), close() and
            # subscriptions all arrive on polled sockets; only times we know of bound the
            # wait. With messages waiting, send() does the waiting.
            timeout = 0.0 if out else float("inf")
            with self._lock:
                for pend in self._pending.values():
                    timeout = min(timeout, pend.since + self.flush_interval - now)
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
                due = [self._take(t) for t, p in list(self._pending.items())
                       if closing or now - p.since >= self.flush_interval]
            for ticket, tkey, pend in due:
                waiting[ticket] = self._encode(tkey, pend)

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

            if self._past_deadline():
                self._abandoned = True  # close() timed out: what is queued here is dropped
                return
            if closing and not out:
                with self._lock:
                    done = next_ticket == self._tickets
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
                    self._abandoned = True
                    return
                waited |= self._send_out(xpub, out, final=True)
            if not self._dropped or (waited and monitor.peers == 1):
                return
            end = (self._deadline or time.monotonic()) - 0.1
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
            sent = self._sent["bytes"]
        left = sent / rate - (time.monotonic() - self._first_send) + 0.5
        end = time.monotonic() + min(max(left, 0.5), self._linger)
        if self._deadline is not None:
            end = min(end, self._deadline)
        while time.monotonic() < end:
            for m in self._control(wire.Kind.HEARTBEAT):
                self._send_out(xpub, collections.deque([m]))
            time.sleep(0.1)  # pacing heartbeats while the socket drains; nothing to wait on

    def _read_subscriptions(self, xpub: zmq.Socket) -> None:
        while True:
            try:
                msg = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue  # not a subscription message
            with self._lock:
                n = self._subscriptions.get(msg[1:], 0) + (1 if msg[0] == 1 else -1)
                self._subscriptions[msg[1:]] = max(0, n)
                self._lock.notify_all()

    def _send_out(self, xpub: zmq.Socket, out: collections.deque[_Outgoing], *,
                  final: bool = False) -> bool:
        """Send queued messages in order, until done or a subscriber is full ("block").

        Under "drop" a message meeting a full subscriber is dropped for that one only;
        ``final`` messages (end-of-stream) wait for room under either policy. Returns
        whether any send had to wait.
        """
        waited = False
        while out:
            m = out[0]
            topic = bytes(m.topic)
            if m.sent == 0:
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
                            self._sent["waits"] += 1
                            self._sent["blocked_s"] += time.perf_counter() - t0
                m.sent += 1
            out.popleft()
            with self._lock:
                self._stream.sent(topic, m.kind, m.rows, m.source, m.end)
                if m.kind is wire.Kind.DATA:
                    self._sent["messages"] += 1
                    self._sent["rows"] += m.rows
                    self._sent["bytes"] += len(topic) + len(m.header) + len(m.body)
            if m.kind is wire.Kind.DATA and self._first_send is None:
                self._first_send = time.monotonic()
        return waited

    def _control(self, kind: wire.Kind) -> list[_Outgoing]:
        """End-of-stream or heartbeat messages, one per topic; numbered when sent."""
        with self._lock:  # send() may add a topic meanwhile
            return [_Outgoing(topic, header, b"") for topic, header in self._stream.control(kind)]


#: Data messages ZeroMQ's I/O thread may hold beyond a queue: one 8 KiB batch of them
#: (each is a header of about 100 bytes and an Arrow IPC body of several hundred).
_BATCH_MESSAGES = 16


class _Handoff:
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

    __slots__ = ("topic", "header", "body", "kind", "rows", "source", "end", "sent")

    def __init__(self, topic, header, body) -> None:
        self.topic = topic
        self.header = bytearray(header)   # stamped in place when its turn comes
        self.body = body
        h = wire.Header.unpack(self.header)
        self.kind = h.kind
        self.rows = h.rows
        self.source = h.source
        self.end = h.end
        self.sent = 0                     # frames already accepted by the socket


def _topic_bytes(topic: str | bytes) -> bytes:
    return topic.encode("utf-8") if isinstance(topic, str) else bytes(topic)
