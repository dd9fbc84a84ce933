"""Publishing files: whole CSV files, or line formats followed as they grow and rotate.

The file pipeline on top of a :class:`~zpandas.Producer`, through its public API only:
read (whole CSV blocks, or a :class:`~zpandas.sources.follow.Follower`'s records), parse
(on a :class:`~zpandas.sources.pipeline.ParsePipeline`), tag each row with its file and
offset, send, and checkpoint what has surely left the process.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
import uuid

import pyarrow as pa

from .._tables import with_source
from ..producer import Producer
from .checkpoint import Checkpoint
from .csv import CsvReader
from .compressed import HEAD, compression_of
from .encoding import Transcoder
from .follow import Follower
from .lines import REJECT_SCHEMA, get_format
from .timeindex import TimeIndex
from .pipeline import ParsePipeline, default_threads
from .watch import watch

log = logging.getLogger("zpandas")

#: Seconds a stopped follower waits for its last rows to leave: with a poll of up to 1 s
#: before the stop is seen, it ends within 2 s.
STOP_LINGER = 0.5

__all__ = ["publish_files", "expand_paths"]


class _NoProgress:
    """Stands in for a tqdm bar (tqdm starts a monitor thread even when disabled)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, n: int) -> None:
        pass


def _progress(total: int, show: bool):
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc="publish")


