"""Serving history from files: the rows a producer published before, read again on request.

A producer that publishes files with history on (``publish_files(history=True)``,
``zpandas publish --history``) answers history requests (:mod:`zpandas.history`) from the
files its paths match now, rotated copies included, oldest first. In each file it finds
where ``since`` starts by the live stream's index of event time (:mod:`.timeindex`:
exact, however out of order the file's times are) where the index describes the file, and
by bisection on byte offsets elsewhere - a probe parses the records after an offset and
reads their event time (the rows' first timestamp column) - then reads on from
there through the same parser as the live stream (and its column types), keeps the
rows in ``[since, until)`` that match ``where``, keeps only ``columns`` (and ``_file``,
``_offset``), and sends them under the request's topic, then a ``HISTORY_END`` saying how
many. A file read while it grows is read up to its size when the request came.

Replays run in processes of their own (forked from multiprocessing's fork server, which
has imported this module: no interpreter lock shared with the live stream, whose latency
the replay's parsing would otherwise raise several times over), at a lower CPU priority
than the live stream's (nice 10),
at most ``max_requests`` at a time (more are refused with the reason), at most ``rate``
bytes of file per second each, in messages of about 1 MiB, no more than the requester's
credit allows in flight (:data:`zpandas.history.CREDIT`), and hand the owner thread at most
a few messages ahead: the socket owner sends them only when no live message waits, and
memory stays bounded. The requester unsubscribing cancels its replay.

Limits, said plainly: files are read as UTF-8 (a producer of files in other encodings
answers "refused"); a multiline format's records are read line by line; bisection (in
files the index does not describe) assumes event time grows along a file (a log's does),
give or take ``slack`` (one minute): rows further out of order before ``since``'s
position are not found there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import history, wire
from .._tables import with_source
from .compressed import HEAD as COMPRESSED_HEAD
from .compressed import compression_of
from .follow import HEAD_BYTES
from .lines import get_format, header_bounds
from .pipeline import ParsePipeline, default_threads
from .publish import expand_paths
from .records import CrAsLf, Holes, Records, lone_cr, record_ends
from .timeindex import TimeIndex, start_from, time_column

log = logging.getLogger("zpandas")

BLOCK = 4 << 20          # bytes read at a time (as the live stream's blocks)
PROBE = 64 << 10         # bytes a bisection probe parses
SLACK_NS = 60 * 10**9    # start this much before since: rows a little out of order still count
STALL = 60.0                # seconds without credit: the replay gives up
LOOK_WAIT = 10.0            # seconds a replay waits for the live stream to have named the files
_TAIL_BYTES = 256           # bytes before a position that tell a file's copy from others
QUIET = 2.0                 # seconds without a write after which a file's unended last line
                            # is a record (the live stream's multiline_timeout, by default)
MESSAGE_BYTES = 1 << 20     # replayed rows go in messages of about this much, so that a
                            # live message never waits behind a large one (the owner sends
                            # them only when no live message waits)


class FileHistory:
    """Answers history requests from the files a producer publishes.

    Parameters
    ----------
    patterns : list of str
        The producer's paths and globs (match the rotated copies too: ``"app.log*"``).
    format_args : dict
        What ``get_format`` was given for the live stream (format, delimiter, ...).
    rate : float, optional
        Bytes of file per second a replay reads at most.
    max_requests : int
        Replays at a time; more are refused.
    encoding : str
        The files' encoding: only UTF-8 (and ASCII) files are replayed.
    """

    def __init__(self, patterns: list[str], format_args: dict, *, rate: float | None = None,
                 max_requests: int = 4, encoding: str = "utf-8") -> None:
        self.patterns, self.format_args = patterns, format_args
        self.post = self._wake = None
        self.producer, self.name = bytes(16), ""
        self.rate, self.max_requests, self.encoding = rate, max_requests, encoding
        self._lock = threading.Lock()
        self._running: dict[bytes, threading.Event] = {}   # reply topic -> cancelled
        self._credit: dict[bytes, int] = {}   # reply topic -> messages its requester took
        self._credit_changed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._children: dict[bytes, object] = {}   # reply topic -> its replay's process
        self.served = 0
        self._source_id: str | None = None
        self._keys: dict[tuple[int, int], str] = {}   # (dev, ino) -> the live stream's key
        self._live_format = None   # the live stream's: its column types, once it fixed them
        self.index = TimeIndex()   # the live stream's (indexed_by): none yet
        #: The live stream has looked at the files once: their names are known (a request
        #: that comes with a producer's first connection waits for it, briefly).
        self.looked = threading.Event()

    def bind(self, post, producer: bytes, name: str, wake=None) -> None:
        """The producer it answers for: ``post(topic, frames, cancelled)`` hands a reply
        message to its socket owner, waiting while a few are ahead (bounded memory) and
        returning False once the request is cancelled or the producer closes; ``wake()``
        wakes such a wait when a request is cancelled."""
        self.post, self.producer, self.name, self._wake = post, producer, name, wake

    def identified(self, source_id: str, keys: dict[tuple[int, int], str], *,
                   looked: bool = False) -> None:
        """The live stream's names for the files (publish_files' loop, as it finds them):
        replayed rows get the same ``source``, so a subscriber takes each row once.
        ``looked``: after the follower's first look at the files - replays wait for it."""
        with self._lock:
            self._source_id = source_id
            self._keys.update(keys)
        if looked:
            self.looked.set()

    def typed_as(self, fmt) -> None:
        """The live stream's format: replays type their columns as its first rows fixed
        them - the same dtypes past and live, and no block typed value by value again."""
        self._live_format = fmt

    def new_format(self):
        """A format to parse with, typed as the live stream's (one per replayed file)."""
        fmt = get_format(**self.format_args)
        fmt.schema = getattr(self._live_format, "schema", None)
        return fmt

    @property
    def utf8(self) -> bool:
        """The files are UTF-8 (or ASCII): the only ones replayed."""
        return self.encoding.lower().replace("_", "-") in ("utf-8", "utf8", "ascii")

    def indexed_by(self, index: TimeIndex) -> None:
        """The live stream's index of event time in its files: a replay starts where it
        says ``since`` does, in the files it describes."""
        self.index = index

    def key_of(self, f) -> str | None:
        """The live stream's key of open file ``f`` (None: it never read it)."""
        st = os.fstat(f.fileno())
        with self._lock:
            return self._keys.get((st.st_dev, st.st_ino))

    def source_of(self, f) -> str:
        """The ``source`` of open file ``f``'s rows, as the live stream names it."""
        key = self.key_of(f)
        if key is not None and self._source_id is not None:
            return f"{self._source_id}/{key}"
        st = os.fstat(f.fileno())
        return f"history/{st.st_dev}:{st.st_ino}"   # a file the live stream never read

    # -- from the socket owner's thread -------------------------------------------------

    def start(self, req: history.Request, topic: bytes) -> tuple[str, str] | None:
        """Start replaying ``req``; or (status, reason) to answer at once."""
        if not self.utf8:
            return "refused", f"this producer's files are {self.encoding}: history replays UTF-8 files"
        with self._lock:
            if topic in self._running:
                return None   # the same request again (a proxy's second path): one replay
            if len(self._running) >= self.max_requests:
                return "refused", (f"busy: {len(self._running)} replays running, at most "
                                   f"{self.max_requests}; ask again later")
            cancelled = self._running[topic] = threading.Event()
        thread = threading.Thread(target=self._serve, args=(req, topic, cancelled), daemon=True,
                                  name=f"zpandas-history-{req.id[:8]}")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return None

    def credit(self, topic: bytes, producer: bytes, taken: int) -> None:
        """The requester has taken ``taken`` of ``producer``'s reply messages (socket
        owner's thread); credits for other producers are theirs."""
        with self._lock:
            if (producer == self.producer and topic in self._running
                    and taken > self._credit.get(topic, 0)):
                self._credit[topic] = taken
                self._credit_changed.notify_all()

    def _wait_credit(self, topic: bytes, seq: int, window: int,
                     cancelled: threading.Event) -> bool:
        """Until message ``seq`` is within ``window`` of the requester's credit; False if
        cancelled, or if no credit came for STALL seconds (the requester is stuck or gone)."""
        deadline = time.monotonic() + STALL
        with self._lock:   # woken by credit and by a cancel
            while seq >= self._credit.get(topic, 0) + window:
                left = deadline - time.monotonic()
                if cancelled.is_set() or left <= 0:
                    return False
                self._credit_changed.wait(left)
        return True

    def cancel(self, topic: bytes) -> None:
        with self._lock:
            ev = self._running.get(topic)
        if ev is not None:
            self._stop([ev], [topic])

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every replay and wait for their threads (any thread but theirs)."""
        with self._lock:
            events, threads = list(self._running.values()), list(self._threads)
            topics = list(self._running)
        self._stop(events, topics)
        for t in threads:
            t.join(timeout)

    def _stop(self, events: list[threading.Event], topics: list[bytes]) -> None:
        """Cancel: replays see it where they wait (for credit, or for the socket owner);
        a replay's process ends (its thread, waiting for its next message, sees that)."""
        for ev in events:
            ev.set()
        with self._lock:
            self._credit_changed.notify_all()
            for t in topics:   # under the lock: its thread closes it only after taking it out
                child = self._children.get(t)
                if child is not None and child.is_alive():
                    child.terminate()
        if self._wake is not None:
            self._wake()

    # -- the replay's own thread ----------------------------------------------------------

    def _serve(self, req: history.Request, topic: bytes, cancelled: threading.Event) -> None:
        """A request's thread: the replay in a process of its own where there is one (it
        shares no interpreter lock with the live stream), else here; its messages go to
        the socket owner as the requester's credit allows."""
        try:
            # the rows' sources must be the live stream's: its first look at the files
            # (a moment after the producer starts) names them
            self.looked.wait(LOOK_WAIT)
            if _processes() is not None:
                self._serve_from_child(req, topic, cancelled)
                return
            _background()
            seq = [0, 0]   # reply messages and rows numbered on this topic

            def send(table: pa.Table, kind=wire.Kind.DATA, source: str = "",
                     start: int = -1, end: int = -1) -> bool:
                header = _header(self, seq, table, kind, source, start, end)
                if kind is wire.Kind.DATA and req.window and not self._wait_credit(
                        topic, header.seq, req.window, cancelled):
                    return False
                return self.post(topic, wire.encode(table, topic=topic, header=header), cancelled)

            Answer(self, req, send, cancelled).run()
        finally:
            with self._lock:
                self._running.pop(topic, None)
                self._credit.pop(topic, None)
                self._children.pop(topic, None)
                self.served += 1

    def _serve_from_child(self, req: history.Request, topic: bytes,
                          cancelled: threading.Event) -> None:
        ctx = _processes()
        receiving, sending = ctx.Pipe(duplex=False)
        with self._lock:
            spec = (self.patterns, self.format_args, self.rate, self.producer, self.name,
                    self._source_id, dict(self._keys), getattr(self._live_format, "schema", None),
                    self.index.spans(set(self._keys.values())), req)
        child = ctx.Process(target=_child, args=(sending, spec), daemon=True,
                            name=f"zpandas-history-{req.id[:8]}")
        ended = False
        try:
            with self._lock:
                if cancelled.is_set():
                    return
                _start(child)
                self._children[topic] = child   # a cancel ends it (and our wait below)
            sending.close()
            while True:
                try:
                    header, body = receiving.recv_bytes(), receiving.recv_bytes()
                except (EOFError, OSError):
                    break   # it ended: done, cancelled, or died
                h = wire.Header.unpack(header)
                if h.kind is wire.Kind.DATA and req.window and not self._wait_credit(
                        topic, h.seq, req.window, cancelled):
                    break
                if not self.post(topic, [topic, header, body], cancelled):
                    break
                ended = h.kind is wire.Kind.HISTORY_END
        finally:
            sending.close()
            receiving.close()
            with self._lock:   # a cancel from now on has no process to end
                self._children.pop(topic, None)
            code = None
            if child.pid is not None:
                if child.is_alive():
                    child.terminate()
                child.join()
                code = child.exitcode
                child.close()
        if not ended and not cancelled.is_set():
            self.post(topic, wire.encode(
                history.end_table("failed", f"the replay's process ended without its end "
                                  f"(exit code {code})"),
                topic=topic, header=wire.Header(kind=wire.Kind.HISTORY_END, producer=self.producer,
                                                name=self.name, send_ns=time.time_ns())), cancelled)


