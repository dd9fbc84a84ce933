"""The ``zpandas`` command: publish, subscribe, proxy, keygen, demo.

The only module that prints, configures logging or exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa

from . import __version__
from .errors import ZpandasError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def run() -> None:
    """Entry point of the ``zpandas`` command and ``python -m zpandas``.

    Ends the process with ``os._exit`` once everything is flushed: Arrow's native thread
    pool can abort (``std::terminate``) in static destructors at interpreter exit
    (apache/arrow#34314, #39862). By then every socket and ZeroMQ context is closed, so
    all data has left; only the exit code would be wrong.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if code in _SIGNALLED:
        # Stopped by a signal, after a clean shutdown: end *by* that signal, as the
        # shell convention asks (it shows 130 or 143; a parent sees -2 or -15, and
        # systemd counts a SIGTERM ending as a clean stop).
        signal.signal(_SIGNALLED[code], signal.SIG_DFL)
        os.kill(os.getpid(), _SIGNALLED[code])
    os._exit(code)


def spawn(*args: str, **popen_options) -> subprocess.Popen:
    """Start a ``zpandas`` command in a child process that ends when this one ends.

    For notebooks: a producer or a tail started from a kernel stops (cleanly, as on
    SIGTERM: rows flushed, checkpoint saved) when the kernel is shut down, restarted or
    killed, instead of running on unseen.

    Parameters
    ----------
    *args : str
        The command's arguments, e.g. ``"publish", "logs/*.log", "--follow", "-e", ep``.
    **popen_options
        Passed to :class:`subprocess.Popen` (``stdout=``, ``env=``...).

    Returns
    -------
    subprocess.Popen
        Stop it with ``.send_signal(signal.SIGTERM)`` (or ``.terminate()``); it then
        ends by that signal: ``wait()`` returns ``-signal.SIGTERM``.

    Examples
    --------
    >>> tail = zpandas.spawn("publish", "app.log", "--follow", "-e", ">" + sub.endpoints[0])  # doctest: +SKIP
    """
    return subprocess.Popen([sys.executable, "-m", "zpandas", "--parent-pid", str(os.getpid()),
                             *map(str, args)], **popen_options)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _main(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zpandas",
        description="Rows from CSV files on many machines, live in pandas (Arrow over ZeroMQ).")
    parser.add_argument("--version", action="version", version=f"zpandas {__version__}")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="end (as on SIGTERM: rows flushed, checkpoint saved) when process "
                             "PID ends; zpandas.spawn() passes its own")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v logs connections and gaps, -vv debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="publish CSV files to a subscriber",
                       description="Publish the rows of CSV files (paths or globs).")
    p.add_argument("files", nargs="+", help="files or glob patterns, e.g. 'logs/*.csv'")
    p.add_argument("-e", "--endpoint", action="append",
                   help=f"where to publish; '>' connects (default), '@' binds; repeatable "
                        f"(default >{DEFAULT_ENDPOINT})")
    p.add_argument("-t", "--topic", default="", help="topic of the rows (default: none)")
    p.add_argument("--name", help="producer name shown to subscribers (default host:pid)")
    p.add_argument("--wait-for", type=int, default=1, metavar="N",
                   help="wait until N subscribers listen before sending (default 1; 0: don't wait)")
    p.add_argument("--wait-timeout", type=float, default=60.0, metavar="S",
                   help="give up (exit code 1) if the subscribers are not there within S seconds "
                        "(default 60)")
    p.add_argument("--block-size", type=int, default=4 << 20, metavar="BYTES",
                   help="bytes of CSV parsed at a time (default 4 MiB)")
    p.add_argument("--frame-bytes", type=int, default=4 << 20, metavar="BYTES",
                   help="rows are coalesced into frames of about this size (default 4 MiB)")
    p.add_argument("--delimiter", default=",", help="CSV field delimiter (default ',')")
    p.add_argument("--skiprows", type=int, default=0, metavar="N",
                   help="CSV: lines at the start of each file before its header (a title, "
                        "notes) to skip, as pandas.read_csv's skiprows (default 0)")
    p.add_argument("--schema", action="append", type=_column_type, metavar="NAME=TYPE",
                   help="whole CSV files: a column's type (string, int64, float64, bool, "
                        "timestamp[ms], ...); repeatable. Others are inferred")
    p.add_argument("-f", "--format", default="csv",
                   help="csv (default), jsonl, combined/nginx/apache, syslog, syslog5424, "
                        "or 'regex:<pattern with named groups>'")
    p.add_argument("--follow", action="store_true",
                   help="keep reading as files grow, rotate and appear, until Ctrl-C or SIGTERM")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="SQLite file of read offsets: a restart resumes, rows arrive exactly once")
    p.add_argument("--multiline", metavar="REGEX",
                   help="a line matching REGEX starts a record; others continue it (tracebacks)")
    p.add_argument("--multiline-timeout", type=float, default=2.0, metavar="S",
                   help="send the last record of a quiet file after S seconds; a followed CSV "
                        "record with a quote still open after S seconds is cut at its first "
                        "line's end as a reject (default 2)")
    p.add_argument("--time-format", metavar="FMT",
                   help="strptime format of 'time'/'timestamp' fields (jsonl, regex and "
                        "presets), e.g. '%%d/%%b/%%Y:%%H:%%M:%%S %%z'; default: epoch numbers, "
                        "ISO 8601 or another known form")
    p.add_argument("--no-flatten", dest="flatten", action="store_false",
                   help="jsonl: keep objects inside a line as JSON text (default: dotted "
                        "columns such as connections.accepted; lists stay JSON text)")
    p.add_argument("--encoding", default="utf-8", metavar="CODEC",
                   help="the files' encoding: latin-1, cp1252, utf-16, shift_jis... (default "
                        "utf-8; a UTF-16/32 byte-order mark is always honoured)")
    p.add_argument("--errors", choices=("reject", "replace"), default="reject",
                   help="a line with bytes that do not decode: a reject (default) or read "
                        "with U+FFFD in their place")
    p.add_argument("--parse-threads", type=int, metavar="N",
                   help="line formats: threads parsing blocks (default 2 with 2 cores or "
                        "more, else 1; 1 leaves more of the node to the job writing the logs)")
    p.add_argument("--shards", type=int, metavar="N",
                   help="send under the topics of N buckets, TOPIC#<bucket>, so that several "
                        "subscribers (zpandas.dask workers) share the stream")
    p.add_argument("--shard-by", metavar="COLUMN",
                   help="with --shards: the column whose value picks a row's bucket "
                        "(default: this producer's name picks one for all its rows)")
    p.add_argument("--compression", choices=["auto", "lz4", "zstd", "none"], default="auto",
                   help="compress message bodies (Arrow IPC buffer compression): fewer bytes on "
                        "a network link for some CPU. auto (default): lz4, or none when every "
                        "endpoint is on this machine; zstd for slow links (100 Mbit/s and less)")
    p.add_argument("--history", action="store_true",
                   help="answer subscribers' history requests (Subscriber.history) with rows read "
                        "again from these files, rotated copies included, after live rows")
    p.add_argument("--history-rate", type=_byte_size, metavar="BYTES",
                   help="with --history: bytes of file per second a replay reads at most "
                        "(e.g. 20M; default: as fast as the link takes them after live rows)")
    p.add_argument("--history-max", type=int, default=4, metavar="N",
                   help="with --history: replays at a time; more are refused (default 4)")
    p.add_argument("--dictionary", action=argparse.BooleanOptionalAction, default=None,
                   help="dictionary-encode repeated strings for the wire (subscribers get the "
                        "same rows either way); default: on, unless every endpoint is on this "
                        "machine")
    _policy_options(p, "producer")
    _curve_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("subscribe", help="receive rows and print a live summary",
                       description="Receive rows; print a summary line every second.")
    s.add_argument("-e", "--endpoint", action="append",
                   help=f"'@' binds (default), '>' connects; repeatable (default @{DEFAULT_ENDPOINT})")
    s.add_argument("-t", "--topic", action="append", default=[], help="topic prefix; repeatable")
    s.add_argument("--producers", type=int, metavar="N",
                   help="stop once N producers have finished (the batch job)")
    s.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    s.add_argument("--where", metavar="EXPR",
                   help="only rows that match, filtered at the producers (e.g. \"status >= 500\")")
    s.add_argument("--columns", metavar="A,B", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                   help="only these columns, chosen at the producers")
    s.add_argument("--since", metavar="WHEN",
                   help="start with the past: '30min', '2026-12-06T10:40' (producers with --history)")
    s.add_argument("--parquet", metavar="DIR",
                   help="write the rows to Parquet files in DIR, a new file by size or time")
    s.add_argument("--roll-mb", type=float, default=64, metavar="MB",
                   help="start a new Parquet file after this much data (default 64)")
    s.add_argument("--roll-seconds", type=float, default=60, metavar="S",
                   help="start a new Parquet file after this long (default 60)")
    _policy_options(s, "subscriber")
    _curve_options(s)

    x = sub.add_parser("proxy", help="forward producers to subscribers (XSUB/XPUB)",
                       description="Producers connect to the frontend, subscribers to the "
                                   "backend; neither needs the other's address.")
    x.add_argument("--frontend", action="append",
                   help="where producers connect (default @tcp://*:5559); repeatable")
    x.add_argument("--backend", action="append",
                   help="where subscribers connect (default @tcp://*:5560); repeatable")
    x.add_argument("--interval", type=float, default=10.0, metavar="S",
                   help="print the proxy's counters every S seconds (default 10; 0: never)")
    _policy_options(x, "proxy")
    _curve_options(x)

    k = sub.add_parser("keygen", help="make CURVE certificates (public NAME.key, secret NAME.key_secret)",
                       description="Make CURVE key pairs for Producer, Subscriber and Proxy "
                                   "(curve=zpandas.Curve(...)). Secret files are readable by "
                                   "their owner only.")
    k.add_argument("folder", help="where to write the key files (created if missing)")
    k.add_argument("--name", action="append", help="one pair per name (default: zpandas); repeatable")

    d = sub.add_parser("demo", help="4 local producers -> 1 subscriber -> aggregate, Parquet, PNG")
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    d.add_argument("--data", default=None,
                   help="folder with node*/ CSV files (default: generate the demo's own into OUT/data)")

    return parser


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (kill, systemd, docker stop) ends a command cleanly, like Ctrl-C. Both end
    # with 128 + the signal's number (see run()).
    signal.signal(signal.SIGTERM, _terminate)
    if args.parent_pid is not None:
        _end_with(args.parent_pid)
    commands = {"publish": _publish, "subscribe": _subscribe, "proxy": _proxy, "keygen": _keygen,
                "demo": _demo}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM
    except (ZpandasError, OSError, TimeoutError, ValueError) as e:
        print(f"zpandas {args.command}: error: {e}", file=sys.stderr)
        return 1


