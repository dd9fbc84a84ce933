"""Subscriber: drain a SUB socket on a background thread into micro-batched DataFrames.

Threads
-------
A named worker thread (``zpandas-subscriber-N``) owns the SUB socket from creation to
close. It decodes messages zero-copy, keeps per-producer counters and sequence gaps,
retains the Arrow tables for :meth:`Subscriber.frame` and :meth:`Subscriber.collect`, and
hands micro-batches (Arrow tables) to a bounded queue. Conversion to pandas happens on
the caller's thread, in :meth:`Subscriber.get`, so the worker stays light and never
holds the GIL for long. An error in the worker is kept and re-raised on the caller's
next call, with the original as ``__cause__``.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Literal

import pandas as pd
import pyarrow as pa
import zmq

from . import wire
from ._batcher import MicroBatcher
from .endpoints import EndpointsLike, attach, parse_endpoints
from .errors import ClosedError, DataLossWarning, SubscriberBrokenError, WireError

__all__ = ["Subscriber"]

_ids = itertools.count(1)
Overflow = Literal["drop-oldest", "block"]


@dataclass
class _Stream:
    """What arrived from one (producer, topic)."""

    name: str
    messages: int = 0
    rows: int = 0
    bytes: int = 0
    next_seq: int = 0
    missed: int = 0          # data messages lost (sequence gaps)
    gaps: int = 0            # how many times a gap was seen
    first_seen: float = 0.0
    last_seen: float = 0.0
    lag: float = 0.0         # receive time - send time of the last message, seconds
    finished: bool = False


class Subscriber:
    """Receive rows from any number of producers as pandas DataFrames.

    Parameters
    ----------
    endpoint : str or list of str
        ``"@tcp://*:5556"`` binds (the default without a prefix): producers connect
        here. ``">tcp://node1:5556"`` connects to a producer that binds. A list or a
        comma-separated string does several at once.
    topics : str or sequence of str, default ()
        Topic prefixes to subscribe to; empty means everything.
    batch_rows : int, default 100_000
        A micro-batch is handed over once it has this many rows...
    latency : float, default 0.1
        ...or once its oldest rows have waited this many seconds.
    maxsize : int, default 64
        Micro-batches waiting for :meth:`get` before ``overflow`` applies.
    overflow : {"drop-oldest", "block"}, default "drop-oldest"
        When the queue is full: drop the oldest micro-batch (counted in ``stats()``),
        or stop reading the socket until :meth:`get` makes room.
    retain : int, optional
        Keep only the last ``retain`` rows for :meth:`frame` and :meth:`collect`
        (default: keep everything).
    max_message_bytes : int, default 256 MiB
        Larger messages are counted as bad (reason ``"oversize"``) and skipped.

    Examples
    --------
    >>> with zpandas.Subscriber("@tcp://*:5556") as sub:  # doctest: +SKIP
    ...     df = sub.collect(producers=4, timeout=60)
    """

    def __init__(self, endpoint: EndpointsLike = "@tcp://*:5556", *,
                 topics: str | tuple[str, ...] | list[str] = (),
                 batch_rows: int = 100_000, latency: float = 0.1, maxsize: int = 64,
                 overflow: Overflow = "drop-oldest", retain: int | None = None,
                 max_message_bytes: int = 256 << 20) -> None:
        if overflow not in ("drop-oldest", "block"):
            raise ValueError(f"overflow must be 'drop-oldest' or 'block', not {overflow!r}")
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if retain is not None and retain < 0:
            raise ValueError("retain must be >= 0 or None")
        self._endpoints = parse_endpoints(endpoint, default="bind")
        topics = [topics] if isinstance(topics, (str, bytes)) else list(topics)
        self.topics = tuple(t.encode() if isinstance(t, str) else bytes(t) for t in topics) or (b"",)
        self._batcher = MicroBatcher(batch_rows, latency)
        self._maxsize = maxsize
        self._overflow = overflow
        self._retain = retain
        self._max_bytes = max_message_bytes

        self._cond = threading.Condition()
        self._queue: collections.deque[pa.Table] = collections.deque()
        self._retained: collections.deque[tuple[bytes, pa.Table]] = collections.deque()
        self._retained_rows = 0
        self._streams: dict[tuple[bytes, bytes], _Stream] = {}
        self._counts = collections.Counter()
        self._bad = collections.Counter()
        self._error: BaseException | None = None
        self._closed = False
        self._stop = threading.Event()

        self._ctx = zmq.Context()
        self._resolved: list[str] = []
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zpandas-subscriber-{next(_ids)}",
                                        daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._ctx.term()
            self._closed = True
            error, self._error = self._error, None
            raise error

    # -- public API -------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Addresses bound or connected to, with ``*`` ports resolved (give these to producers)."""
        return list(self._resolved)

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, timeout: float | None = None) -> pd.DataFrame:
        """Return the next micro-batch as a DataFrame.

        Raises
        ------
        TimeoutError
            If none arrives within ``timeout`` seconds.
        ClosedError
            If the subscriber is closed and nothing is left in the queue.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: self._queue or self._closed or self._error, timeout)
            if self._queue:
                table = self._queue.popleft()
                self._cond.notify_all()  # room for a worker waiting under overflow="block"
            else:
                self._check()
                if not ok:
                    raise TimeoutError(f"no rows arrived within {timeout} s")
                raise ClosedError("this Subscriber is closed")
        return table.to_pandas()

    def __iter__(self) -> Iterator[pd.DataFrame]:
        """Yield micro-batches as they arrive, until :meth:`close` is called."""
        while True:
            try:
                yield self.get()
            except ClosedError:
                return

    def frame(self, last: int | None = None) -> pd.DataFrame:
        """Everything retained so far as one DataFrame (only the last ``last`` rows if given)."""
        with self._cond:
            self._check_error()
            tables = [t for _, t in self._retained]
        table = _concat(tables)
        if last is not None and table.num_rows > last:
            table = table.slice(table.num_rows - last)
        return table.to_pandas()

    def collect(self, producers: int = 1, timeout: float | None = None) -> pd.DataFrame:
        """Wait until ``producers`` producers have closed; return all their rows.

        The batch aggregation job: start the subscriber, start the producers, and
        ``collect`` returns once each has sent end-of-stream. Rows from producers still
        running are not included. Warns :class:`~zpandas.DataLossWarning` if any of
        their messages were lost on the way.

        Raises
        ------
        TimeoutError
            If fewer than ``producers`` finished within ``timeout`` seconds.
        """
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._error is not None or self._closed
                or len(self._finished()) >= producers, timeout)
            self._check_error()
            done = self._finished()
            if len(done) < producers:
                why = f"within {timeout} s" if not ok else "before the subscriber was closed"
                raise TimeoutError(f"{len(done)} of {producers} producers finished {why}; "
                                   f"{self._counts['rows']} rows from "
                                   f"{len({p for p, _ in self._streams})} producers so far")
            tables = [t for p, t in self._retained if p in done]
            missed = sum(s.missed for (p, _), s in self._streams.items() if p in done)
            evicted = self._counts["evicted_rows"]
        if missed:
            warnings.warn(f"{missed} messages from these producers were lost on the way "
                          "(see stats()['producers'])", DataLossWarning, stacklevel=2)
        if evicted:
            warnings.warn(f"{evicted} rows were evicted by retain={self._retain} and are "
                          "missing from the result", DataLossWarning, stacklevel=2)
        return _concat(tables).to_pandas()

    def stats(self) -> dict:
        """Counters of what arrived, what was lost and who sent it.

        Returns
        -------
        dict
            ``messages``, ``rows``, ``bytes`` (data received), ``missed`` (data messages
            lost to sequence gaps), ``bad_frames`` (count by reason), ``dropped_batches``
            and ``dropped_rows`` (queue overflow), ``evicted_rows`` (``retain``),
            ``queued`` (micro-batches waiting for :meth:`get`), and ``producers``: a
            DataFrame with one row per (producer, topic).
        """
        with self._cond:
            self._check_error()
            out = {k: self._counts[k] for k in ("messages", "rows", "bytes", "dropped_batches",
                                                  "dropped_rows", "evicted_rows")}
            out["missed"] = sum(s.missed for s in self._streams.values())
            out["bad_frames"] = dict(self._bad)
            out["queued"] = len(self._queue)
            rows = [{"producer": p.hex()[:12], "name": s.name, "topic": t.decode("utf-8", "replace"),
                     "messages": s.messages, "rows": s.rows, "bytes": s.bytes,
                     "missed": s.missed, "gaps": s.gaps, "finished": s.finished,
                     "lag_s": s.lag, "last_seen": pd.Timestamp(s.last_seen, unit="s", tz="UTC")}
                    for (p, t), s in self._streams.items()]
        out["producers"] = pd.DataFrame(rows, columns=[
            "producer", "name", "topic", "messages", "rows", "bytes", "missed", "gaps",
            "finished", "lag_s", "last_seen"])
        return out

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker thread and release the socket. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not stop within {timeout} s")
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<zpandas.Subscriber {state} {self._resolved or self._endpoints} topics={self.topics}>"

    # -- caller side helpers (hold _cond) ------------------------------------------------

    def _check_error(self) -> None:
        if self._error is not None:
            raise SubscriberBrokenError(f"subscriber thread failed: {self._error!r}") from self._error

    def _check(self) -> None:
        self._check_error()
        if self._closed:
            raise ClosedError("this Subscriber is closed")

    def _finished(self) -> set[bytes]:
        return {p for (p, _), s in self._streams.items() if s.finished}

    # -- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            sock = self._ctx.socket(zmq.SUB)
        except zmq.ZMQError as e:
            self._error = e
            self._started.set()
            return
        try:
            sock.linger = 0
            for t in self.topics:
                sock.subscribe(t)
            self._resolved = attach(sock, self._endpoints)
        except Exception as e:
            self._error = e
            sock.close()
            self._started.set()
            return
        self._started.set()
        try:
            self._loop(sock)
        except Exception as e:
            with self._cond:
                self._error = e
                self._cond.notify_all()
        finally:
            sock.close()

    def _loop(self, sock: zmq.Socket) -> None:
        batcher = self._batcher
        while not self._stop.is_set():
            # Poll continuously, even when idle: a bound SUB only greets new peers (and
            # sends them its subscriptions) while its thread is inside a zmq call.
            wait = batcher.timeout(time.monotonic())
            wait = 0.1 if wait is None else min(wait, 0.1)
            if sock.poll(int(wait * 1000)):
                for _ in range(1000):  # bounded, so batches still leave on time under load
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    table = self._receive(frames)
                    if table is not None:
                        for batch in batcher.add(table, time.monotonic()):
                            self._enqueue(batch)
            for batch in batcher.due(time.monotonic()):
                self._enqueue(batch)

    def _receive(self, frames) -> pa.Table | None:
        """Decode one message and account for it; return its rows, if any."""
        now = time.time()
        try:
            msg = wire.decode(frames, max_bytes=self._max_bytes)
        except WireError as e:
            with self._cond:
                self._bad[e.reason] += 1
            return None
        h = msg.header
        key = (h.producer, msg.topic)
        with self._cond:
            s = self._streams.get(key)
            if s is None:
                s = self._streams[key] = _Stream(h.name, first_seen=now)
            s.last_seen = now
            s.lag = max(0.0, now - h.send_ns / 1e9)
            # Data messages are numbered 0, 1, 2...; control messages carry the count
            # sent so far, so a lost last message shows up too.
            if h.seq > s.next_seq:
                s.missed += h.seq - s.next_seq
                s.gaps += 1
            s.next_seq = max(s.next_seq, h.seq + (h.kind is wire.Kind.DATA))
            if h.kind is wire.Kind.END_OF_STREAM:
                s.finished = True
                self._cond.notify_all()
                return None
            if h.kind is not wire.Kind.DATA:
                return None
            s.messages += 1
            s.rows += h.rows
            s.bytes += msg.nbytes
            self._counts["messages"] += 1
            self._counts["rows"] += h.rows
            self._counts["bytes"] += msg.nbytes
            if h.rows:
                self._retain_table(h.producer, msg.table)
        return msg.table if h.rows else None

    def _retain_table(self, producer: bytes, table: pa.Table) -> None:
        if self._retain == 0:
            return
        self._retained.append((producer, table))
        self._retained_rows += table.num_rows
        if self._retain is None:
            return
        while self._retained_rows - self._retained[0][1].num_rows >= self._retain:
            _, old = self._retained.popleft()
            self._retained_rows -= old.num_rows
            self._counts["evicted_rows"] += old.num_rows
        excess = self._retained_rows - self._retain
        if excess > 0:
            p, first = self._retained[0]
            self._retained[0] = (p, first.slice(excess))
            self._retained_rows -= excess
            self._counts["evicted_rows"] += excess

    def _enqueue(self, table: pa.Table) -> None:
        with self._cond:
            if self._overflow == "block":
                while len(self._queue) >= self._maxsize and not self._stop.is_set():
                    self._cond.wait(0.1)
            elif len(self._queue) >= self._maxsize:
                old = self._queue.popleft()
                self._counts["dropped_batches"] += 1
                self._counts["dropped_rows"] += old.num_rows
            self._queue.append(table)
            self._cond.notify_all()


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    # Tables from different files or producers may differ slightly (an int column that
    # is float elsewhere, a missing column): unify like pandas.concat would.
    return pa.concat_tables(tables, promote_options="permissive")