class Answer:
    """One history request answered from ``files``' files: the plan (every file opened at
    once), each file's rows from where ``since`` starts, progress, and the end;
    ``send(table, kind, source, start, end)`` takes each message (False: stop)."""

    def __init__(self, files: FileHistory, req: history.Request, send,
                 cancelled: threading.Event) -> None:
        self.files, self.req, self.send, self.cancelled = files, req, send, cancelled
        self.where = None   # req.where, parsed

    def run(self) -> None:
        """Plan, the files' rows, progress, and the end."""
        req, send, cancelled = self.req, self.send, self.cancelled
        counts = {"rows": 0, "files": 0, "bytes": 0}
        status, reason, plan, skipped = "done", "", [], []
        try:
            if req.where is not None:
                from ..where import parse
                self.where = parse(req.where)
            plan = self._plan(skipped)   # every file opened now: a rotation meanwhile loses none
            progress = Progress(send, files=len(plan), total=sum(p.size - p.start for p in plan))
            if not progress.send(counts, force=True):
                status, reason = "cancelled", "the requester stopped asking"
            for planned in plan:
                if status != "done":
                    break
                if cancelled.is_set() or not self._replay_file(planned, plan, counts, progress):
                    status, reason = "cancelled", "the requester stopped asking"
        except Exception as e:  # noqa: BLE001 - a replay's failure is the requester's answer
            status, reason = ("refused" if isinstance(e, ValueError) else "failed"), \
                f"{type(e).__name__}: {e}"
            log.warning("history request %s: %s", req.id[:8], reason)
        finally:
            for planned in plan:
                planned.f.close()
        if status == "done" and skipped:
            reason = (f"not read: {len(skipped)} compressed file(s) ({', '.join(skipped[:5])}"
                      f"{', ...' if len(skipped) > 5 else ''})")
        if status != "cancelled":
            send(history.end_table(status, reason, rows=counts["rows"], files=counts["files"],
                                   nbytes=counts["bytes"]), kind=wire.Kind.HISTORY_END)

    def _plan(self, skipped: list) -> list[Planned]:
        """Each file with rows to read, oldest first; the names of compressed files matched
        go to ``skipped``."""
        plan, req = [], self.req
        opened = _open_files(self.files.patterns)
        try:
            while opened:
                path, f = opened.pop(0)
                if compression_of(f.read(COMPRESSED_HEAD)) is not None:
                    f.close()   # no offsets to search: as for the live stream, not read
                    skipped.append(os.path.basename(path))
                    continue
                head = os.pread(f.fileno(), HEAD_BYTES, 0)
                if lone_cr(head):
                    f = CrAsLf(f)   # read as the live stream reads it
                size = os.fstat(f.fileno()).st_size
                fmt = self.files.new_format()
                header_end = _begin(fmt, f, path)
                start = header_end if req.since is None else \
                    self._since(fmt, f, path, header_end, size, req.since.value)
                if start >= size:
                    f.close()
                    continue
                plan.append(Planned(path, f, start, size, head.rstrip(b"\0")))
        except BaseException:
            for f in [p.f for p in plan] + [f for _, f in opened]:
                f.close()
            raise
        return plan

    def _since(self, fmt, f, path: str, header_end: int, size: int, since_ns: int) -> int:
        """Where rows at or after ``since_ns`` start in ``f``: by the time index where it
        describes the file (exact, however out of order its times), by bisection on the
        rest (give or take :data:`SLACK_NS`)."""
        at = header_end
        key = self.files.key_of(f)
        spans = self.files.index.spans([key]).get(key) if key is not None else None
        if spans:
            read_at = f.pread if isinstance(f, CrAsLf) else (
                lambda n, start: os.pread(f.fileno(), n, start))
            found = start_from(spans, since_ns, lambda start, n: read_at(n, start))
            if found is not None:
                if found[1]:
                    return max(found[0], header_end)
                at = max(found[0], header_end)
        return at if at >= size else _bisect(fmt, f, path, at, size, since_ns - SLACK_NS)

    def _replay_file(self, planned: Planned, plan: list[Planned], counts: dict,
                     progress: Progress) -> bool:
        """One file's rows; False: cancelled."""
        path, f, start, size = planned.path, planned.f, planned.start, planned.size
        req, send, cancelled, rate = self.req, self.send, self.cancelled, self.files.rate
        fmt = self.files.new_format()
        _begin(fmt, f, path)   # a CSV's header names the columns
        counts["files"] += 1
        source = self.files.source_of(f)
        pos, began, tail = start, time.monotonic(), b""
        copies = []   # opened here when the file was emptied under us
        # with a rate, blocks of a tenth of a second's worth: the pace is even
        block = BLOCK if not rate else int(min(BLOCK, max(PROBE, rate / 10)))
        # parsed as the live stream parses: on two threads while the next block is read
        pipeline = ParsePipeline(fmt, default_threads(), initializer=_background)
        path_abs = os.path.abspath(path)

        def publish(wait: bool) -> bool | None:
            """Send what is parsed; False: cancelled; None: past ``until``, stop."""
            for ch, parsed, _ in pipeline.results(wait=wait):
                if parsed is not None and parsed.num_rows:
                    table = self._select(parsed)
                    if table.num_rows:
                        table = with_source(table, ch.path)
                        step = max(1, int(table.num_rows * MESSAGE_BYTES / max(1, table.nbytes)))
                        for i in range(0, table.num_rows, step):
                            if not send(table.slice(i, step), source=source, start=ch.start,
                                        end=ch.end):
                                return False
                        counts["rows"] += table.num_rows
                progress.done += ch.end - ch.start
                if not progress.send(counts):
                    return False
                # every row of the block at or past until (and slack): the rest of
                # the file is later still
                if (parsed is not None and req.until is not None
                        and _earliest(parsed) >= req.until.value + SLACK_NS):
                    return None
            return True

        try:
            while pos < size:
                if cancelled.is_set():
                    return False
                f.seek(pos)
                data = f.read(min(block, size - pos))
                if not data or not _intact(f, planned.head, pos + len(data)):
                    # Emptied in place under us (copytruncate; what ``data`` holds may be
                    # the new writes): the rest of what was planned is in the copy.
                    copy = _copy_of(self.files.patterns, planned, pos, tail, plan + copies)
                    if copy is None:
                        if publish(wait=True) is False:
                            return False
                        raise OSError(f"{path} was emptied while it was read (copytruncate?) "
                                      f"and no file the paths match holds its bytes from {pos}: "
                                      "rows after that are not in this answer")
                    copies.append(copy)
                    f, path_abs = copy.f, os.path.abspath(copy.path)   # the rows' _file
                    continue
                last = pos + len(data) >= size and not data.endswith(b"\n")
                if last:   # a line not ended when the request came
                    data, last = _last_line(f, data, size)
                got = _block(data, pos, quoted=fmt.quoted, last=last)
                if got is None:   # a record longer than a block: skip it
                    pos += len(data)
                    progress.done += len(data)
                    tail = data[-_TAIL_BYTES:]
                    continue
                records, cut = got
                tail = data[max(0, cut - _TAIL_BYTES):cut]
                pipeline.submit(types.SimpleNamespace(records=records, path=path_abs, key=None,
                                                      head=b"", start=pos, end=pos + cut))
                counts["bytes"] += cut
                pos += cut
                went = publish(wait=False)
                if went is False:
                    return False
                if went is None:
                    break
                if rate:   # at most `rate` bytes a second: wait, waking on a cancel
                    ahead = (pos - start) / rate - (time.monotonic() - began)
                    if ahead > 0 and cancelled.wait(ahead):
                        return False
            else:
                return publish(wait=True) is not False
            return True
        finally:
            pipeline.close()
            progress.done += size - pos   # what until= left unread
            for copy in copies:
                copy.f.close()

    def _select(self, table: pa.Table) -> pa.Table:
        req, t = self.req, time_column(table)
        if t is not None and (req.since is not None or req.until is not None):
            col = pc.cast(table.column(t), pa.timestamp("ns", "UTC"))
            keep = pc.is_valid(col)
            if req.since is not None:
                keep = pc.and_(keep, pc.greater_equal(col, pa.scalar(req.since.value, pa.timestamp("ns", "UTC"))))
            if req.until is not None:
                keep = pc.and_(keep, pc.less(col, pa.scalar(req.until.value, pa.timestamp("ns", "UTC"))))
            table = table.filter(keep)
        elif t is None and (req.since is not None or req.until is not None):
            raise ValueError("these rows have no time column to find since/until in")
        return history.select(table, self.where, req.columns)


