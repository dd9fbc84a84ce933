"""Line formats: JSON lines, regex (with presets for access logs and syslog), CSV records.

A format turns *records* - ``(raw bytes, line number, byte offset)``, one per line, or
one per multiline record - into an Arrow table and a list of rejects. A record that does
not parse (no regex match, not a JSON object, a value that does not fit its column, bad
UTF-8, too long) becomes a reject with its file, line number, byte offset and reason; it
never ends the stream. The rows keep their record's byte offset in ``_offset``, which is
what lets a subscriber drop rows a restarted producer sends again.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from .csv import unique_names

__all__ = ["Record", "LineFormat", "JsonLines", "Regex", "CsvLines", "PRESETS", "get_format",
           "group_multiline", "join_records", "REJECT_SCHEMA"]

REJECT_SCHEMA = pa.schema([("file", pa.string()), ("line", pa.int64()), ("offset", pa.int64()),
                           ("reason", pa.string()), ("text", pa.string())])
_TEXT_KEPT = 1000  # characters of a rejected line kept in the reject
#: Fields (JSON keys, regex groups) that become timezone-aware datetimes.
TIME_FIELDS = ("time", "timestamp")
#: ``time_format`` meaning: epoch numbers by magnitude, else ISO 8601, else any format
#: pandas recognises.
AUTO = "auto"


@dataclass(frozen=True)
class Record:
    """One record of a file: its bytes (without the final newline), line and offset."""

    raw: bytes
    line: int
    offset: int


class LineFormat:
    """Base of the formats: subclasses implement :meth:`_rows`."""

    name = "lines"
    #: Record boundaries need quote tracking (CSV) rather than plain newlines.
    quoted = False

    def __init__(self, *, max_line_bytes: int = 1 << 20, time_format: str | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.time_format = time_format
        self.schema: pa.Schema | None = None

    def parse(self, records: list[Record], file: str) -> tuple[pa.Table | None, pa.Table]:
        """Parse records; return (rows with an ``_offset`` column or None, rejects)."""
        rejects: list[dict] = []
        good: list[tuple[Record, str]] = []
        for r in records:
            if len(r.raw) > self.max_line_bytes:
                rejects.append(_reject(file, r, f"longer than {self.max_line_bytes} bytes"))
                continue
            try:
                text = r.raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rejects.append(_reject(file, r, f"invalid UTF-8 at byte {e.start}"))
                continue
            good.append((r, text.rstrip("\r")))
        rows, offsets = [], []
        for (r, text) in good:
            try:
                row = self._row(text)
            except ValueError as e:
                rejects.append(_reject(file, r, str(e)))
                continue
            except RecursionError:  # e.g. JSON nested thousands deep
                rejects.append(_reject(file, r, "nested too deeply to parse"))
                continue
            if row is not None:
                rows.append(row)
                offsets.append(r.offset)
        table = self._table(rows, offsets, file, rejects, [r for r, _ in good])
        return table, pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)

    # -- for subclasses -----------------------------------------------------------------

    def _row(self, text: str) -> dict | None:
        raise NotImplementedError

    def _table(self, rows: list[dict], offsets: list[int], file: str, rejects: list[dict],
               records: list[Record]) -> pa.Table | None:
        """Rows to a table with a fixed schema; rows that do not fit become rejects."""
        if not rows:
            return None
        df = pd.DataFrame.from_records(rows)
        df = self._convert(df)
        bad = df.attrs.pop("bad", {})  # row position -> reason, from _convert
        if bad:
            by_offset = {r.offset: r for r in records}
            for i, why in sorted(bad.items()):
                rejects.append(_reject(file, by_offset[offsets[i]], why))
            keep = [i for i in range(len(df)) if i not in bad]
            df = df.iloc[keep].reset_index(drop=True)
            offsets = [offsets[i] for i in keep]
        if not len(df):
            return None
        table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
        table = table.append_column("_offset", pa.array(offsets, pa.int64()))
        return self._conform(table)

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        return df

    def _conform(self, table: pa.Table) -> pa.Table:
        """Fix the schema from the first table; later ones are cast to it (new columns kept)."""
        if self.schema is None:
            self.schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                                     for f in table.schema])
            return table.cast(self.schema)
        known = {f.name: f for f in self.schema}
        cols = []
        for name in table.column_names:
            col = table[name]
            if name in known and not col.type.equals(known[name].type):
                try:
                    col = col.cast(known[name].type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    col = col.cast(pa.string()) if pa.types.is_null(col.type) else col
            cols.append(col)
        return pa.table(cols, names=table.column_names)


class JsonLines(LineFormat):
    """One JSON object per line; ``time`` and ``timestamp`` become UTC datetimes.

    Parameters
    ----------
    timestamp : str, sequence of str or None, default ("time", "timestamp")
        The fields parsed as times (timezone-aware, UTC), with ``time_format`` (a
        strptime format; default: epoch numbers by magnitude, ISO 8601, or any format
        pandas recognises). A value that does not parse makes its line a reject.
    """

    name = "jsonl"

    def __init__(self, *, timestamp: str | tuple[str, ...] | None = TIME_FIELDS, **kw) -> None:
        super().__init__(**kw)
        self.timestamp = (timestamp,) if isinstance(timestamp, str) else tuple(timestamp or ())

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in value.items()}

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        bad: dict[int, str] = {}
        for col in self.timestamp:
            if col in df.columns:
                df = _parse_times(df, col, fmt=self.time_format or AUTO, bad=bad)
        df.attrs["bad"] = bad
        return df


class Regex(LineFormat):
    """Lines matched by a regular expression with named groups, one column per group.

    Parameters
    ----------
    pattern : str
        A regex with named groups, matched against the whole line.
    types : mapping of group to "int", "float" or "str", optional
    timestamp : (group, strptime format), optional
        The group parsed as the row's time; formats with ``%z`` give timezone-aware
        times, others are taken as UTC. ``"ISO8601"`` parses ISO 8601. Default: groups
        named ``time`` or ``timestamp``, with ``time_format`` (default automatic, as for
        JSON lines). ``time_format`` also overrides a preset's format.
    null : str, optional
        A value meaning "missing" (``"-"`` in access logs).
    """

    name = "regex"

    def __init__(self, pattern: str, *, types: Mapping[str, str] | None = None,
                 timestamp: tuple[str, str] | None = None, null: str | None = None,
                 year_less: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.pattern = re.compile(pattern)
        if not self.pattern.groupindex:
            raise ValueError("the pattern needs named groups, e.g. (?P<status>\\d+)")
        self.types = dict(types or {})
        self.timestamp = timestamp
        self.null = null
        self._year_less = year_less

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        m = self.pattern.fullmatch(text)
        if m is None:
            raise ValueError("does not match the pattern")
        return {k: (None if v == self.null else v) for k, v in m.groupdict().items()}

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        bad: dict[int, str] = {}
        for col, kind in self.types.items():
            if col not in df.columns:
                continue
            raw = df[col]
            if kind == "str":
                continue
            num = pd.to_numeric(raw, errors="coerce")
            wrong = num.isna() & raw.notna()
            for i in map(int, wrong.to_numpy().nonzero()[0]):
                bad.setdefault(i, f"{col}={raw.iloc[i]!r} is not {kind}")
            df[col] = num.astype("Int64" if kind == "int" else "Float64")
        if self.timestamp:
            col, fmt = self.timestamp
            if col in df.columns:
                df = _parse_times(df, col, fmt=self.time_format or fmt,
                                  year_less=self._year_less and not self.time_format, bad=bad)
        else:
            for col in TIME_FIELDS:
                if col in df.columns:
                    df = _parse_times(df, col, fmt=self.time_format or AUTO, bad=bad)
        df.attrs["bad"] = {**df.attrs.get("bad", {}), **bad}
        return df


class CsvLines(LineFormat):
    """CSV records of a growing file; the header is the file's first record."""

    name = "csv"
    quoted = True

    def __init__(self, *, delimiter: str = ",", names: list[str] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.delimiter = delimiter
        self.names = names                       # given: no header line is expected
        self.header: dict[str, list[str]] = {}   # file -> column names

    def parse(self, records: list[Record], file: str) -> tuple[pa.Table | None, pa.Table]:
        names = self.names or self.header.get(file)
        if names is None and records:
            first, *records = records
            names = self.header[file] = unique_names(next(csv.reader(
                [first.raw.decode("utf-8-sig", "replace")], delimiter=self.delimiter)))
        self._names = names
        return super().parse(records, file)

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        if text.count('"') % 2:  # csv.reader would take it, quote and all, without a word
            raise ValueError("unclosed quote")
        (fields,) = list(csv.reader(io.StringIO(text), delimiter=self.delimiter)) or [[]]
        if len(fields) != len(self._names):
            raise ValueError(f"{len(fields)} fields, the header has {len(self._names)}")
        return {k: (v if v != "" else None) for k, v in zip(self._names, fields, strict=True)}

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        # Types as pyarrow's CSV reader would infer them, fixed by the first batch.
        bad: dict[int, str] = {}
        for col in df.columns:
            raw = df[col]
            want = None if self.schema is None or col not in self.schema.names else self.schema.field(col).type
            if want is not None and pa.types.is_string(want):
                continue
            if want is None or pa.types.is_integer(want) or pa.types.is_floating(want):
                num = pd.to_numeric(raw, errors="coerce")
                wrong = num.isna() & raw.notna()
                if want is None and wrong.any():
                    continue  # not numeric: stays a string column
                for i in map(int, wrong.to_numpy().nonzero()[0]):
                    bad.setdefault(i, f"{col}={raw.iloc[i]!r} does not fit {want}")
                df[col] = num
            elif pa.types.is_timestamp(want):
                df = _parse_times(df, col, fmt="ISO8601", bad=bad)
        if self.schema is None:
            for col in df.columns:
                if pd.api.types.is_string_dtype(df[col]) and df[col].notna().any():
                    try:
                        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
                    except (ValueError, TypeError):
                        pass
        df.attrs["bad"] = bad
        return df


# -- presets ------------------------------------------------------------------------------

_COMBINED = (r'(?P<remote_addr>\S+) (?P<ident>\S+) (?P<remote_user>\S+) \[(?P<time>[^\]]+)\] '
             r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<body_bytes_sent>\d+|-)'
             r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<user_agent>(?:[^"\\]|\\.)*)")?')
_SYSLOG_3164 = (r'(?:<(?P<pri>\d{1,3})>)?(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) '
                r'(?P<host>\S+) (?P<app>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<message>.*)')
_SYSLOG_5424 = (r'<(?P<pri>\d{1,3})>(?P<version>\d{1,2}) (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) '
                r'(?P<procid>\S+) (?P<msgid>\S+) (?P<structured_data>-|(?:\[(?:[^\]\\]|\\.)*\])+)'
                r'(?: (?P<message>.*))?')

PRESETS = {
    "combined": lambda **kw: Regex(_COMBINED, types={"status": "int", "body_bytes_sent": "int"},
                                   timestamp=("time", "%d/%b/%Y:%H:%M:%S %z"), null="-", **kw),
    "syslog": lambda **kw: Regex(_SYSLOG_3164, types={"pri": "int", "pid": "int"},
                                 timestamp=("time", "%b %d %H:%M:%S"), year_less=True, **kw),
    "syslog5424": lambda **kw: Regex(_SYSLOG_5424, types={"pri": "int", "version": "int"},
                                     timestamp=("time", "ISO8601"), null="-", **kw),
}
PRESETS["nginx"] = PRESETS["apache"] = PRESETS["combined"]
PRESETS["syslog3164"] = PRESETS["syslog"]


def get_format(fmt, *, delimiter: str = ",", max_line_bytes: int = 1 << 20,
               time_format: str | None = None) -> LineFormat:
    """A format from its name (``csv``, ``jsonl``, a preset), a ``regex:<pattern>`` or an instance."""
    if isinstance(fmt, LineFormat):
        return fmt
    kw = {"max_line_bytes": max_line_bytes, "time_format": time_format}
    if fmt == "csv":
        return CsvLines(delimiter=delimiter, **kw)
    if isinstance(fmt, str) and fmt.startswith("csv:"):  # column names given, no header line
        return CsvLines(delimiter=delimiter, names=fmt[4:].split(","), **kw)
    if fmt in ("jsonl", "json", "ndjson"):
        return JsonLines(**kw)
    if fmt in PRESETS:
        return PRESETS[fmt](**kw)
    if isinstance(fmt, str) and fmt.startswith("regex:"):
        return Regex(fmt[len("regex:"):], **kw)
    raise ValueError(f"unknown format {fmt!r}: use csv, csv:<col>,<col>..., jsonl, "
                     f"{', '.join(sorted(PRESETS))}, or regex:<pattern with named groups>")


def group_multiline(records: list[Record], start: re.Pattern) -> tuple[list[Record], list[Record]]:
    """Join continuation lines to the record they continue.

    A line matching ``start`` begins a record; other lines belong to the record before.
    Returns (complete records, the lines of the last record, which may still grow).
    Lines before the first start line form a record of their own.
    """
    out: list[Record] = []
    current: list[Record] = []
    for r in records:
        if current and start.match(r.raw.decode("utf-8", "replace")):
            out.append(join_records(current))
            current = []
        current.append(r)
    return out, current


def join_records(lines: list[Record]) -> Record:
    """One record of several lines: their bytes joined by newlines, the first's position."""
    return Record(b"\n".join(r.raw for r in lines), lines[0].line, lines[0].offset)


def _reject(file: str, r: Record, reason: str) -> dict:
    return {"file": file, "line": r.line, "offset": r.offset, "reason": reason,
            "text": r.raw[:_TEXT_KEPT * 4].decode("utf-8", "replace")[:_TEXT_KEPT]}


def _parse_times(df: pd.DataFrame, col: str, *, fmt: str, year_less: bool = False,
                 bad: dict | None = None) -> pd.DataFrame:
    raw = df[col]
    if pd.api.types.is_datetime64_any_dtype(raw):
        return df
    if fmt == AUTO:
        parsed = _auto_times(raw)
        fmt = "ISO 8601, epoch or another known format"
    elif year_less:
        text = raw.astype("string")  # syslog (RFC 3164) has no year: this year, or last year for a future date
        now = pd.Timestamp.now(tz="UTC")
        text = text.str.replace(r"\s+", " ", regex=True)
        parsed = pd.to_datetime(str(now.year) + " " + text, format="%Y " + fmt, errors="coerce", utc=True)
        future = parsed > now + pd.Timedelta(days=1)
        parsed[future] = parsed[future] - pd.DateOffset(years=1)
    else:
        parsed = pd.to_datetime(raw.astype("string"), format=fmt, errors="coerce", utc=True)
    wrong = parsed.isna() & raw.notna()
    if bad is not None:
        for i in map(int, wrong.to_numpy().nonzero()[0]):
            bad.setdefault(i, f"{col}={raw.iloc[i]!r} is not a time ({fmt})")
    elif wrong.any():
        i = int(wrong.to_numpy().nonzero()[0][0])
        raise ValueError(f"{col}={raw.iloc[i]!r} is not a time")
    return df.assign(**{col: parsed})


def _auto_times(raw: pd.Series) -> pd.Series:
    """Times of any common form, value by value: numbers are epoch times (s, ms, us or ns
    by magnitude), text is ISO 8601 or else whatever pandas recognises; NaT otherwise."""
    nums = pd.to_numeric(raw, errors="coerce")
    is_num = nums.notna().to_numpy()
    parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if is_num.any():
        values = nums.to_numpy(dtype="float64", na_value=np.nan)[is_num]
        a = np.abs(values)
        to_ns = np.select([a < 1e11, a < 1e14, a < 1e17], [10**9, 10**6, 10**3], 1)
        whole = np.floor(values)  # in integers, exact; the fraction apart
        ns = whole.astype(np.int64) * to_ns + np.round((values - whole) * to_ns).astype(np.int64)
        parsed[is_num] = pd.to_datetime(ns, unit="ns", utc=True)
    text = raw[~is_num & raw.notna().to_numpy()].astype("string")
    if len(text):
        times = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        rest = times.isna()
        if rest.any():
            times[rest] = pd.to_datetime(text[rest], format="mixed", errors="coerce", utc=True)
        parsed[text.index] = times
    return parsed
