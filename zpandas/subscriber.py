"""Subscriber: drain a SUB socket on a background thread into micro-batched DataFrames.

Threads
-------
A named worker thread (``zpandas-subscriber-N``, see :mod:`zpandas._owner`) owns the SUB
socket from creation to close and does all the receiving (:mod:`zpandas._receiver`): it
decodes messages zero-copy, feeds them to the stream protocol
(:class:`zpandas.streams.ReceiveStream`: counters, gaps, end of stream, dedup) and acts
on its events - it retains the Arrow tables for :meth:`Subscriber.frame` and
:meth:`Subscriber.collect`, hands micro-batches (Arrow tables) to a bounded queue, and
hands tables to aggregations, which fold on threads of their own. This class is the
caller's side: conversion to pandas happens on the caller's thread, in
:meth:`Subscriber.get`, so the worker stays light and never holds the GIL for long. An
error in the worker is kept and re-raised on the caller's next call, with the original
as ``__cause__``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
import warnings
from typing import Iterator, Literal

import pandas as pd
import pyarrow as pa
import zmq

from ._batcher import MicroBatcher
from ._owner import OwnerThread
from ._pastbar import PastBar
from ._receiver import Receiver
from ._tables import concat
from .aggregate import Aggregation
from .sources.lines import REJECT_SCHEMA, get_format
from .endpoints import Curve, EndpointsLike, parse_endpoints
from .errors import (ClosedError, DataLossWarning, MemoryBudgetWarning, SubscriberBrokenError)

__all__ = ["Subscriber"]


_ids = itertools.count(1)
Policy = Literal["block", "drop"]


#: Rows kept for frame() under policy="drop" unless ``retain`` says otherwise.
LIVE_RETAIN = 1_000_000
class Subscriber:
    """Receive rows from any number of producers as pandas DataFrames.

    Parameters
    ----------
    endpoint : str or list of str
        ``"@tcp://*:5556"`` binds (the default without a prefix): producers connect
        here. ``">tcp://node1:5556"`` connects to a producer that binds, or to a
        :class:`~zpandas.Proxy`. A list or a comma-separated string does several at once.
    topics : str or sequence of str, default ()
        Topic prefixes to subscribe to; empty means everything.
    policy : {"block", "drop"}, default "block"
        What happens when rows arrive faster than they are taken:

        * ``"block"`` never loses a row: once ``buffer_bytes`` of micro-batches wait
          for :meth:`get`, the subscriber stops reading and the producers wait (with
          their own ``policy="block"``). Until :meth:`get` or iteration is first used,
          nobody is waiting on the queue and its oldest micro-batch makes room
          instead (its rows stay in :meth:`frame` and :meth:`collect`).
        * ``"drop"`` never slows the producers: a full queue drops its oldest
          micro-batch (counted in ``stats()["dropped_rows"]``), and only the last
          ``retain`` rows (default 1,000,000) are kept, so memory stays bounded.
    buffer_bytes : int, default 256 MiB
        The byte budget of micro-batches waiting for :meth:`get`; it also sets the
        socket's receive high-water mark (in messages of about 4 MiB).
    batch_rows : int, default 100_000
        A micro-batch is handed over once it has this many rows...
    latency : float, default 0.1
        ...or once its oldest rows have waited this many seconds.
    retain : int, optional
        Keep only the last ``retain`` rows for :meth:`frame` and :meth:`collect`
        (default: everything under ``"block"``, 1,000,000 under ``"drop"``).
    memory_budget : int, optional
        With no ``retain`` limit, warn once (:class:`~zpandas.MemoryBudgetWarning`, and
        on the ``zpandas`` logger) when the rows kept pass this many bytes. Default: a
        quarter of this machine's memory.
    dead_after : float, default 5.0
        A producer not heard from for this many seconds is shown as not alive
        (producers send a heartbeat every second by default).
    max_message_bytes : int, default 256 MiB
        No peer can make this subscriber hold more: a larger frame makes ZeroMQ drop the
        connection (``MAXMSGSIZE``; logged), a larger multipart message is counted as bad
        (reason ``"oversize"``) and skipped.
    curve : Curve, optional
        CURVE security: authenticated, encrypted connections (see :class:`Curve`).
    multicast : dict, optional
        Options for ``epgm://``/``pgm://`` endpoints, over ``MULTICAST_DEFAULTS``.
    since : str, datetime or Timestamp, optional
        Start with the past: the rows producers published since then (``"30min"``,
        ``"2026-12-06T10:40"``), then the live stream, each row once. Producers that
        publish files with history on (``zpandas publish --history``) answer; live rows
        wait until every producer heard from (at least one, and no new one for 2 s) has
        answered, or ``history_timeout``; a producer first heard from after that is
        asked for its own past then, and its live rows wait for it (as long again at
        most; a :class:`~zpandas.DataLossWarning` if it does not come). So
        :meth:`frame`, :meth:`get` and aggregations see the past first. How it went:
        ``stats()["history"]``.
    history_timeout : float, default 60
        The longest live rows wait for the past.
    where : str, optional
        Only the rows that match cross the network: each producer filters its live
        stream (and the past, with ``since``) before sending, with the expression language
        of :mod:`zpandas.where` (``"status >= 500 and method == 'GET'"``). Subscribers
        that ask for the same ``topics``, ``where`` and ``columns`` share one filtered
        stream: a producer filters once for all of them. A producer whose rows lack a
        column named refuses, said in ``stats()["views"]`` and a
        :class:`~zpandas.DataLossWarning`; a mistake in the expression is a
        :class:`~zpandas.where.WhereError` here.
    columns : list of str, optional
        Only these columns cross the network (with zpandas' ``_file`` and ``_offset``
        where rows have them).
    categories : list of str, optional
        String columns to receive as pandas ``category`` (as producers dictionary-encode
        repeated strings for the wire, this costs nothing); the others arrive as ``str``.
    text_format : str, optional
        Also take plain text messages from existing ZeroMQ programs: single-frame
        ``"topic payload"`` strings (``send_string``), the payload parsed with this line
        format (``"jsonl"``, ``"csv:col1,col2"``, ``"regex:<pattern>"``, a preset such as
        ``"syslog"``). Lines that do not parse are rejects.

    Examples
    --------
    >>> with zpandas.Subscriber("@tcp://*:5556") as sub:  # doctest: +SKIP
    ...     df = sub.collect(producers=4, timeout=60)
    """

    def __init__(self, endpoint: EndpointsLike = "@tcp://*:5556", *,
                 topics: str | tuple[str, ...] | list[str] = (),
                 policy: Policy = "block", buffer_bytes: int = 256 << 20,
                 batch_rows: int = 100_000, latency: float = 0.1, retain: int | None = None,
                 dead_after: float = 5.0, max_message_bytes: int = 256 << 20,
                 text_format=None, curve: Curve | None = None,
                 multicast: dict | None = None, memory_budget: int | None = None,
                 categories: list[str] | tuple[str, ...] = (), since=None,
                 history_timeout: float = 60.0, where: str | None = None,
                 columns=None) -> None:
        if policy not in ("block", "drop"):
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be positive")
        if retain is not None and retain < 0:
            raise ValueError("retain must be >= 0 or None")
        if dead_after <= 0:
            raise ValueError("dead_after must be positive")
        self._endpoints = parse_endpoints(endpoint, default="bind")
        self._bell = f"inproc://zpandas-subscriber-bell-{uuid.uuid4().hex}"
        topics = [topics] if isinstance(topics, (str, bytes)) else list(topics)
        self.topics = tuple(t.encode() if isinstance(t, str) else bytes(t) for t in topics) or (b"",)
        self._views = None   # topic -> the live view subscribed to instead (where=/columns=)
        if where is not None or columns is not None:
            from .history import View
            self._views = {t: View.new(t.decode("utf-8", "replace"), where, columns) for t in self.topics}
        self.policy = policy
        self._retain = LIVE_RETAIN if retain is None and policy == "drop" else retain
        self._dead_after = dead_after
        self._warned_missed = 0    # missed rows already warned about
        self._closed = False
        self._terminated = False
        # One condition for what the caller and the worker share (see _receiver).
        self._cond = threading.Condition()
        self._ctx = zmq.Context()
        self._rx = Receiver(
            ctx=self._ctx, cond=self._cond, endpoints=self._endpoints,
            topics=self.topics if self._views is None else
            tuple(v.subscription for v in self._views.values()),
            bell=self._bell, policy=policy, buffer_bytes=buffer_bytes,
            batcher=MicroBatcher(batch_rows, latency), retain=self._retain,
            memory_budget=_default_budget() if memory_budget is None else memory_budget,
            max_bytes=max_message_bytes,
            text_format=None if text_format is None else get_format(text_format),
            curve=curve, multicast=multicast,
            categories=frozenset([categories] if isinstance(categories, str) else categories))
        if since is not None:
            from .history import Request
            self._rx.past.start([Request.new(topic=t.decode("utf-8", "replace"), since=since,
                                             **self._asked(t)) for t in self.topics],
                                timeout=history_timeout, dead_after=dead_after)
        self._thread = OwnerThread(f"zpandas-subscriber-{next(_ids)}", self._rx.setup,
                                   self._rx.loop, self._rx.teardown, self._rx.failed)
        try:
            self._thread.start()
        except BaseException:
            self._ctx.term()
            self._closed = True
            raise

    # -- public API -------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Addresses bound or connected to, with ``*`` ports resolved (give these to producers)."""
        return list(self._rx.resolved)

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, timeout: float | None = None) -> pd.DataFrame:
        """Return the next micro-batch as a DataFrame.

        Warns :class:`~zpandas.DataLossWarning` when rows were lost on the way since
        the last warning (details in :meth:`gaps`).

        Raises
        ------
        TimeoutError
            If none arrives within ``timeout`` seconds.
        ClosedError
            If the subscriber is closed and nothing is left in the queue.
        """
        with self._cond:
            self._rx.consuming = True
            ok = self._cond.wait_for(lambda: self._rx.queue or self._closed or self._rx.error, timeout)
            if self._rx.queue:
                table = self._rx.pop()
            else:
                self._check()
                if not ok:
                    raise TimeoutError(f"no rows arrived within {timeout} s")
                raise ClosedError("this Subscriber is closed")
        self._warn_new_losses()
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
            tables = self._rx.retained.tables()
            schema = self._rx.retained.schema
        self._warn_new_losses()
        table = concat(tables) if tables or schema is None else schema.empty_table()
        if last is not None and table.num_rows > last:
            table = table.slice(table.num_rows - last)
        return table.to_pandas()

    def collect(self, producers: int = 1, timeout: float | None = None) -> pd.DataFrame:
        """Wait until ``producers`` producers have closed; return all their rows.

        The batch aggregation job: start the subscriber, start the producers, and
        ``collect`` returns once each has sent end-of-stream. Rows from producers still
        running are not included. Warns :class:`~zpandas.DataLossWarning` if any of
        their messages were lost on the way. While it waits, rows are not made into
        micro-batches for :meth:`get` and those queued are taken, so
        ``policy="block"`` never stalls it.

        Raises
        ------
        TimeoutError
            If fewer than ``producers`` finished within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._rx.collecting += 1   # no micro-batches meanwhile: nobody would take them
            try:
                while True:
                    while self._rx.queue:
                        self._rx.pop()  # these rows are retained too; taking them makes room
                    if (self._rx.error is not None or self._closed
                            or (len(self._finished()) >= producers and self._rx.past.gate is None)):
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._rx.collecting -= 1
            self._check_error()
            done = self._finished()
            if len(done) < producers:
                why = "before the subscriber was closed" if self._closed else f"within {timeout} s"
                raise TimeoutError(f"{len(done)} of {producers} producers finished {why}; "
                                   f"{self._rx.protocol.counts['rows']} rows from "
                                   f"{len({p for p, _ in self._rx.protocol.streams})} producers so far")
            tables = self._rx.retained.tables(done)
            schema = self._rx.retained.schema
            lost = [s for (p, _), s in self._rx.protocol.streams.items() if p in done and s.missed_rows]
            evicted = self._rx.protocol.counts["evicted_rows"]
            self._warned_missed = self._missed_rows()
        if lost:
            warnings.warn(f"{sum(s.missed_rows for s in lost)} rows in "
                          f"{sum(s.missed for s in lost)} messages from "
                          f"{', '.join(sorted({s.name for s in lost}))} were lost on the way "
                          "(see gaps())", DataLossWarning, stacklevel=2)
        if evicted:
            warnings.warn(f"{evicted} rows were evicted by retain={self._retain} and are "
                          "missing from the result", DataLossWarning, stacklevel=2)
        self._warn_pending()
        return (concat(tables) if tables or schema is None else schema.empty_table()).to_pandas()

    def to_parquet(self, path, *, partition_by=None) -> str:
        """Write :meth:`frame` to Parquet atomically, with provenance in its metadata.

        The metadata (key ``b"zpandas"``) lists each producer with its topic, rows,
        missed rows and the files and byte ranges its rows came from. See
        :func:`zpandas.to_parquet` for ``partition_by``.
        """
        from .parquet import provenance_of, to_parquet
        return to_parquet(self.frame(), path, partition_by=partition_by,
                          provenance=provenance_of(self.stats()))

    def aggregate(self, by=None, *, values, window=None, every=None, on: str = "timestamp",
                  where=None, lateness="0s", idle: float = 5.0) -> Aggregation:
        """A running groupby of everything this subscriber receives, kept up to date.

        Starts with the rows retained so far, then folds in every message as it arrives
        (on a thread of the aggregation's own, ``zpandas-aggregate-N``, which ends when
        the subscriber closes), so memory grows with groups x windows, not rows. Its
        results include every row received before they are asked for.
        Parameters are those of :class:`~zpandas.Aggregation`.

        Examples
        --------
        >>> agg = sub.aggregate(by=["host"], values={"value": ["mean", "max"]},
        ...                     window="1min", where="metric == 'cpu_pct'")  # doctest: +SKIP
        >>> agg.result()                                            # doctest: +SKIP
        """
        agg = Aggregation(by, values=values, window=window, every=every, on=on, where=where,
                          lateness=lateness, idle=idle)
        agg.subscriber = self
        with self._cond:
            self._check()
            # The rows so far first, then every new one: folded on the aggregation's
            # own thread, never on this subscriber's socket thread or under its lock.
            now, seen = time.time(), {}
            for (producer, _), stream in self._rx.protocol.streams.items():
                seen[producer] = max(seen.get(producer, 0.0), stream.last_seen)
            agg._start_feed(self._rx.retained.items(), self._rx.buffer_bytes,
                            {p: now - t for p, t in seen.items()}, self._rx.protocol.finished())
            self._rx.aggregations.append(agg)
        return agg

    def wait_for_producers(self, producers: int = 1, timeout: float | None = 30.0, *,
                           progress: bool | None = None) -> pd.DataFrame:
        """Wait until rows from ``producers`` live producers have arrived (with
        ``where=``/``columns=``: until they are heard from, rows matching or not).

        For a live stream, what :meth:`Producer.wait_for_subscribers` is on the other
        side: "go on once every node is sending". With ``since=``, also until the past is
        in, showing how far it is (``progress``: a bar of bytes read of all the producers'
        files, in a notebook by default). (For producers that end, use :meth:`collect`.)

        Returns
        -------
        pandas.DataFrame
            ``stats()["producers"]`` at that moment.

        Raises
        ------
        TimeoutError
            If fewer sent rows within ``timeout`` seconds; it says which did.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # Under the condition (stats() takes it again: it is reentrant), so that no wake-up
        # is missed: the worker notifies on every micro-batch, end of stream, the past let
        # through (since=) and close.
        bar = PastBar(progress)
        with self._cond, bar:
            while True:
                table = self.stats()["producers"]
                names = sending(table, rows=self._views is None)
                gate = self._rx.past.gate
                if len(names) >= producers and gate is None:
                    return table
                if gate is not None:
                    bar.show(gate.replies.values())
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(not_sending(names, producers, timeout))
                if self._closed:
                    raise ClosedError("the subscriber was closed while waiting for producers")
                self._cond.wait(left)

    def stats(self) -> dict:
        """Counters of what arrived, what was lost and who sent it.

        Returns
        -------
        dict
            ``messages``, ``rows``, ``bytes``: data received. ``duplicate_rows``: rows
            a restarted producer sent again, dropped. ``rejects``: lines producers
            could not parse (see :meth:`rejects`). ``missed`` and
            ``missed_rows``: data messages and rows lost on the way (sequence gaps).
            ``skipped_rows``: rows producers had sent before this subscriber joined.
            ``dropped_batches`` and ``dropped_rows``: micro-batches :meth:`get` never
            saw (``policy="drop"``). ``evicted_rows``: rows past ``retain``.
            ``bad_frames``: messages refused, by reason (the reasons of
            :data:`zpandas.wire.REASONS`, ``"text"`` for plain text that could not be
            parsed, ``"error"`` for anything else a message made the receive path
            raise); each is skipped and logged, and the thread goes on. ``queued``:
            micro-batches waiting for :meth:`get`. ``peers``: connections now.
            ``auth_failures``: CURVE handshakes refused (or failed). ``history``: how
            :meth:`history` requests went, a row per request and producer (``status``,
            ``reason``, ``rows``, ``missed`` reply messages, ``bytes`` received); ``others_history_messages``: replies to
            other subscribers' requests, received (a subscriber to every topic takes
            them) and dropped. ``views``: producers that refused this subscriber's
            ``where=``/``columns=``, with the reason; ``others_view_messages``: rows of
            views other subscribers asked for, received and dropped. ``producers``: a
            DataFrame with one row per (producer, topic), the last ``MAX_STREAMS``
            (10,000) heard from: counts, gaps, ``sent_rows`` (rows the producer had sent
            on that topic by its latest message: ``rows + missed_rows + skipped_rows``,
            and the duplicates it resent), ``rows_per_s`` (last 5 s), ``lag_s`` (send
            to receive), ``last_seen``, ``alive``, ``received`` (messages of every kind,
            heartbeats included), ``bad_frames`` (refused messages whose header named
            it, once it had been heard from) and ``sources`` (file -> byte range of the rows received from it, the
            last 1,000 files).
        """
        now = time.time()
        with self._cond:
            self._check_error()
            out = {k: self._rx.protocol.counts[k] for k in ("messages", "rows", "bytes", "duplicate_rows",
                                                  "rejects", "dropped_batches", "dropped_rows",
                                                  "evicted_rows")}
            out["missed"] = self._rx.protocol.total("missed")
            out["missed_rows"] = self._missed_rows()
            out["skipped_rows"] = self._rx.protocol.total("skipped_rows")
            out["bad_frames"] = dict(self._rx.bad)
            out["queued"] = len(self._rx.queue)
            out["peers"] = self._rx.monitor.peers if self._rx.monitor else 0
            out["auth_failures"] = self._rx.monitor.auth_failures if self._rx.monitor else 0
            rows = self._rx.protocol.report(now, self._dead_after)
            past = self._rx.past
            out["history"] = pd.DataFrame(past.log, columns=_HISTORY_COLUMNS)
            out["others_history_messages"] = past.others_replies
            out["views"] = pd.DataFrame(past.view_refusals, columns=_VIEW_COLUMNS)
            out["others_view_messages"] = past.others_views
        producers = pd.DataFrame(rows, columns=_PRODUCER_COLUMNS)
        producers["last_seen"] = pd.to_datetime(producers["last_seen"], unit="s", utc=True).dt.as_unit("ns")
        out["producers"] = producers
        self._warn_pending()
        return out

    def rejects(self) -> pd.DataFrame:
        """Lines the producers could not parse: who, topic, file, line, offset, reason, text.

        The last 100,000 are kept; ``stats()["rejects"]`` counts them all.
        """
        with self._cond:
            self._check_error()
            tables = list(self._rx.rejects)
        if not tables:
            return pd.DataFrame(columns=["producer", "topic", *REJECT_SCHEMA.names])
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def history(self, since=None, until=None, *, where: str | None = None, columns=None,
                producers: int | None = None, timeout: float = 60.0,
                progress: bool | None = None) -> pd.DataFrame:
        """Ask the producers for rows they published before now; while the live stream goes on.

        The request travels to every producer the way subscriptions do (directly, or
        through a Proxy); each answers under a topic only this subscriber takes, with
        rows and then how it went (``stats()["history"]``): ``"done"``, or why there are
        none (``"no history"``: a producer of DataFrames, or one without history on;
        ``"refused"``: with the reason). History rows are returned, not mixed into
        :meth:`frame` or aggregations.

        Parameters
        ----------
        since, until : str, datetime or Timestamp, optional
            Event time: ``"30min"`` (that long ago), ``"2026-12-06T10:40"`` (UTC unless
            it says otherwise), a datetime.
        where : str, optional
            Only matching rows cross the network (:mod:`zpandas.where`:
            ``"status >= 500 and method == 'GET'"``). Default, with neither ``where``
            nor ``columns`` given: this subscriber's.
        columns : list of str, optional
            Only these columns cross the network.
        producers : int, optional
            Wait for this many producers to answer. Default: the producers alive now on
            this subscriber's topics (with none known yet, whoever answers within
            ``timeout``, and half a second more).
        timeout : float, default 60
            Seconds to wait; producers that did not finish their answer by then, or
            went away meanwhile (no heartbeat for ``dead_after`` seconds), are in
            ``stats()["history"]`` as ``"no answer"`` with the rows that came, and a
            ``DataLossWarning`` says so.
        progress : bool, optional
            Show how far the producers are (a bar of bytes read of all their files, with
            producers done and rows; a widget in a notebook). Default: in a notebook.
            :meth:`history_progress` has it per producer.

        Raises
        ------
        zpandas.history.RequestError
            ``since``, ``until``, ``where`` or ``columns`` that cannot be asked for.
        """
        from .history import Request
        requests = [Request.new(topic=t.decode("utf-8", "replace"), since=since, until=until,
                                **(self._asked(t) if where is None and columns is None
                                   else {"where": where, "columns": columns}))
                    for t in self.topics]
        with self._cond:
            self._check_error()
            if self._closed:
                raise ClosedError("this Subscriber is closed")
            expected = set(self._rx.protocol.alive(time.time(), self._dead_after))
            names = {p: st.name for (p, t), st in self._rx.protocol.streams.items()}
            replies = self._rx.past.open(requests)
        self._ring()
        deadline = time.monotonic() + timeout
        bar = PastBar(progress)
        try:
            with self._cond, bar:
                settled_at = None
                while True:
                    bar.show(replies.values())
                    answered = {p for rep in replies.values() for p in rep.ends}
                    if producers is not None:
                        done = len(answered) >= producers
                    elif expected:
                        # a producer that died meanwhile (no heartbeat for dead_after)
                        # will not answer: its loss is said, the others are waited for
                        alive = self._rx.protocol.alive(time.time(), self._dead_after)
                        done = expected <= answered | (expected - alive.keys())
                    else:   # nobody known: whoever answers, and half a second for more
                        if answered and settled_at is None:
                            settled_at = time.monotonic() + 0.5
                        done = settled_at is not None and time.monotonic() >= settled_at
                    left = deadline - time.monotonic()
                    if done or left <= 0 or self._closed or self._rx.error is not None:
                        break
                    self._cond.wait(min(left, 0.1) if settled_at else left)
                self._check_error()
        finally:
            with self._cond:
                self._rx.past.close(replies)
            self._ring()
        return self._history_result(replies, expected if producers is None else set(), names)

    def history_progress(self) -> pd.DataFrame:
        """How far the history requests still open are: a row per request and producer
        that answered - ``status`` (``"running"`` until its end came), ``files``,
        ``bytes_done`` of ``bytes_total`` (file bytes from ``since``'s place to their
        ends), ``rows`` received, ``eta_s`` (at the rate so far). Finished requests are
        in ``stats()["history"]``."""
        now = time.monotonic()
        with self._cond:
            self._check_error()
            rows = [r for rep in self._rx.past.open_replies() for r in rep.report(now)]
        return pd.DataFrame(rows, columns=_PROGRESS_COLUMNS)

    def _history_result(self, replies: dict, expected: set, names: dict) -> pd.DataFrame:
        """Record how a history request went (stats()["history"]); its rows as one frame."""
        answered = {p for rep in replies.values() for p in rep.ends}
        silent = expected - answered
        rows = [row for i, rep in enumerate(replies.values())
                for row in rep.log({p: names.get(p, "") for p in silent} if i == 0 else {})]
        with self._cond:
            self._rx.past.record(rows)
        if silent:
            warnings.warn(f"history: {len(silent)} producer(s) did not answer: "
                          f"{', '.join(sorted(names.get(p, p.hex()[:12]) for p in silent))} "
                          "(stats()['history'])", DataLossWarning, stacklevel=3)
        tables = [t for rep in replies.values() for t in rep.tables]
        if not tables:
            return pd.DataFrame()
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def gaps(self) -> pd.DataFrame:
        """Every loss seen, one row each: when, from whom, how many messages and rows.

        ``kind`` is ``"gap"`` for messages lost on the way and ``"joined late"`` for a
        stream whose first message was not its first (rows sent before this subscriber
        was listening, or while it was restarting). The last 10,000 are kept.
        """
        with self._cond:
            self._check_error()
            rows = list(self._rx.gaps)
        df = pd.DataFrame(rows, columns=["time", "producer", "name", "topic", "kind",
                                         "messages", "rows"])
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker thread and release the socket. Idempotent.

        Raises ``TimeoutError`` if the thread does not stop within ``timeout`` seconds;
        calling ``close()`` again then finishes the job.
        """
        with self._cond:
            self._closed = True
            self._rx.stop.set()  # under the lock: a worker waiting for room sees it when woken
            self._cond.notify_all()
        if self._terminated:
            return
        for agg in self._rx.aggregations:  # folds what it was fed; a socket thread
            agg._stop_feed(timeout)       # waiting to feed it more goes on at once
        self._ring()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not stop within {timeout} s; "
                               "call close() again to finish")
        self._ctx.term()  # returns at once: the worker closed its socket with linger 0
        self._terminated = True

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<zpandas.Subscriber {state} {self._rx.resolved or self._endpoints} topics={self.topics}>"

    # -- caller side helpers (hold _cond) ------------------------------------------------

    def _asked(self, topic: bytes) -> dict:
        """The where= and columns= this subscriber asks of ``topic``'s rows."""
        view = None if self._views is None else self._views[topic]
        return {} if view is None else {"where": view.where, "columns": view.columns}

    def _check_error(self) -> None:
        if self._rx.error is not None:
            raise SubscriberBrokenError(f"subscriber thread failed: {self._rx.error!r}") from self._rx.error

    def _check(self) -> None:
        self._check_error()
        if self._closed:
            raise ClosedError("this Subscriber is closed")

    def _finished(self) -> set[bytes]:
        return self._rx.protocol.finished()

    def _missed_rows(self) -> int:
        return self._rx.protocol.total("missed_rows")

    def _ring(self) -> None:
        """Wake the worker's poll (a socket of this thread: created, used and closed here)."""
        try:
            bell = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError:
            return  # the context is gone: so is the worker
        try:
            bell.connect(self._bell)
            bell.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a bell already rung and not read yet wakes it as well
        finally:
            # Not 0: closing at once would drop the ring before the worker reads it.
            bell.close(linger=100)

    def _warn_new_losses(self) -> None:
        with self._cond:
            missed = self._missed_rows()
            new, self._warned_missed = missed - self._warned_missed, missed
        if new > 0:
            warnings.warn(f"{new} rows were lost on the way since the last warning "
                          "(see gaps() and stats()['producers'])", DataLossWarning, stacklevel=3)
        self._warn_pending()

    def _warn_pending(self) -> None:
        """Warn on the caller's thread (the worker only logs): a warning raised as an
        error there (``-W error``) would end the worker instead of reaching the user."""
        with self._cond:
            message, self._rx.memory_warning = self._rx.memory_warning, None
            notices, self._rx.past.notices = self._rx.past.notices, []
        if message:
            warnings.warn(message, MemoryBudgetWarning, stacklevel=4)
        for notice in notices:
            warnings.warn(notice, DataLossWarning, stacklevel=4)