def _header(serving, seq: list, table: pa.Table, kind, source: str, start: int,
            end: int) -> wire.Header:
    """The next reply message's header: data messages and their rows numbered in ``seq``."""
    header = wire.Header(kind=kind, producer=serving.producer, name=serving.name, seq=seq[0],
                         total=seq[1], send_ns=time.time_ns(), source=source, start=start,
                         end=end)
    if kind is wire.Kind.DATA:
        seq[0] += 1
        seq[1] += table.num_rows
    return header


def _child(conn, spec) -> None:
    """A replay in a process of its own: every message down ``conn`` as header and body
    (the parent waits for credit and hands them to the socket owner); it ends with the
    replay, or when the parent stops reading (a cancel, or the parent gone)."""
    patterns, format_args, rate, producer, name, source_id, keys, schema, spans, req = spec
    _background()   # (the threads it makes are niced too: ParsePipeline's initializer)
    serving = FileHistory(patterns, format_args, rate=rate)
    serving.producer, serving.name = producer, name
    serving.typed_as(types.SimpleNamespace(schema=schema))
    serving.indexed_by(TimeIndex.of(spans))
    if source_id is not None:
        serving.identified(source_id, keys)
    seq = [0, 0]

    def send(table: pa.Table, kind=wire.Kind.DATA, source: str = "", start: int = -1,
             end: int = -1) -> bool:
        header = _header(serving, seq, table, kind, source, start, end)
        frames = wire.encode(table, topic=b"", header=header)
        try:
            conn.send_bytes(frames[1])
            conn.send_bytes(memoryview(frames[2]))
        except (BrokenPipeError, OSError):
            return False
        return True

    try:
        Answer(serving, req, send, threading.Event()).run()
    finally:
        conn.close()