def _publish(args) -> int:
    import threading

    from .sources.publish import publish_files

    endpoints = args.endpoint or [">" + DEFAULT_ENDPOINT]
    if args.wait_for and not args.quiet:
        _check_names(endpoints)
        print(f"zpandas publish: waiting for {args.wait_for} subscriber"
              f"{'s' if args.wait_for > 1 else ''} on {', '.join(endpoints)} "
              f"(up to {args.wait_timeout:g} s; Ctrl-C to stop)", file=sys.stderr, flush=True)
    stop = threading.Event()
    # Following ends cleanly on Ctrl-C or SIGTERM: what was sent is checkpointed.
    signalled = _Stop(stop, quiet=args.quiet) if args.follow else None
    result = publish_files(args.files, endpoints, topic=args.topic, name=args.name,
                           format=args.format, follow=args.follow, checkpoint=args.checkpoint,
                           multiline=args.multiline, multiline_timeout=args.multiline_timeout,
                           time_format=args.time_format, parse_threads=args.parse_threads,
                           encoding=args.encoding, errors=args.errors, flatten=args.flatten,
                           stop=stop, wait_for_subscribers=args.wait_for,
                           wait_timeout=args.wait_timeout, block_size=args.block_size,
                           frame_bytes=args.frame_bytes, delimiter=args.delimiter,
                           skiprows=args.skiprows,
                           policy=args.policy, buffer_bytes=args.buffer_bytes,
                           curve=_curve(args), progress=not args.quiet and not args.follow,
                           schema=dict(args.schema) if args.schema else None,
                           shards=args.shards, shard_by=args.shard_by,
                           compression=None if args.compression == "none" else args.compression,
                           dictionary=args.dictionary, history=args.history,
                           history_rate=args.history_rate, history_max=args.history_max)
    if not args.quiet:
        rejects = f", {result['rejects']:,} lines rejected" if result["rejects"] else ""
        widened = f"; widened {', '.join(result['widened'])}" if result["widened"] else ""
        skipped = result.get("compressed", [])
        skipped = (f"; {len(skipped)} compressed files not read ({', '.join(skipped[:3])}"
                   f"{', ...' if len(skipped) > 3 else ''})" if skipped else "")
        print(f"published {result['rows']:,} rows from {result['files']} files "
              f"({result['bytes'] / 1e6:.1f} MB){rejects}{widened}{skipped}", file=sys.stderr)
    return signalled.code if signalled else 0