_PROGRESS_COLUMNS = ["request", "topic", "producer", "name", "status", "files", "bytes_done",
                     "bytes_total", "rows", "eta_s"]
_VIEW_COLUMNS = ["producer", "name", "topic", "status", "reason"]
_HISTORY_COLUMNS = ["request", "topic", "producer", "name", "status", "reason", "rows", "missed",
                    "bytes", "file_bytes"]
_PRODUCER_COLUMNS = ["producer", "name", "topic", "messages", "rows", "sent_rows", "bytes", "missed",
                     "missed_rows", "skipped_rows", "gaps", "rows_per_s", "lag_s", "last_seen",
                     "finished", "alive", "received", "bad_frames", "sources"]


def sending(producers: pd.DataFrame, rows: bool = True) -> list[str]:
    """The names of the producers in a ``stats()["producers"]`` table that are alive and
    have sent rows (or, ``rows=False``, been heard from: a view's producers may have no row
    that matches yet), one per producer."""
    if not len(producers):
        return []
    live = producers[producers["alive"] & ((producers["rows"] > 0) | (not rows))]
    return sorted(live.drop_duplicates("producer")["name"])


def not_sending(names: list[str], producers: int, timeout, why: str = "") -> str:
    """What a wait for producers that timed out says."""
    return (f"rows from {len(names)} of {producers} producers within {timeout} s: "
            f"{', '.join(names) or 'none'}{why}")


def _default_budget() -> int:
    """A quarter of this machine's physical memory (1 GiB if it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30