_PROCESSES: list = []   # [context or None], found once
_STARTING = threading.Lock()


def _start(child) -> None:
    """Start a replay's process without it importing this process's main module, as
    multiprocessing does in a child it does not fork directly: a script calling
    ``publish_files(history=True)`` without an ``if __name__ == "__main__"`` guard would run
    again in it. The main module is out of ``sys.modules`` only while the process starts
    (milliseconds), and only when there is one to import (not in a notebook)."""
    main = sys.modules.get("__main__")
    if main is None or (getattr(main, "__file__", None) is None
                        and getattr(main, "__spec__", None) is None):
        child.start()
        return
    with _STARTING:
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            child.start()
        finally:
            sys.modules["__main__"] = main


def _processes():
    """multiprocessing's forkserver context (Linux: a fork of a clean process that has
    imported this module, ~10 ms a replay), or None where there is none."""
    if not _PROCESSES:
        import multiprocessing
        try:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
        except ValueError:
            ctx = None
        _PROCESSES.append(ctx)
    return _PROCESSES[0]


class Progress:
    """How far a replay is, told to the requester when it starts and then about every
    :data:`zpandas.history.PROGRESS_EVERY` seconds (bytes of file from ``since``'s place)."""

    def __init__(self, send, *, files: int, total: int) -> None:
        self._send, self.files, self.total = send, files, total
        self.done = 0
        self._last = 0.0

    def send(self, counts: dict, *, force: bool = False) -> bool:
        """Tell it if it is time; False if the request was cancelled."""
        now = time.monotonic()
        if not force and now - self._last < history.PROGRESS_EVERY:
            return True
        self._last = now
        return self._send(history.progress_table(
            files=self.files, bytes_total=self.total, bytes_done=min(self.done, self.total),
            rows=counts["rows"]), kind=wire.Kind.HISTORY_PROGRESS)