def expand_paths(paths_or_globs) -> list[str]:
    """Expand paths and glob patterns (``**`` recurses) into a sorted list of files.

    Raises
    ------
    FileNotFoundError
        Naming a path that does not exist or a pattern that matches no file.
    """
    if isinstance(paths_or_globs, (str, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    out: list[str] = []
    for item in paths_or_globs:
        item = os.fspath(item)
        if glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"no file matches {item!r}")
            out += found
        elif os.path.isdir(item):
            raise IsADirectoryError(f"{item!r} is a directory; give a glob such as '{item}/*.csv'")
        elif not os.path.exists(item):
            raise FileNotFoundError(f"no such file: {item!r}")
        else:
            out.append(item)
    return list(dict.fromkeys(out))  # a file named twice is sent once


def publish_files(paths, endpoint, *, topic: str = "", format: str = "csv", schema=None,
                  delimiter: str = ",", skiprows: int = 0, follow: bool = False,
                  checkpoint=None, multiline=None,
                  multiline_timeout: float = 2.0, max_line_bytes: int = 1 << 20,
                  time_format: str | None = None,
                  poll_interval: float | None = None, stop: threading.Event | None = None,
                  duration: float | None = None, block_size: int = 4 << 20,
                  progress: bool = False, parse_threads: int | None = None,
                  encoding: str = "utf-8", errors: str = "reject", flatten: bool = True,
                  history: bool = False, history_rate: float | None = None,
                  history_max: int = 4, **producer_options) -> dict:
    """Publish the rows of files: whole, or following them as they grow and rotate.

    Parameters
    ----------
    paths : str, path or list of them
        Files and glob patterns (``"logs/*.csv"``, ``"data/**/*.csv"``). When following,
        the globs are watched for new files; match the rotated copies too
        (``"app.log*"``) so that copytruncate rotation loses nothing.
    endpoint : str, list of str, or Producer
        Where to publish (see :class:`Producer`); an open Producer is used as is and
        left open.
    topic : str
        Topic of the rows (ignored when ``endpoint`` is a Producer: its topic applies).
    format : str or LineFormat, default "csv"
        ``"csv"``, ``"jsonl"``, a preset (``"combined"``/``"nginx"``/``"apache"``,
        ``"syslog"`` (RFC 3164), ``"syslog5424"``), or ``"regex:<pattern>"`` with named
        groups. Lines that do not parse are sent as rejects (``Subscriber.rejects()``).
    schema : pyarrow.Schema or dict of column name to type, optional
        Whole CSV files: column types. The rest are inferred from the first block. A
        later number that needs a wider type widens its column (int64 to float64, with
        a warning on the ``zpandas`` logger); a value of another kind is a reject, as
        in followed files.
    delimiter : str, default ","
    skiprows : int, default 0
        CSV: lines at the start of each file to skip before its header (a title, notes),
        as in ``pandas.read_csv``; empty lines after them are skipped too.
    follow : bool, default False
        Keep reading as the files grow, rotate or appear, until ``stop`` is set or
        ``duration`` has passed (inotify through watchdog, with polling as fallback).
    checkpoint : str or path, optional
        A SQLite file remembering how far each file was read. A restarted producer
        (even after ``kill -9``) resumes there, and rows carry keys that let
        subscribers drop any it sends twice: every row arrives exactly once.
    multiline : str, optional
        A regex matching the first line of a record (e.g. ``r"\\d{4}-\\d\\d-\\d\\d "``): other
        lines (tracebacks, stack traces) continue the record before them.
    multiline_timeout : float, default 2.0
        Seconds after which the last record of a quiet file is sent. Followed CSV
        files: a record whose quote is still open this long after it was first seen
        spanning a line is cut at that line's end, as a reject (``unclosed quote``), and
        the lines after it are read.
    time_format : str, optional
        Line formats: the strptime format of fields named ``time`` or ``timestamp``
        (they become timezone-aware UTC datetimes; a value that does not parse makes its
        line a reject). Default: a preset's own format, else epoch numbers (s, ms, us or
        ns by magnitude), ISO 8601, or another form pandas recognises.
    max_line_bytes : int, default 1 MiB
        Longer records are rejects.
    poll_interval : float, optional
        Seconds between checks for new data when no file event arrives: a safety net
        for missed events, the tick of ``multiline_timeout``, and how soon ``stop`` is
        seen. Default 1 s while file events (inotify, through watchdog) are watched (an
        idle follower then costs under 1% of a core), 0.25 s without them.
    block_size : int, default 4 MiB
        Bytes per block for whole CSV files.
    progress : bool, default False
        Show a tqdm progress bar in bytes (whole files only).
    parse_threads : int, optional
        Line formats: threads parsing blocks while the next ones are read (pyarrow and
        polars parse without the GIL). Default 2 on a machine with 2 cores or more, else 1.
    encoding : str, default "utf-8"
        The files' encoding, any codec Python knows (``"latin-1"``, ``"cp1252"``,
        ``"utf-16"``, ``"shift_jis"``); decoded a block at a time. A file that starts
        with a UTF-16 or UTF-32 byte-order mark is read as such whatever this says.
        ``_offset`` stays the byte offset in the file.
    errors : {"reject", "replace"}, default "reject"
        A line with bytes that do not decode is a reject (``"bytes that are not
        cp1252"``), or they are read as U+FFFD.
    flatten : bool, default True
        JSON lines: objects inside a line become dotted columns
        (``connections.accepted``), lists JSON text; False keeps every nested value as
        JSON text.
    history : bool, default False
        Answer subscribers' history requests (:meth:`Subscriber.history`) with rows read
        again from the files the paths match (rotated copies included), each replay in a
        process of its own at a lower priority (nice 10): a live row never waits for a
        replayed one. Off: such requests are answered "no history".
    history_rate : float, optional
        Bytes of file per second a replay reads at most (default: as fast as the socket
        takes them, when no live row waits).
    history_max : int, default 4
        Replays at a time; more requests are refused with the reason.
    **producer_options
        Passed to :class:`Producer` (``wait_for_subscribers``, ``name``, ``policy``, ...).

    Returns
    -------
    dict
        ``files``, ``rows``, ``bytes`` published, ``rejects``, and ``widened`` (whole CSV
        files: the columns whose types were widened, e.g. ``["'x' int64 -> double"]``).

    Raises
    ------
    SchemaMismatchError
        Whole CSV files: a file's columns differ from the first file's.
    SourceError
        Whole CSV files: the header cannot be parsed.
    """
    own = not isinstance(endpoint, Producer)
    lines = format != "csv" or follow or checkpoint is not None or multiline is not None
    if time_format is not None and (format == "csv" or str(format).startswith("csv:")):
        raise ValueError("time_format= applies to jsonl, regex and the presets; CSV columns are "
                         "typed as Arrow infers them (ISO 8601 times become datetimes), or by "
                         "schema= in whole files")
    codec = Transcoder(encoding, errors)
    files = [] if follow else expand_paths(paths)
    # Whole CSV files are cut into blocks at newline bytes: UTF-16 and UTF-32 files
    # (asked for, or found by their byte-order mark) are read record by record instead.
    lines = lines or not codec.ascii_compatible or any(
        codec.for_file(_first_bytes(f))[0].name != codec.name for f in files)
    if lines and schema is not None:
        raise ValueError("schema= applies to whole CSV files in encodings with newline bytes; "
                         "following, checkpoints, line formats and UTF-16/32 files infer types "
                         "from the first records")
    replay = None
    if history:
        from .replay import FileHistory
        patterns = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        replay = FileHistory(
            patterns, dict(fmt=format, delimiter=delimiter, max_line_bytes=max_line_bytes,
                           time_format=time_format, flatten=flatten, skiprows=skiprows),
            rate=history_rate, max_requests=history_max, encoding=encoding)
    if own:   # serving history from its first moment: a request may come at once
        producer = Producer(endpoint, topic=topic, _history=replay, **producer_options)
    else:
        producer = endpoint
        if replay is not None:
            producer._serve_history(replay)
    try:
        if lines:
            return _publish_lines(paths, producer, replay=replay, format=format, delimiter=delimiter,
                                  skiprows=skiprows, follow=follow, checkpoint=checkpoint,
                                  multiline=multiline, multiline_timeout=multiline_timeout,
                                  max_line_bytes=max_line_bytes, time_format=time_format,
                                  poll_interval=poll_interval, parse_threads=parse_threads,
                                  stop=stop, duration=duration, own=own, encoding=encoding,
                                  errors=errors, flatten=flatten)
        if replay is not None:
            replay.looked.set()   # whole files: no live stream's names to wait for
        return _publish_csv(files, producer, schema=schema, delimiter=delimiter,
                            skiprows=skiprows, block_size=block_size, progress=progress,
                            encoding=encoding, errors=errors)
    finally:
        if own:
            producer.close()


def _first_bytes(path: str, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _publish_csv(files: list[str], producer: Producer, *, schema, delimiter: str,
                 skiprows: int, block_size: int, progress: bool, encoding: str,
                 errors: str) -> dict:

    reader = CsvReader(schema=schema, delimiter=delimiter, block_size=block_size,
                       encoding=encoding, errors=errors, skiprows=skiprows)
    total = sum(os.path.getsize(f) for f in files)
    rows = rejects = 0
    run = uuid.uuid4().hex[:12]  # rows carry offsets: a source names this run's read of a file
    with _progress(total, progress) as bar:
        for path in files:
            source = f"{run}/{os.path.abspath(path)}"
            plain = compression_of(_first_bytes(path, HEAD)) is None   # else: offsets decompressed
            done = 0
            for block in reader.read(path):
                producer.send(with_source(block.table, os.path.abspath(path), block.offsets), source=source,
                              offsets=(block.start, block.end))
                rows += block.table.num_rows
                if plain:
                    bar.update(block.end - done)
                    done = block.end
            if reader.rejects:
                producer.send_rejects(pa.Table.from_pylist(reader.rejects, schema=REJECT_SCHEMA),
                                      source=source)
                rejects += len(reader.rejects)
                reader.rejects.clear()
            bar.update(os.path.getsize(path) - done)
    return {"files": len(files), "rows": rows, "bytes": total, "rejects": rejects,
            "widened": reader.widened}


def _publish_lines(paths, producer: Producer, *, replay=None, format, delimiter: str,
                   skiprows: int, follow: bool,
                   checkpoint, multiline, multiline_timeout: float, max_line_bytes: int,
                   time_format: str | None, poll_interval: float, parse_threads: int | None,
                   stop, duration, own: bool, encoding: str, errors: str,
                   flatten: bool) -> dict:
    """Records of files (followed or not) -> rows and rejects, with checkpoints."""

    fmt = get_format(format, delimiter=delimiter, max_line_bytes=max_line_bytes,
                     time_format=time_format, flatten=flatten, skiprows=skiprows)
    patterns = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    ckpt = Checkpoint(checkpoint) if checkpoint is not None else None
    source_id = ckpt.source_id if ckpt else uuid.uuid4().hex[:12]
    follower = Follower(patterns, quoted=fmt.quoted, multiline=multiline,
                        multiline_timeout=multiline_timeout, resume=ckpt.load() if ckpt else None,
                        max_line_bytes=max_line_bytes, encoding=encoding, errors=errors)
    wake = threading.Event()
    watcher = watch(patterns, wake) if follow else None
    index = None
    if replay is not None:   # replayed rows are sourced and typed as the live ones
        replay.identified(source_id, follower.identities())
        replay.typed_as(fmt)
        if replay.utf8:   # (other encodings are not replayed)
            index = TimeIndex(ckpt)
            replay.indexed_by(index)
    if poll_interval is None:
        poll_interval = 0.25 if watcher is None else 1.0
    ends: dict[str, dict[int, tuple]] = {}   # source -> chunk end -> checkpoint entry
    deadline = None if duration is None else time.monotonic() + duration
    next_save = time.monotonic() + 1.0
    next_expiry = time.monotonic()
    seen, out = set(), {"rows": 0, "bytes": 0, "rejects": 0}

    def save(handed: dict[str, int]) -> None:
        entries = []
        for src, end in handed.items():
            # The last chunk wholly before ``end`` (a claim may stop at a chunk's start:
            # a sharded chunk is out once each of its buckets' parts is).
            by_end = ends.get(src, {})
            done = [e for e in by_end if e <= end]
            if done:
                entries.append(by_end[max(done)])
                for e in done:
                    del by_end[e]
        if ckpt:
            ckpt.save(entries)
        if index is not None:
            index.save()

    parser = ParsePipeline(fmt, parse_threads if parse_threads is not None else default_threads())

    def publish(wait: bool) -> None:
        for ch, table, rejects in parser.results(wait=wait):
            source = f"{source_id}/{ch.key}"
            if rejects.num_rows:
                producer.send_rejects(rejects, source=source, offsets=(ch.start, ch.end))
                out["rejects"] += rejects.num_rows
            if table is not None:
                producer.send(with_source(table, ch.path), source=source, offsets=(ch.start, ch.end))
                out["rows"] += table.num_rows
            out["bytes"] += ch.end - ch.start
            ends.setdefault(source, {})[ch.end] = (ch.key, ch.path, ch.dev, ch.ino, ch.head,
                                                   ch.end, ch.line, ch.size)
            if index is not None:   # (the records' bytes are the file's from the first's start)
                index.note(ch.key, ch.start, ch.end, ch.records.data,
                           ch.start - int(ch.records.bounds[0]), table)

    try:
        while True:
            chunks = follower.poll(final=not follow)
            if ckpt and follower.discovered:
                ckpt.save(follower.discovered)
            if replay is not None and (follower.discovered or not replay.looked.is_set()):
                replay.identified(source_id, follower.identities(), looked=True)
            follower.discovered.clear()
            for ch in chunks:
                seen.add(ch.key)
                parser.submit(ch)
                publish(wait=False)
            now = time.monotonic()
            if now >= next_expiry:
                if ckpt:
                    ckpt.expire(follower.present)
                if index is not None:
                    index.forget(follower.identities().values())
                next_expiry = now + 60.0
            if now >= next_save:
                save(producer.sent_offsets())  # only rows surely out of this process
                if ckpt:
                    ckpt.sizes(follower.sizes())
                next_save = now + 1.0
            if not follow and not follower.active and not chunks:
                break
            if (stop is not None and stop.is_set()) or (deadline is not None and now >= deadline):
                break
            if follow and not follower.behind:
                # Caught up with the files: what was read leaves now, not after parsing
                # the next block or flush_interval. (Behind - a block came back full - the
                # loop reads on at once, parsing overlaps reading, rows go in large frames.)
                publish(wait=True)
                producer.flush()
                wake.wait(poll_interval)
                wake.clear()
        publish(wait=True)
        producer.flush()
        if own:
            stopped = stop is not None and stop.is_set()
            try:
                # Stopped (Ctrl-C, SIGTERM, a notebook's kernel gone): a subscriber that
                # is gone too would hold the close for all of `linger`. What has not left
                # within STOP_LINGER is not checkpointed, and is read again on restart.
                producer.close(timeout=STOP_LINGER if stopped else None)
            except TimeoutError as e:
                if not stopped:
                    raise
                log.warning("stopping: %s; those rows are not checkpointed and will be sent "
                            "again by the next run", e)
        save(producer.sent_offsets())
    finally:
        parser.close()
        if watcher is not None:
            watcher.stop()
            watcher.join()
        follower.close()
        if ckpt:
            ckpt.close()
    out["files"] = len(seen)
    out["lost_truncations"] = follower.lost_truncations
    out["compressed"] = sorted(follower.compressed.values())   # matched, not read
    out["lost_bytes"] = follower.lost_bytes
    out["nul_bytes"] = follower.nul_bytes
    out["widened"] = []  # line formats widen numbers silently (receivers unify the types)
    return out