def _check_names(endpoints: list[str]) -> None:
    """Say at once which host names of connecting endpoints do not resolve (ZeroMQ would
    retry them quietly for as long as it is asked to wait)."""
    import socket

    from .endpoints import parse_endpoints

    for ep in parse_endpoints(endpoints, default="connect"):
        scheme, _, rest = ep.address.partition("://")
        if ep.action != "connect" or scheme != "tcp":
            continue
        host = rest.rsplit(":", 1)[0].strip("[]")
        host = host.split(";")[-1]   # "source;host"
        try:
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError) as e:
            print(f"zpandas publish: warning: cannot resolve {host!r} in {ep} ({e}); "
                  "retrying until it does", file=sys.stderr, flush=True)


def _byte_size(text: str) -> float:
    """``20M``, ``512k``, ``1G`` or a plain number of bytes."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (20M, 512k, 1G)")
    return float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def _column_type(text: str) -> tuple[str, pa.DataType]:
    name, sep, kind = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=TYPE, not {text!r}")
    try:
        return name, pa.type_for_alias(kind.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown type {kind!r} (string, int64, float64, "
                                         f"bool, timestamp[ms], date32, ...)") from None


def _subscribe(args) -> int:
    from .parquet import ParquetSink, provenance_of
    from .subscriber import Subscriber

    endpoints = args.endpoint or ["@" + DEFAULT_ENDPOINT]
    stop = _Stop()
    with Subscriber(endpoints, topics=args.topic, policy=args.policy,
                    buffer_bytes=args.buffer_bytes, retain=0, curve=_curve(args),
                    where=args.where, columns=args.columns, since=args.since) as sub:
        print(f"listening on {', '.join(sub.endpoints)} topics={args.topic or 'all'} "
              "(Ctrl-C to stop)", flush=True)
        sink = None
        if args.parquet:
            sink = ParquetSink(args.parquet, roll_bytes=int(args.roll_mb * (1 << 20)),
                               roll_seconds=args.roll_seconds,
                               provenance=lambda: provenance_of(sub.stats()))
        start = next_print = time.monotonic()
        last_rows = taken = 0
        while not stop.event.is_set():
            # Rows are taken as they come (for the sink); the summary prints each second.
            # A signal is seen within the wait (at most a second).
            try:
                df = sub.get(timeout=max(0.0, min(next_print - time.monotonic(), 1.0)))
                taken += len(df)
                if sink is not None:
                    sink.write(df)
            except TimeoutError:
                pass
            if sink is not None:
                sink.poll()
            if time.monotonic() < next_print:
                continue
            next_print += 1.0
            st = sub.stats()
            by_producer = st["producers"].groupby("producer")
            finished = int(by_producer["finished"].any().sum())
            alive = int(by_producer["alive"].any().sum())
            print(f"{time.monotonic() - start:7.1f}s rows={st['rows']:,} "
                  f"(+{st['rows'] - last_rows:,}/s) producers={len(by_producer)} alive={alive} "
                  f"finished={finished} missed_rows={st['missed_rows']:,} "
                  f"dropped_rows={st['dropped_rows']:,} bad={sum(st['bad_frames'].values())}",
                  flush=True)
            last_rows = st["rows"]
            if ((args.producers is not None and finished >= args.producers and not st["queued"])
                    or (args.duration is not None and time.monotonic() - start >= args.duration)):
                break
        if sink is not None:
            # Everything received so far (but rows get() will never see: dropped under
            # policy="drop"), then the last file.
            st = sub.stats()
            received = st["rows"] - st["dropped_rows"]
            while taken < received:
                try:
                    df = sub.get(timeout=2.0)
                except TimeoutError:
                    break
                taken += len(df)
                sink.write(df)
            sink.close()
            print(f"received {received:,} rows; wrote {sink.rows:,} rows to {len(sink.files)} "
                  f"file(s) in {args.parquet}", flush=True)
    return stop.code


def _proxy(args) -> int:
    from .proxy import Proxy

    with Proxy(args.frontend or "@tcp://*:5559", args.backend or "@tcp://*:5560",
               policy=args.policy, buffer_bytes=args.buffer_bytes, curve=_curve(args)) as proxy:
        print(f"proxy: producers connect to {', '.join(proxy.frontend)}, "
              f"subscribers to {', '.join(proxy.backend)}", flush=True)
        while True:
            # A human-facing print interval; Ctrl-C or SIGTERM ends the wait.
            time.sleep(args.interval or 3600)
            if args.interval:
                st = proxy.stats()
                refused = st['frontend']['auth_failures'] + st['backend']['auth_failures']
                print(f"proxy: {st['frontend']['messages_received']:,} messages "
                      f"({st['frontend']['bytes_received'] / 1e6:.1f} MB) in, "
                      f"{st['backend']['messages_sent']:,} out "
                      f"({st['backend']['bytes_sent'] / 1e6:.1f} MB); "
                      f"{st['frontend']['peers']} producer and {st['backend']['peers']} "
                      f"subscriber connections"
                      + (f", {refused} refused" if refused else ""), flush=True)


def _curve_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("CURVE security (make keys with 'zpandas keygen')")
    g.add_argument("--certificate", metavar="FILE", help="this side's secret certificate (NAME.key_secret)")
    g.add_argument("--server-key", metavar="FILE",
                   help="when connecting: the server's public certificate (NAME.key)")
    g.add_argument("--allowed", metavar="DIR",
                   help="when binding: folder of the public certificates of admitted clients")


def _curve(args):
    from .endpoints import Curve

    if not args.certificate:
        if args.server_key or args.allowed:
            raise ValueError("--server-key and --allowed need --certificate (this side's secret key)")
        return None
    return Curve(args.certificate, server_key=args.server_key, allowed=args.allowed)


def _keygen(args) -> int:
    from zmq.auth import create_certificates

    os.makedirs(args.folder, exist_ok=True)
    for name in args.name or ["zpandas"]:
        public, secret = create_certificates(args.folder, name)
        os.chmod(secret, 0o600)
        print(f"wrote {public} (public: give it to peers) and {secret} (secret: keep it here)")
    return 0


def _policy_options(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument("--policy", choices=["block", "drop"], default="block",
                        help=f"when a subscriber is slow: the {who} waits (block, default: "
                             "nothing lost) or drops and counts (drop: never slows down)")
    parser.add_argument("--buffer-bytes", type=int, default=256 << 20, metavar="BYTES",
                        help="memory to queue for a slow peer (default 256 MiB)")


#: Exit codes that mean "stopped by this signal".
_SIGNALLED = {128 + signal.SIGINT: signal.SIGINT, 128 + signal.SIGTERM: signal.SIGTERM}


class _Stop:
    """SIGINT and SIGTERM ask a long-running command to finish what it holds (write it,
    checkpoint it) instead of raising wherever the main thread happens to be; a second
    one ends it at once."""

    def __init__(self, event=None, quiet: bool = False) -> None:
        import threading
        self.event = event or threading.Event()
        self.quiet = quiet
        self.signum: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            self.event.set()
            if not self.quiet:
                print(f"zpandas: {signal.Signals(signum).name}: finishing (again to quit at once)",
                      file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated

    @property
    def code(self) -> int:
        """The exit code: 0, or 128 + the signal that stopped the command."""
        return 0 if self.signum is None else 128 + self.signum


def _end_with(pid: int) -> None:
    """SIGTERM this process when process ``pid`` ends (a pidfd in a thread's poll: no
    ticking; where there is none, a check each second)."""
    import select
    import threading

    def wait_pidfd(fd: int) -> None:
        select.select([fd], [], [])   # readable once the process has ended
        os.close(fd)
        os.kill(os.getpid(), signal.SIGTERM)

    def poll() -> None:
        while _alive(pid):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):   # no pidfds here (or pid already gone: poll says so)
        target, arg = poll, ()
    else:
        target, arg = wait_pidfd, (fd,)
    threading.Thread(target=target, args=arg, daemon=True, name="zpandas-parent-watch").start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM; BaseException so nothing swallows it."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def _demo(args) -> int:
    import glob

    from .aggregate import Aggregation
    from .parquet import provenance_of, to_parquet
    from .plot import LivePlot
    from .subscriber import Subscriber

    os.makedirs(args.out, exist_ok=True)
    if args.data is None:   # made here, so that a plain `pip install zpandas` has a demo
        from ._demodata import write
        data = os.path.join(args.out, "data")
        nodes = write(data)
        print(f"demo data: {len(nodes)} nodes x 2 CSV files of 5,000 rows in {data}")
    else:
        data = args.data
        nodes = sorted(d for d in glob.glob(os.path.join(data, "node*")) if os.path.isdir(d))
        if not nodes:
            raise FileNotFoundError(f"no node*/ folders with CSV files in {data}")
    t0 = time.perf_counter()
    with Subscriber("@tcp://127.0.0.1:*", topics="metrics") as sub:
        address = sub.endpoints[0]
        print(f"subscriber listening on {address}; starting {len(nodes)} producer processes")
        procs = [spawn("publish", "--quiet", os.path.join(node, "*.csv"), "-e", ">" + address,
                       "-t", "metrics", "--name", os.path.basename(node))
                 for node in nodes]
        try:
            df = sub.collect(producers=len(nodes), timeout=120)
        finally:
            codes = [p.wait(timeout=60) for p in procs]
        stats = sub.stats()
    if any(codes):
        raise ZpandasError(f"a producer failed (exit codes {codes})")
    elapsed = time.perf_counter() - t0

    print(f"\ncollected {len(df):,} rows from {len(nodes)} producers in {elapsed:.2f} s "
          f"({stats['bytes'] / 1e6:.1f} MB on the wire, {stats['missed']} messages missed, "
          f"{sum(stats['bad_frames'].values())} bad frames)\n")
    print(stats["producers"][["name", "topic", "messages", "rows", "missed"]].to_string(index=False))

    agg = (df.groupby(["host", "metric"], observed=True)["value"]
             .agg(rows="count", mean="mean", p95=lambda v: v.quantile(0.95), max="max")
             .round(2).reset_index())
    print("\nvalue by host and metric:\n")
    print(agg.to_string(index=False))

    parquet = to_parquet(agg, os.path.join(args.out, "aggregate.parquet"),
                         provenance=provenance_of(stats))
    rows = to_parquet(df, os.path.join(args.out, "rows.parquet"), provenance=provenance_of(stats))

    # The picture a notebook's LivePlot shows: readable time axis, legend beside the lines.
    cpu = Aggregation(by="host", values={"value": "mean"}, window="5min", where="metric == 'cpu_pct'")
    cpu.update(df, final=True)
    png = os.path.abspath(os.path.join(args.out, "cpu_by_host.png"))
    LivePlot(cpu, start=False, title="CPU % by host, 5-minute means (zpandas demo)").to_png(png)
    print(f"\nwrote {parquet}\nwrote {rows}\nwrote {png}")
    return 0