def _background() -> None:
    """This thread runs after the live stream's for the CPU too: nice 10 (a replay's
    process and its threads; where threads have priorities of their own, Linux, this one
    alone)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


#: How many times a replay lists and opens its files again when a rotation moved a name
#: while it opened them.
_PLAN_TRIES = 20


def _open_files(patterns: list[str]) -> list[tuple[str, object]]:
    """Every file the patterns match, oldest first, opened at once, as one snapshot: the
    names are listed again after the opens, and all is done again if a rotation moved one
    meanwhile (opened by a name that had moved on, a rotated file would be read twice and
    the one before it not at all)."""
    for _ in range(_PLAN_TRIES):
        opened = []
        for path in _files(patterns):
            try:
                opened.append((path, open(path, "rb")))   # noqa: SIM115 - the plan closes them
            except OSError:
                pass   # rotated away meanwhile: the names are listed again below
        try:
            now = {p: (st.st_dev, st.st_ino) for p in _files(patterns) for st in [os.stat(p)]}
        except OSError:
            now = None
        if now == {p: (st.st_dev, st.st_ino) for p, f in opened for st in [os.fstat(f.fileno())]}:
            return opened
        for _, f in opened:
            f.close()
    raise OSError(f"the files kept being rotated while a replay opened them ({_PLAN_TRIES} tries)")


class Planned(NamedTuple):
    """A file a replay reads: its rows from ``start`` up to ``size`` (its size when the
    request came), ``head`` its first bytes then, without the NULs they end with (to know
    it if it is emptied meanwhile; a preallocated file is written over its NULs)."""

    path: str
    f: object
    start: int
    size: int
    head: bytes


def _last_line(f, data: bytes, size: int) -> tuple[bytes, bool]:
    """``data``, the file's bytes up to ``size``, ends inside a line: read on to its end if
    it was written since (not the line's start alone, a row the live stream then sends
    whole at the same offset); whether the line as it is now is a record - a file quiet
    for :data:`QUIET` seconds ended without a newline, as the live stream decides."""
    st = os.fstat(f.fileno())
    if st.st_size > size:
        more = f.read(min(st.st_size - size, MESSAGE_BYTES))   # (f is where data ended)
        newline = more.find(b"\n")
        return (data + more[:newline + 1], False) if newline >= 0 else (data, False)
    return data, time.time() - st.st_mtime >= QUIET


def _intact(f, head: bytes, end: int) -> bool:
    """``f`` still holds what the plan found, up to ``end``: not shorter, the same head (a
    copytruncate empties the file in place and its writer fills it anew)."""
    fd = f.fileno()
    return os.fstat(fd).st_size >= end and os.pread(fd, len(head), 0) == head


def _copy_of(patterns: list[str], planned: Planned, pos: int, tail: bytes,
             known: list[Planned]) -> Planned | None:
    """The copy a copytruncate made of ``planned``'s file, opened: a file the patterns
    match, none of ``known``, with the same head, at least ``pos`` bytes and ``tail``
    (what was read last) just before ``pos`` - read as the original was read."""
    skip = {(st.st_dev, st.st_ino) for p in known for st in [os.fstat(p.f.fileno())]}
    for path in _files(patterns):
        try:
            g = open(path, "rb")   # noqa: SIM115 - the replay closes it
        except OSError:
            continue
        st = os.fstat(g.fileno())
        if isinstance(planned.f, CrAsLf):
            g = CrAsLf(g)
        if (st.st_dev, st.st_ino) not in skip and st.st_size >= pos \
                and os.pread(g.fileno(), len(planned.head), 0) == planned.head:
            g.seek(pos - len(tail))
            if g.read(len(tail)) == tail:
                return Planned(path, g, pos, planned.size, planned.head)
        g.close()
    return None


def _files(patterns: list[str]) -> list[str]:
    """The files the patterns match now, oldest first (rotated copies before the live one)."""
    try:
        found = expand_paths(patterns)
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda p: (os.path.getmtime(p), p))


def _block(data: bytes, pos: int, *, quoted: bool, last: bool) -> tuple[Records, int] | None:
    """The whole records of ``data``, read at ``pos`` (NULs left out, as the live stream
    leaves them out), and the bytes they take - with ``last``, also a record without a
    newline at its end; None: one record is longer than ``data``."""
    holes = Holes(data) if b"\0" in data else None
    text = data if holes is None else holes.text
    ends = record_ends(text, quoted=quoted)
    if last and len(text) and (not len(ends) or ends[-1] < len(text)):
        ends = np.append(ends, len(text)).astype(np.int64)   # the last record, no newline
    if not len(ends):
        return None
    cut = int(ends[-1])
    return (_records(text[:cut], ends, pos, holes),
            cut if holes is None else int(holes.to_source(cut)))


def _records(data: bytes, ends: np.ndarray, at: int, holes: Holes | None = None) -> Records:
    bounds = np.concatenate(([0], ends)).astype(np.int64)
    starts = bounds[:-1] if holes is None else holes.to_source(bounds[:-1])
    return Records(data, bounds, np.full(len(ends), -1, np.int64), starts + at)


def _begin(fmt, f, path: str) -> int:
    """Show the format the file's first record if it is a header (CSV); where rows start."""
    if not getattr(fmt, "quoted", False) or getattr(fmt, "names", None):
        return 0
    f.seek(0)
    head = f.read(PROBE)
    start, end = header_bounds(head, getattr(fmt, "skiprows", 0))
    if not end:
        return len(head)
    fmt.begin(_records(head[start:end], np.array([end - start]), start), path, head=head[:end])
    return end


