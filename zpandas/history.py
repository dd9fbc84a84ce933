"""History requests: sans-IO encoding of "the past, please" as a ZeroMQ subscription.

A subscriber asks the producers for rows they published before it joined by subscribing to
a topic that *is* the request::

    b"\\xffzp-history/1/" + JSON {"id", "topic", "since", "until", "where", "columns"}

A SUB socket sends every subscription upstream, an XPUB sees each one (zpandas producers
set ``XPUB_VERBOSER``), and a Proxy forwards them: so a request reaches every producer in
every topology zpandas supports, with no new socket. A producer replies under that same
topic - which only the requester subscribed to - with data messages and, last, one
``HISTORY_END`` message (:data:`zpandas.wire.Kind.HISTORY_END`) saying how it went: rows
sent, or why there are none (``"no history"``: a producer of DataFrames, or one without
``--history``; ``"refused"``: a request it could not take, with the reason). Never a
silent nothing. The requester unsubscribing ends a replay.

The live stream can be filtered at the producers the same way: a subscription to
``b"\xffzp-view/1/" + JSON {"topic", "where", "columns"}`` (a :class:`View`) asks every
producer of ``topic`` to send, under that same topic, the rows of its live stream that
match ``where``, with only ``columns``. The bytes name what is asked, not who asks: every
subscriber asking the same thing subscribes to the same topic, and each producer filters
once and sends one stream that ZeroMQ hands to all of them. A producer that cannot give a
view (a column its rows do not have) says so with a ``HISTORY_END`` of status
``"refused"`` under the view's topic.

Nothing here touches a socket: :func:`encode_request` and :func:`parse_request` turn
requests into subscription bytes and back, :func:`end_table` and :func:`read_end` the
``HISTORY_END`` body. A request is bounded (:data:`MAX_REQUEST_BYTES`) and parsed
strictly: whatever a peer sends is a :class:`RequestError` with a reason, never more.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from .errors import ZpandasError

__all__ = ["PREFIX", "Request", "RequestError", "encode_request", "parse_request", "is_history",
           "CREDIT", "credit_topic", "parse_credit",
           "parse_time", "END_SCHEMA", "end_table", "read_end", "MAX_REQUEST_BYTES",
           "VIEW_PREFIX", "View", "is_view", "parse_view", "topic_name", "select",
           "PROGRESS_SCHEMA", "progress_table", "read_progress"]

#: Every history topic starts so (0xff: no text topic a user picks starts with it).
PREFIX = b"\xffzp-history/"
_VERSIONED = PREFIX + b"1/"
#: The largest request: a subscription message this size travels to every producer.
MAX_REQUEST_BYTES = 8192
_ID = re.compile(r"[0-9a-f]{32}")
_KEYS = {"id", "topic", "since", "until", "where", "columns", "window", "producer"}
#: A requester grants a producer credit for more reply messages with a subscription to
#: ``reply topic + CREDIT + <producer id, hex> + b"/" + <its messages taken so far>``
#: (longer than the reply topic, so it matches no reply): that producer keeps at most
#: ``window`` messages beyond it in flight.
CREDIT = b"\x00credit/"
_MAX_WINDOW = 1024

#: Every live view's topic starts so.
VIEW_PREFIX = b"\xffzp-view/"
_VIEW_VERSIONED = VIEW_PREFIX + b"1/"
_VIEW_KEYS = {"topic", "where", "columns"}

#: The body of a HISTORY_END message: one row.
END_SCHEMA = pa.schema([("status", pa.string()), ("reason", pa.string()), ("rows", pa.int64()),
                        ("files", pa.int64()), ("bytes", pa.int64())])
#: The body of a HISTORY_PROGRESS message: one row. A producer sends one when it knows
#: what it will read (files, and bytes from ``since``'s place to their ends) and then about
#: every :data:`PROGRESS_EVERY` seconds.
PROGRESS_SCHEMA = pa.schema([("files", pa.int64()), ("bytes_total", pa.int64()),
                             ("bytes_done", pa.int64()), ("rows", pa.int64())])
PROGRESS_EVERY = 0.5

#: What a HISTORY_END's ``status`` may say.
STATUSES = ("done", "no history", "refused", "cancelled", "failed")


class RequestError(ZpandasError, ValueError):
    """A history request that cannot be taken: malformed, too large, or asking the impossible."""


@dataclass(frozen=True)
class Request:
    """What a subscriber asks the producers for.

    Attributes
    ----------
    id : str
        32 hex digits, new for every request: its reply topic is its own.
    topic : str
        The live topic the requester follows: producers whose topic it prefix-matches
        (as ZeroMQ matches subscriptions) answer with rows.
    since, until : pandas.Timestamp or None
        Event time, UTC: rows at or after ``since`` and before ``until``.
    where : str or None
        A :mod:`zpandas.where` expression, applied at the producer.
    columns : tuple of str or None
        Only these columns cross the network (plus zpandas' own ``_file``/``_offset``).
    window : int or None
        Reply messages the requester takes ahead of its credit (see :data:`CREDIT`): what
        is in flight is bounded, so a live message never waits behind a replay's backlog.
        None: no flow control.
    producer : str or None
        The id (32 hex digits) of the one producer asked; None: every producer.
    """

    id: str
    topic: str = ""
    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None
    where: str | None = None
    columns: tuple[str, ...] | None = None
    window: int | None = None
    producer: str | None = None

    @classmethod
    def new(cls, *, topic: str = "", since=None, until=None, where: str | None = None,
            columns=None, window: int | None = 32, now: pd.Timestamp | None = None) -> Request:
        """A request with a fresh id; ``since``/``until`` as :func:`parse_time` reads them."""
        since_t, until_t = parse_time(since, now), parse_time(until, now)
        if since_t is not None and until_t is not None and until_t <= since_t:
            raise RequestError(f"until ({until_t}) must be after since ({since_t})")
        if where is not None:
            from .where import parse
            parse(where)   # refused here, before it travels
        if columns is not None:
            columns = (columns,) if isinstance(columns, str) else tuple(columns)
        return cls(uuid.uuid4().hex, topic, since_t, until_t, where, columns, window)

    @property
    def reply_topic(self) -> bytes:
        """The subscription that asks, and the topic every reply is sent under."""
        return encode_request(self)


def parse_time(value, now: pd.Timestamp | None = None) -> pd.Timestamp | None:
    """A point in event time, UTC: ``"1h"``/``"30min"`` (that long before ``now``), an ISO
    time (``"2026-12-06T10:40"``, UTC unless it says otherwise), a datetime or Timestamp
    (naive ones are UTC), or None."""
    if value is None:
        return None
    if isinstance(value, (pd.Timedelta, datetime.timedelta)):
        ago = pd.Timedelta(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*[a-zA-Z]+\s*", value):
        try:
            ago = pd.Timedelta(value)
        except ValueError:
            raise RequestError(f"{value!r} is not a duration (\"30min\", \"1h\") or a time") from None
    else:
        try:
            t = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise RequestError(f"{value!r} is not a duration (\"30min\", \"1h\") or a time") from None
        if t is pd.NaT:
            raise RequestError("a time must not be NaT")
        return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    if ago < pd.Timedelta(0):
        raise RequestError(f"{value!r}: a duration back in time must be positive")
    return (now or pd.Timestamp.now(tz="UTC")) - ago


def encode_request(req: Request) -> bytes:
    """The subscription bytes of ``req`` (without ZeroMQ's leading 0x01)."""
    doc = {"id": req.id, "topic": req.topic,
           "since": None if req.since is None else req.since.value,
           "until": None if req.until is None else req.until.value,
           "where": req.where, "columns": None if req.columns is None else list(req.columns),
           "window": req.window}
    if req.producer is not None:   # (absent otherwise: what producers before it read)
        doc["producer"] = req.producer
    return _dump(_VERSIONED, doc, "request")


def _dump(versioned: bytes, doc: dict, what: str) -> bytes:
    """A subscription's bytes: the prefix and compact JSON (keys sorted: equal asks, equal
    bytes), at most :data:`MAX_REQUEST_BYTES`."""
    out = versioned + json.dumps(doc, separators=(",", ":"), sort_keys=True,
                                 ensure_ascii=False).encode("utf-8")
    if len(out) > MAX_REQUEST_BYTES:
        raise RequestError(f"the {what} is {len(out):,} bytes, more than {MAX_REQUEST_BYTES:,}")
    return out


def is_history(topic: bytes) -> bool:
    """``topic`` is a history request's (or reply's) topic."""
    return bytes(topic[:len(PREFIX)]) == PREFIX


def parse_request(topic: bytes) -> Request:
    """The request a subscription carries.

    Raises
    ------
    RequestError
        Its reason: too large, another version, not JSON, unknown or missing fields,
        values of the wrong kind, an expression outside the ``where=`` language.
    """
    doc = _load(topic, _VERSIONED, _KEYS, "a history request")
    rid = doc.get("id")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise RequestError("the request's id is not 32 hex digits")
    topic_ = doc.get("topic", "")
    if not isinstance(topic_, str):
        raise RequestError("the request's topic is not a string")
    times = []
    for key in ("since", "until"):
        v = doc.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                              or not -(2**63) < v < 2**63):
            raise RequestError(f"the request's {key} is not nanoseconds since 1970 (an int)")
        times.append(None if v is None else pd.Timestamp(v, unit="ns", tz="UTC"))
    where, columns = _where(doc), _columns(doc)
    window = doc.get("window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool)
                               or not 1 <= window <= _MAX_WINDOW):
        raise RequestError(f"the request's window is not a number of messages from 1 to {_MAX_WINDOW}")
    producer = doc.get("producer")
    if producer is not None and (not isinstance(producer, str) or not _ID.fullmatch(producer)):
        raise RequestError("the request's producer is not 32 hex digits")
    return Request(rid, topic_, times[0], times[1], where, columns, window, producer)


def _load(topic: bytes, versioned: bytes, keys: set, what: str) -> dict:
    """The JSON object a request's subscription carries, checked for size, version and keys."""
    if len(topic) > MAX_REQUEST_BYTES:
        raise RequestError(f"the request is {len(topic):,} bytes, more than {MAX_REQUEST_BYTES:,}")
    if not topic.startswith(versioned):
        raise RequestError(f"{what} of another version (this producer reads version 1)")
    try:
        doc = json.loads(topic[len(versioned):].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the request is not JSON") from None
    if not isinstance(doc, dict):
        raise RequestError("the request is not a JSON object")
    unknown = set(doc) - keys
    if unknown:
        raise RequestError(f"unknown request field(s) {sorted(unknown)[:5]}")
    return doc


def _where(doc: dict) -> str | None:
    where = doc.get("where")
    if where is not None:
        if not isinstance(where, str):
            raise RequestError("the request's where is not a string")
        from .where import WhereError, parse
        try:
            parse(where)
        except WhereError as e:
            raise RequestError(str(e)) from None
    return where


def _columns(doc: dict) -> tuple[str, ...] | None:
    columns = doc.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise RequestError("the request's columns are not a list of names")
        columns = tuple(columns)
    return columns


# -- live views -------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """The rows of a live topic that match ``where``, with only ``columns``.

    Attributes
    ----------
    topic : str
        The live topic (a prefix, as ZeroMQ matches subscriptions).
    where : str or None
        A :mod:`zpandas.where` expression.
    columns : tuple of str or None
        The columns to send (zpandas' own ``_file``/``_offset`` come too).
    """

    topic: str = ""
    where: str | None = None
    columns: tuple[str, ...] | None = None

    @classmethod
    def new(cls, topic: str = "", where: str | None = None, columns=None) -> View:
        """A view; ``where`` is parsed here, so a mistake is an error before it travels."""
        if where is not None:
            from .where import parse
            parse(where)
        if columns is not None:
            columns = (columns,) if isinstance(columns, str) else tuple(columns)
            if not all(isinstance(c, str) for c in columns):
                raise TypeError("columns must be names (str)")
        view = cls(topic, where, columns)
        view.subscription   # too large: refused here  # noqa: B018
        return view

    @property
    def subscription(self) -> bytes:
        """The subscription that asks for the view, and the topic its rows come under:
        the same bytes for the same view, from any subscriber."""
        doc = {"topic": self.topic, "where": self.where,
               "columns": None if self.columns is None else list(self.columns)}
        return _dump(_VIEW_VERSIONED, doc, "view")


def is_view(topic: bytes) -> bool:
    """``topic`` is a live view's."""
    return bytes(topic[:len(VIEW_PREFIX)]) == VIEW_PREFIX


def parse_view(topic: bytes) -> View:
    """The view a subscription asks for; :class:`RequestError` with the reason otherwise."""
    doc = _load(topic, _VIEW_VERSIONED, _VIEW_KEYS, "a view")
    base = doc.get("topic", "")
    if not isinstance(base, str):
        raise RequestError("the view's topic is not a string")
    return View(base, _where(doc), _columns(doc))


def topic_name(topic: bytes) -> str:
    """The live topic ``topic`` carries rows of, as text: a view's base topic."""
    if is_view(topic):
        try:
            return parse_view(topic).topic
        except RequestError:
            pass
    return topic.decode("utf-8", "replace")


def select(table: pa.Table, where, columns: tuple[str, ...] | None) -> pa.Table:
    """The rows of ``table`` that match ``where`` (a parsed :class:`zpandas.where.Where`),
    with only ``columns`` and zpandas' own ``_file``/``_offset`` (which say where each row
    came from: what lets a subscriber take each row once).

    Raises
    ------
    ValueError
        A column that ``table`` does not have, with the columns it has.
    """
    if where is not None:
        table = where.filter(table)
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"no column {', '.join(map(repr, missing))}; the columns are "
                             f"{', '.join(c for c in table.column_names if not c.startswith('_'))}")
        own = [c for c in ("_file", "_offset") if c in table.column_names and c not in columns]
        table = table.select([*columns, *own])
    return table


def credit_topic(reply_topic: bytes, producer: bytes, taken: int) -> bytes:
    """The subscription that grants ``producer`` credit: ``taken`` of its reply messages
    were received."""
    return reply_topic + CREDIT + producer.hex().encode() + b"/" + str(taken).encode()


def parse_credit(topic: bytes) -> tuple[bytes, bytes, int] | None:
    """``(reply topic, producer id, messages taken)`` if ``topic`` grants credit, else None."""
    reply, sep, rest = topic.rpartition(CREDIT)
    producer, slash, taken = rest.partition(b"/")
    if not sep or not slash or not taken.isdigit() or len(taken) > 18 or len(producer) != 32:
        return None
    try:
        return reply, bytes.fromhex(producer.decode("ascii")), int(taken)
    except ValueError:
        return None


def end_table(status: str, reason: str = "", *, rows: int = 0, files: int = 0,
              nbytes: int = 0) -> pa.Table:
    """The body of a HISTORY_END message."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    return pa.Table.from_pylist([{"status": status, "reason": reason[:2000], "rows": rows,
                                  "files": files, "bytes": nbytes}], schema=END_SCHEMA)


def read_end(table: pa.Table) -> dict:
    """A HISTORY_END body as a dict; raises ``ValueError`` unless it is exactly one."""
    if table.num_rows != 1 or table.schema.names != END_SCHEMA.names:
        raise ValueError("a history end must be one row of status, reason, rows, files, bytes")
    row = table.cast(END_SCHEMA).to_pylist()[0]
    if row["status"] not in STATUSES:
        raise ValueError(f"unknown history status {row['status']!r}")
    return row


def progress_table(*, files: int, bytes_total: int, bytes_done: int, rows: int) -> pa.Table:
    """The body of a HISTORY_PROGRESS message."""
    return pa.Table.from_pylist([{"files": files, "bytes_total": bytes_total,
                                  "bytes_done": bytes_done, "rows": rows}], schema=PROGRESS_SCHEMA)


def read_progress(table: pa.Table) -> dict:
    """A HISTORY_PROGRESS body as a dict; raises ``ValueError`` unless it is one row of
    counts that are not negative, done no more than the total."""
    if table.num_rows != 1 or table.schema.names != PROGRESS_SCHEMA.names:
        raise ValueError("a history progress must be one row of files, bytes_total, bytes_done, rows")
    row = table.cast(PROGRESS_SCHEMA).to_pylist()[0]
    if any(v is None or v < 0 for v in row.values()) or row["bytes_done"] > row["bytes_total"]:
        raise ValueError(f"a history progress of impossible counts {row}")
    return row
