"""Producer: publish DataFrames and Arrow tables as wire-format messages on a PUB socket.

Threads
-------
One thread (``zpandas-producer-N``, see :mod:`zpandas._owner`) owns the XPUB socket and
does all the socket work (:mod:`zpandas._sender`): it alone sends, numbers messages
(:class:`zpandas.streams.SendStream`), reads subscriptions and sends heartbeats. Callers
on any thread coalesce rows (:mod:`zpandas._coalesce`), encode their Arrow IPC bodies
themselves (the expensive part, in parallel) and hand the frames to the owner through a
bounded queue and a doorbell pipe in the owner's poller - no socket is touched by two
threads, and no calling thread leaves one behind. Each hand-off carries a ticket taken
under a lock when the rows were accepted; the owner sends in ticket order, so rows leave
in the order ``send()`` accepted them and sequence numbers are gap-free.
"""

from __future__ import annotations

import itertools
import os
import socket as _socket
import threading
import time
import uuid
from typing import Literal

import pandas as pd
import pyarrow as pa
import zmq

from . import wire
from ._coalesce import Coalescer
from ._owner import OwnerThread
from ._sender import BATCH_MESSAGES, Handoff, Sender
from .endpoints import Curve, EndpointsLike, parse_endpoints
from .errors import ClosedError, ProducerBrokenError
from .shards import Router
from .streams import SendStream

__all__ = ["Producer", "to_table"]