def _earliest(table: pa.Table) -> int:
    """The earliest event time (ns) of ``table``'s rows; -1 without times."""
    t = time_column(table)
    if t is None:
        return -1
    low = pc.min(pc.cast(table.column(t), pa.timestamp("ns", "UTC"))).value
    return -1 if low is None else low


def _first_time(fmt, f, path: str, at: int, size: int, *, aligned: bool) -> int | None:
    """Event time (ns) of the first record that parses at ``at`` (``aligned``: a record
    starts there) or after the first record end past it."""
    f.seek(at)
    data = f.read(min(PROBE, size - at))
    ends = record_ends(data, quoted=fmt.quoted)
    first = 0
    if not aligned and len(ends):
        first, ends = int(ends[0]), ends[1:]
    if not len(ends):
        return None
    records = _records(data[first:int(ends[-1])], ends - first, at + first)
    table, _ = fmt.parse_body(fmt.begin(records, path), path)
    if table is None or not table.num_rows:
        return None
    t = time_column(table)
    if t is None:
        return None
    col = pc.cast(table.column(t), pa.timestamp("ns", "UTC")).drop_null()
    return None if not len(col) else col[0].value


def _bisect(fmt, f, path: str, start: int, size: int, since_ns: int) -> int:
    """Where to start reading for ``since_ns``: the start of a record whose time is before
    it, as late in the file as bisection finds (``start``: where records begin)."""
    first = _first_time(fmt, f, path, start, size, aligned=True)
    if first is None or first >= since_ns:
        return start
    lo, hi = start, size
    while hi - lo > PROBE:
        mid = (lo + hi) // 2
        t = _first_time(fmt, f, path, mid, size, aligned=False)
        if t is None or t >= since_ns:
            hi = mid
        else:
            lo = mid
    if lo == start:
        return start
    # lo is inside a record; the record after the first end past it is before since
    f.seek(lo)
    data = f.read(min(PROBE, size - lo))
    ends = record_ends(data, quoted=fmt.quoted)
    return lo + int(ends[0]) if len(ends) else size