_ids = itertools.count(1)
Policy = Literal["block", "drop"]
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
    shards : int, optional
        Send every message under the topic of one of ``shards`` buckets,
        ``"<topic>#<bucket>"`` (see :mod:`zpandas.shards`): subscribers to ``topic``
        still get them all, and a subscriber to a bucket's topic gets that bucket only
        (how ``zpandas.dask`` spreads a stream over workers).
    shard_by : str, optional
        With ``shards``: the column whose value picks a row's bucket. Default: the
        producer's name picks one bucket for all its rows.
    compression : {"auto", "lz4", "zstd", None}, default "auto"
        Compress message bodies with Arrow IPC's buffer compression: fewer bytes on a
        network link for some CPU on both ends. ``"auto"``: ``"lz4"``, unless every
        endpoint is on this machine (``ipc://``, ``inproc://``, ``tcp://`` on a loopback
        address), where bytes are free and CPU is not: None. ``"zstd"`` packs tighter
        for slow links (100 Mbit/s and less). Bodies under 4 KiB, or that would not
        shrink, are sent plain.
    dictionary : bool, optional
        Dictionary-encode, for the wire, the string columns whose values repeat
        (hosts, levels, methods, user agents: at most one distinct value per two rows),
        decided per column and message. Fewer bytes, compressed or not; subscribers
        turn them back into strings (or pandas categories, with their ``categories=``).
        Default: on, unless every endpoint is on this machine.

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
                 multicast: dict | None = None, shards: int | None = None,
                 shard_by: str | None = None, compression: str | None = "auto",
                 dictionary: bool | None = None, _history=None) -> None:
        if policy not in ("block", "drop"):
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        if frame_bytes < 1:
            raise ValueError("frame_bytes must be positive")
        if wait_for_subscribers < 0:
            raise ValueError("wait_for_subscribers must be >= 0")
        if shards is not None and not (isinstance(shards, int) and shards >= 1):
            raise ValueError(f"shards must be a positive int, not {shards!r}")
        if shard_by is not None and shards is None:
            raise ValueError("shard_by= needs shards=")
        if compression not in (None, "auto", *wire.COMPRESSIONS):
            raise ValueError(f"compression must be 'auto', one of {wire.COMPRESSIONS} or None, "
                             f"not {compression!r}")
        self._endpoints = parse_endpoints(endpoint, default="connect")
        # What bench/bench_link.py and bench_pipeline.py measured: on a link, LZ4 and
        # dictionaries pay for themselves many times; on this machine, they only cost.
        local = all(ep.on_this_machine for ep in self._endpoints)
        #: The compression and dictionary encoding in use (after "auto").
        self.compression = (None if local else "lz4") if compression == "auto" else compression
        self.dictionary = (not local) if dictionary is None else dictionary
        if wait_for_subscribers and all(ep.multicast for ep in self._endpoints):
            raise ValueError("wait_for_subscribers needs a tcp:// or ipc:// endpoint: multicast "
                             "carries no subscriptions back to the publisher")
        self.topic = topic
        self.id = uuid.uuid4().bytes
        self.name = name or f"{_socket.gethostname()}:{os.getpid()}"
        self.shards, self.shard_by = shards, shard_by
        self._router = Router(self.name, shards, shard_by)
        self.frame_bytes = frame_bytes
        self.flush_interval = flush_interval
        self._linger = linger
        self.policy = policy
        hwm = max(16, buffer_bytes // frame_bytes)

        # One lock for what callers and the owner share: pending rows and tickets, the
        # numbers and checkpoint claims, the counters and subscriptions.
        self._lock = threading.Condition()
        self._closing = False
        self._coalescer = Coalescer(self.id, self.name, frame_bytes, flush_interval,
                                    self.compression, self.dictionary)
        # A message may still be in ZeroMQ's queues in this process until SNDHWM + one
        # batch more were sent after it (see SendStream.sent).
        self._stream = SendStream(self.id, self.name, in_flight=hwm + BATCH_MESSAGES)
        self._columns: dict[bytes, pa.Schema] = {}   # topic -> columns last sent
        for t in self._router.topics(topic):   # where end-of-stream and heartbeats go
            self._stream.add_topic(_topic_bytes(t))
        self._ctx = zmq.Context()
        # Calling threads' messages to the owner; a full queue makes send() wait
        # (backpressure), as the owner leaves it alone behind a slow subscriber.
        self._handoff = Handoff(capacity=8)
        self._sender = Sender(ctx=self._ctx, lock=self._lock, handoff=self._handoff,
                              coalescer=self._coalescer, stream=self._stream,
                              endpoints=self._endpoints, curve=curve, multicast=multicast,
                              linger=linger, heartbeat=heartbeat, policy=policy, hwm=hwm)
        if _history is not None:   # (publish_files(history=True)) before a request can come
            self._serve_history(_history)
        self._thread = OwnerThread(f"zpandas-producer-{next(_ids)}", self._sender.setup,
                                   self._sender.serve, self._sender.teardown, self._sender.failed)
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
        return list(self._sender.resolved)

    @property
    def closed(self) -> bool:
        return self._closing

    def send(self, data, *, topic: str | None = None, source: str = "",
             offsets: tuple[int, int] = (-1, -1)) -> None:
        """Queue rows for sending; safe to call from any number of threads at once.

        Parameters
        ----------
        data : pandas.DataFrame, pyarrow.Table or pyarrow.RecordBatch
            The rows. A DataFrame's non-default index is sent as column(s). With no
            rows, only new columns are sent (so that subscribers know them).
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
        parts = [(_topic_bytes(t), part)
                 for t, part in self._router.route(self.topic if topic is None else topic, table)]
        jobs, started = [], False
        with self._lock:
            self._check()
            for tkey, part in parts:
                self._stream.add_topic(tkey)
                last = self._columns.get(tkey)
                if part.num_rows == 0 and (not part.num_columns
                                           or (last is not None and part.schema.equals(last))):
                    continue   # nothing new to say
                # No rows but new columns (a CSV file with a header only): sent, so that
                # a subscriber's frame() has them even if no rows ever come.
                self._columns[tkey] = part.schema
                self._stream.accepted(tkey, source, *offsets)
                more, began = self._coalescer.add(tkey, part, source, *offsets)
                jobs += more
                started |= began
        for job in jobs:
            self._push(job)
        if started:
            # Rows now wait for company: ring the owner, whose poll has no timeout for
            # them yet, so that they leave flush_interval from now, not later.
            self._handoff.ring()

    def _serve_history(self, provider) -> None:
        """Answer history requests with ``provider`` (publish_files' FileHistory)."""
        provider.bind(self._sender.post_reply, self.id, self.name, wake=self._sender.wake)
        self._sender.history_provider = provider

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
        # sharded: with the producer's rows (by name), or in the first bucket (by key)
        tkey = _topic_bytes(self._router.topics(self.topic if topic is None else topic)[0])
        header = wire.Header(kind=wire.Kind.REJECTS, producer=self.id, name=self.name,
                             source=source, start=offsets[0], end=offsets[1])
        frames = wire.encode(table, topic=tkey, header=header, compression=self.compression)
        for view in list(self._coalescer.views.values()):   # their subscribers see them too
            if view.serves(tkey):
                frames += wire.encode(table, topic=view.subscription, header=header,
                                      compression=self.compression)
        jobs = []
        with self._lock:
            self._check()
            self._stream.add_topic(tkey)
            if tkey in self._coalescer.pending:  # rows accepted before these rejects leave first
                jobs.append(self._coalescer.take(tkey))
            ticket = self._coalescer.ticket()
            self._sender.sent["rejects"] += table.num_rows
        for job in jobs:
            self._push(job)
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
            jobs = self._coalescer.take_all()
        for job in jobs:
            self._push(job)

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
        # Sharded: the bucket's topic (by name), or every bucket's (by key)
        tkeys = [_topic_bytes(t) for t in self._router.topics(topic)]
        with self._lock:
            ok = self._lock.wait_for(
                lambda: self._sender.error is not None or self._closing
                or min(self._matching_subscriptions(t) for t in tkeys) >= n, timeout)
            self._check()
            if not ok:
                have = min(self._matching_subscriptions(t) for t in tkeys)
                others = sorted(p.decode("utf-8", "replace") for p, k in
                                self._sender.subscriptions.items() if k > 0)
                hint = (f"; subscribers connected asked for {', '.join(map(repr, others))}, "
                        "and a subscription matches a topic that starts with it"
                        if others and not have else "")
                raise TimeoutError(f"{have} of {n} subscribers to topic "
                                   f"{' / '.join(t.decode('utf-8', 'replace') for t in tkeys)!r} "
                                   f"after {timeout} s on {', '.join(map(str, self._endpoints))}"
                                   f"{hint}")

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
            ``history_messages``: messages of history replies. ``view_messages``: data
            messages of live views (``Subscriber(where=..., columns=...)``), one per
            view and message of rows however many subscribers share it.
            ``auth_failures``: CURVE handshakes refused.
        """
        with self._lock:
            out = dict(self._sender.sent)
            out["subscriptions"] = sum(self._sender.subscriptions.values())
            monitor = self._sender.monitor
            out["peers"] = monitor.peers if monitor else 0
            out["auth_failures"] = monitor.auth_failures if monitor else 0
            return out

    def close(self, timeout: float | None = None) -> None:
        """Flush, send end-of-stream on every topic used, and release the socket.

        Idempotent. Waits up to ``timeout`` seconds (default: ``linger``) for queued
        messages to leave, then drops the rest and raises ``TimeoutError``.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = self._sender.closing = True
            jobs = self._coalescer.take_all()
            self._lock.notify_all()   # a replay waiting for room sees closing
        if self._sender.history_provider is not None:
            self._sender.history_provider.close()   # replays stop; their threads end
        deadline = time.monotonic() + (self._linger if timeout is None else timeout)
        self._sender.deadline = deadline
        try:
            for job in jobs:
                self._push(job, deadline)
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
            stuck = self._sender.abandoned or self._thread.is_alive()
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
        error = self._sender.error
        if error is not None:
            raise ProducerBrokenError(f"producer thread failed: {error}") from error

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<zpandas.Producer {self.name!r} topic={self.topic!r} {state} {self._endpoints}>"

    # -- caller side --------------------------------------------------------------------

    def _check(self) -> None:
        error = self._sender.error
        if error is not None:
            raise ProducerBrokenError(f"producer thread failed: {error}") from error
        if self._closing:
            raise ClosedError("this Producer is closed")

    def _matching_subscriptions(self, tkey: bytes) -> int:
        return sum(n for prefix, n in self._sender.subscriptions.items() if tkey.startswith(prefix))

    def _push(self, job, deadline: float | None = None) -> None:
        """Encode a frame on this thread and hand it to the owner, in its ticket's turn."""
        item: list = [b"S", job[0]]  # "skip" that ticket if encoding fails
        try:
            item = [b"D", job[0], *self._coalescer.encode(job)]
        finally:
            self._handoff.put(item, deadline)


def _topic_bytes(topic: str | bytes) -> bytes:
    return topic.encode("utf-8") if isinstance(topic, str) else bytes(topic)
