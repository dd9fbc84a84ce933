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
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from .csv import checked_skiprows, unique_names
from .records import Record, Records, first_bytes, record_ends

__all__ = ["Record", "Records", "LineFormat", "JsonLines", "Regex", "CsvLines", "PRESETS",
           "get_format", "REJECT_SCHEMA"]

REJECT_SCHEMA = pa.schema([("file", pa.string()), ("line", pa.int64()), ("offset", pa.int64()),
                           ("reason", pa.string()), ("text", pa.string())])
_TEXT_KEPT = 1000  # characters of a rejected line kept in the reject
#: Fields (JSON keys, regex groups) that become timezone-aware datetimes.
TIME_FIELDS = ("time", "timestamp")
_MATCHED = "__zpandas_matched"
#: ``time_format`` meaning: epoch numbers by magnitude, else ISO 8601, else any format
#: pandas recognises.
AUTO = "auto"
#: The times of the syslog preset: RFC 3164 (no year: this year, or last year for a time
#: more than a day ahead), with a year after it, or RFC 3339.
SYSLOG = "syslog"


class LineFormat:
    """Base of the formats: subclasses implement :meth:`_row` (one record at a time) and
    may implement :meth:`_columns` (a whole block at once, the fast path)."""

    name = "lines"
    #: Record boundaries need quote tracking (CSV) rather than plain newlines.
    quoted = False

    def __init__(self, *, max_line_bytes: int = 1 << 20, time_format: str | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.time_format = time_format
        self.schema: pa.Schema | None = None
        self._schema_lock = threading.Lock()

    def parse(self, records: Records | list[Record], file: str) -> tuple[pa.Table | None, pa.Table]:
        """Parse records; return (rows with an ``_offset`` column or None, rejects).

        A block is parsed column-wise when it can be (every record valid UTF-8 and short
        enough, and the vectorised parser takes all of it); otherwise record by record,
        which gives each record that does not parse its own reject and reason.
        """
        return self.parse_body(self.begin(records, file), file)

    def begin(self, records: Records | list[Record], file: str, *, key: str | None = None,
              head: bytes = b"") -> Records:
        """What must be seen in file order before blocks are parsed (a CSV header):
        called for each block in order; :meth:`parse_body` may then run on any thread.
        ``key`` names the file incarnation (default: ``file``; a follower's key stays with a
        file through renames), ``head`` is the file's first bytes."""
        return records if isinstance(records, Records) else Records.of(list(records))

    def parse_body(self, records: Records, file: str, *,
                   key: str | None = None) -> tuple[pa.Table | None, pa.Table]:
        """:meth:`parse` after :meth:`begin`; safe to call from several threads."""
        if not len(records):
            return None, REJECT_SCHEMA.empty_table()
        if not (records.lengths() > self.max_line_bytes).any():
            try:
                found = self._columns(records)
            except (pa.ArrowException, ValueError, TypeError, KeyError, OverflowError):
                found = None  # e.g. a value pyarrow cannot type, bad UTF-8: record by record
            if found is not None:
                df, rows, rejects = found
                rejects = [_reject(file, records, i, why) for i, why in rejects]
                table = self._table(df, rows, records, file, rejects)
                return table, _rejects_table(rejects)
        return self._parse_each(records, file)

    def _parse_each(self, records: Records, file: str) -> tuple[pa.Table | None, pa.Table]:
        rejects: list[dict] = []
        rows, index = [], []
        for i, r in enumerate(records):
            if len(r.raw) > self.max_line_bytes:
                rejects.append(_reject(file, records, i, f"longer than {self.max_line_bytes} bytes"))
                continue
            try:
                text = r.raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rejects.append(_reject(file, records, i, f"invalid UTF-8 at byte {e.start} (in another encoding? "
                                       "say which: encoding=, --encoding)"
                                       if records.encoding == "utf-8" else
                                       f"bytes that are not {records.encoding}"))
                continue
            try:
                row = self._row(text.rstrip("\r"))
            except ValueError as e:
                rejects.append(_reject(file, records, i, str(e)))
                continue
            except RecursionError:  # e.g. JSON nested thousands deep
                rejects.append(_reject(file, records, i, "nested too deeply to parse"))
                continue
            if row is not None:
                rows.append(row)
                index.append(i)
        df = pd.DataFrame.from_records(rows) if rows else None
        table = self._table(df, np.array(index, np.int64), records, file, rejects)
        return table, _rejects_table(rejects)

    # -- for subclasses -----------------------------------------------------------------

    def _row(self, text: str) -> dict | None:
        raise NotImplementedError

    def _columns(self, records: Records):
        """The whole block at once: (DataFrame or Arrow table of rows, record index of
        each row, [(record index, reason)] rejects), or None to go record by record.
        ``records.texts()`` gives the records as Arrow text (None if not all UTF-8)."""
        return None

    def _table(self, df: pd.DataFrame | None, rows: np.ndarray, records: Records, file: str,
               rejects: list[dict]) -> pa.Table | None:
        """Rows to a table with a fixed schema; rows that do not fit become rejects.

        ``rows[i]`` is the index in ``records`` of row ``i`` of ``df``.
        """
        if df is None or not len(df):
            return None
        if isinstance(df, pa.Table):  # converted already, in Arrow
            table = df.append_column("_offset", pa.array(records.offsets[rows], pa.int64()))
            return self._conform(table)
        df = self._convert(df.reset_index(drop=True))
        bad = df.attrs.pop("bad", {})  # row position -> reason, from _convert
        if bad:
            for i, why in sorted(bad.items()):
                rejects.append(_reject(file, records, int(rows[i]), why))
            keep = np.ones(len(df), bool)
            keep[list(bad)] = False
            df = df[keep].reset_index(drop=True)
            rows = rows[keep]
        if not len(df):
            return None
        table = pa.Table.from_pandas(_mixed_as_text(df), preserve_index=False).replace_schema_metadata(None)
        table = table.append_column("_offset", pa.array(records.offsets[rows], pa.int64()))
        return self._conform(table)

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        return df

    def _conform(self, table: pa.Table) -> pa.Table:
        """Fix the schema from the first table; later ones are cast to it (new columns kept)."""
        with self._schema_lock:
            if self.schema is None:
                self.schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type)
                                         else f for f in table.schema])
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
    flatten : bool, default True
        Objects inside a line become dotted columns (``{"connections": {"accepted": 8}}``
        gives ``connections.accepted``), as ``pandas.json_normalize`` does; lists stay
        JSON text. False: every nested value stays JSON text.
    """

    name = "jsonl"

    def __init__(self, *, timestamp: str | tuple[str, ...] | None = TIME_FIELDS,
                 flatten: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.timestamp = (timestamp,) if isinstance(timestamp, str) else tuple(timestamp or ())
        self.flatten = flatten
        # Fields read as text: those pyarrow would type as times but are not time
        # fields, and the time fields when a format is given (it decides, not pyarrow).
        self._strings = pa.schema([pa.field(n, pa.string()) for n in self.timestamp]
                                  if self.time_format else [])

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        if self.flatten:
            return _flat(value)
        return {k: _json(v) if isinstance(v, (dict, list)) else v for k, v in value.items()}

    def _columns(self, records: Records):
        # pyarrow's JSON reader takes the block as it is (and checks its UTF-8). It refuses
        # a block with a line that is not an object, repeated keys or a value of another
        # type than the same key's earlier ones: record by record then. Objects come as
        # structs (with the keys of every row in the block): flattened into dotted
        # columns, lists as JSON text (_nested).
        lo, hi = int(records.bounds[0]), int(records.bounds[-1])
        while True:
            table = pajson.read_json(
                io.BytesIO(memoryview(records.data)[lo:hi]),
                read_options=pajson.ReadOptions(use_threads=False, block_size=max(hi - lo + 1, 1 << 16)),
                parse_options=pajson.ParseOptions(explicit_schema=self._strings,
                                                  unexpected_field_behavior="infer"))
            # pyarrow types text that looks like a time as a timestamp: only the time
            # fields convert (as docs/files.md says); others are read again as text.
            stray = [f.name for f in table.schema
                     if pa.types.is_timestamp(f.type) and f.name not in self.timestamp]
            if not stray:
                break
            self._strings = pa.schema([*self._strings, *[pa.field(n, pa.string()) for n in stray]])
        if any(pa.types.is_dictionary(t) for t in table.schema.types):
            return None
        table = _nested(table, self.flatten)
        # A row per line that is not empty - unless some are only whitespace (or "\r"),
        # which pyarrow skips too: then the rows are fewer, and each line is looked at.
        rows = np.flatnonzero(records.lengths() > 0)
        if table.num_rows != len(rows):
            texts = records.texts()
            if texts is None:
                return None
            rows = np.flatnonzero(~_blank(texts))
            if table.num_rows != len(rows):
                return None
        arrow = self._times_in_arrow(table)
        if arrow is not None:
            return arrow, rows, []
        # pyarrow's times are naive, in UTC (from text with Z, or without a zone: taken as
        # UTC, as pandas does); _parse_times makes them aware.
        return table.to_pandas(), rows, []

    def _times_in_arrow(self, table: pa.Table) -> pa.Table | None:
        """The table with its time fields as UTC nanoseconds, all in Arrow (no round trip
        through pandas for the other columns: most of a small block's cost); None when a
        time field needs pandas (a given format, text Arrow's ISO 8601 parser refuses)."""
        if self.time_format:
            return None
        utc = pa.timestamp("ns", "UTC")
        for col in self.timestamp:
            if col not in table.column_names:
                continue
            values = table[col]
            if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
                nums = values.to_numpy().astype(np.float64)   # nulls are NaN
                missing = np.isnan(nums)
                ns = pa.array(_epoch_ns(np.where(missing, 0, nums)), pa.int64(), mask=missing)
                table = table.set_column(table.column_names.index(col), col, ns.cast(utc))
                continue
            if not (pa.types.is_timestamp(values.type) or pa.types.is_string(values.type)
                    or pa.types.is_null(values.type)):
                return None
            try:  # naive pyarrow times are UTC; text needs a zone (Z or an offset)
                table = table.set_column(table.column_names.index(col), col, values.cast(utc))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None
        return table

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
    trim : sequence of str, optional
        Groups whose trailing blanks are dropped (a greedy ``.*`` group then a trim is
        faster than a lazy ``.*?`` followed by blanks).
    """

    name = "regex"

    def __init__(self, pattern: str, *, types: Mapping[str, str] | None = None,
                 timestamp: tuple[str, str] | None = None, null: str | None = None,
                 trim: Sequence[str] = (), **kw) -> None:
        super().__init__(**kw)
        self.pattern = re.compile(pattern)
        if not self.pattern.groupindex:
            raise ValueError("the pattern needs named groups, e.g. (?P<status>\\d+)")
        self.types = dict(types or {})
        self.timestamp = timestamp
        self.null = null
        self.trim = frozenset(trim)
        # Anchored as fullmatch; None once the vectorised engine has refused it.
        self._vector: str | None = f"^(?:{pattern})(?P<{_MATCHED}>)$"

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        m = self.pattern.fullmatch(text)
        if m is None:
            raise ValueError("does not match the pattern")
        return {k: (None if v == self.null else v.rstrip() if k in self.trim and v else v)
                for k, v in m.groupdict().items()}

    def _columns(self, records: Records):
        # Rust's regex engine through polars, which takes a whole column at once (about
        # 2x RE2's capture speed through pyarrow with more than 4 groups, and 6x
        # Python's re: bench/bench_lines.py). Patterns it cannot take (look-around,
        # back-references) go line by line through Python's re.
        texts = records.texts()
        if self._vector is None or texts is None:
            return None
        import polars as pl
        try:
            found = pl.from_arrow(texts).str.extract_groups(self._vector).struct.unnest()
        except pl.exceptions.PolarsError:
            self._vector = None
            return None
        # The last (empty) group is there only to tell "matched" from "no group matched".
        matched = found.get_column(_MATCHED).is_not_null().to_numpy()
        blank = _blank(texts)
        rejects = [(int(i), "does not match the pattern") for i in np.flatnonzero(~matched & ~blank)]
        keep = matched & ~blank
        cols = [pl.col(n).str.strip_chars_end() if n in self.trim else pl.col(n)
                for n in self.pattern.groupindex]
        if self.null is not None:
            cols = [pl.when(c == self.null).then(None).otherwise(c).alias(n)
                    for c, n in zip(cols, self.pattern.groupindex)]
        rows = found.filter(pl.Series(keep)).select(cols)
        converted = self._convert_polars(rows)
        if converted is not None:
            return converted, np.flatnonzero(keep), rejects
        return rows.to_arrow().to_pandas(), np.flatnonzero(keep), rejects

    def _convert_polars(self, rows) -> pa.Table | None:
        """Numbers and a strptime-format time converted by polars, as an Arrow table; None
        (pandas converts, and makes lines with values that do not fit rejects, with
        their reasons) when a value does not convert or the time needs pandas' parser."""
        import polars as pl

        exprs = []
        for col, kind in self.types.items():
            if col in rows.columns and kind in ("int", "float"):
                exprs.append(pl.col(col).cast(pl.Int64 if kind == "int" else pl.Float64, strict=False))
        times = []
        if self.timestamp and self.timestamp[0] in rows.columns:
            col, fmt = self.timestamp
            fmt = self.time_format or fmt
            if fmt == SYSLOG:
                if rows.get_column(col).str.contains(r"^\d").any():
                    return None   # RFC 3339 times among them: pandas' ISO 8601 parser
                exprs.append(_pl_rfc3164(col))
            elif "%" not in fmt or _lacks_year(fmt):  # ISO8601, AUTO, no year: pandas
                return None
            else:
                exprs.append(pl.col(col).str.to_datetime(fmt, time_unit="ns", strict=False))
            times.append(col)
        elif not self.timestamp and any(c in rows.columns for c in TIME_FIELDS):
            return None  # any format, value by value: pandas
        out = rows.with_columns(exprs)
        for e in exprs:
            name = e.meta.output_name()
            if (out.get_column(name).is_null() & rows.get_column(name).is_not_null()).any():
                return None
        for col in times:
            t = out.get_column(col)
            t = t.dt.replace_time_zone("UTC") if t.dtype.time_zone is None else t.dt.convert_time_zone("UTC")
            out = out.with_columns(t.alias(col))
        return out.to_arrow()

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        bad: dict[int, str] = {}
        for col, kind in self.types.items():
            if col not in df.columns:
                continue
            raw = df[col]
            if kind == "str":
                continue
            num, wrong = _numeric(raw)
            for i in map(int, wrong.nonzero()[0]):
                bad.setdefault(i, f"{col}={raw.iloc[i]!r} is not {kind}")
            df[col] = num.astype("Int64" if kind == "int" else "Float64")
        if self.timestamp:
            col, fmt = self.timestamp
            if col in df.columns:
                df = _parse_times(df, col, fmt=self.time_format or fmt, bad=bad)
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

    def __init__(self, *, delimiter: str = ",", names: list[str] | None = None,
                 skiprows: int = 0, **kw) -> None:
        super().__init__(**kw)
        if checked_skiprows(skiprows) and names:
            raise ValueError("skiprows skips the lines before a header: not with column names given")
        self.delimiter = delimiter
        self.names = names                       # given: no header line is expected
        self.skiprows = skiprows                 # lines before the header (a preamble)
        self.header: dict[str, list[str]] = {}   # file incarnation -> column names
        self._preamble: dict[str, int] = {}      # file incarnation -> preamble lines still to skip
        self._local = threading.local()          # the names of the file being parsed

    def begin(self, records: Records | list[Record], file: str, *, key: str | None = None,
              head: bytes = b"") -> Records:
        records = super().begin(records, file)
        key = key or file
        if self.names or key in self.header or not len(records):
            return records
        # Records from past the header (a restart resumed there, the rest of a file read
        # before it was renamed): the header is in the file's head.
        at, end = header_bounds(head, self.skiprows) if head else (0, 0)
        if head and not end and int(records.offsets[0]) >= len(head):
            # Resumed past a head too short to hold the header (a wide file's): the file's
            # own first bytes, as far as a header may reach.
            head = first_bytes(file, HEADER_PROBE) or head
            at, end = header_bounds(head, self.skiprows)
        if end and int(records.offsets[0]) >= end:
            self.header[key] = self._names_of(head[at:end])
            return records
        # Else it is among these records, after the preamble (``skiprows``: where the head
        # says it ends, else counted here) and empty lines, skipped as pandas skips them.
        if end:
            records = records[int(np.searchsorted(records.offsets, at)):]
        else:
            left = self._preamble.get(key, self.skiprows)
            self._preamble[key] = left - min(left, len(records))
            records = records[min(left, len(records)):]
        first = next((i for i in range(len(records)) if records.raw(i).strip(b"\r\n")), None)
        if first is None:
            return records[len(records):]
        self.header[key] = self._names_of(records.raw(first))
        return records[first + 1:]

    def _names_of(self, record: bytes) -> list[str]:
        text = record.decode("utf-8-sig", "replace").rstrip("\r\n")
        return unique_names(next(csv.reader([text], delimiter=self.delimiter)))

    def parse_body(self, records: Records, file: str, *,
                   key: str | None = None) -> tuple[pa.Table | None, pa.Table]:
        self._local.names = self.names or self.header.get(key or file)
        return super().parse_body(records, file)

    @property
    def _names(self) -> list[str]:
        return self._local.names

    def _columns(self, records: Records):
        # pyarrow's CSV reader over the block, every column as text (typed below as in
        # the record-by-record path). Records with fewer fields than the header are read
        # again with the missing ones added, empty; one with an odd number of quotes or
        # more fields: record by record, for its reason.
        lo, hi = int(records.bounds[0]), int(records.bounds[-1])
        quotes = np.flatnonzero(np.frombuffer(records.data, np.uint8)[lo:hi] == 34) + lo
        if (np.diff(np.searchsorted(quotes, records.bounds)) % 2).any():
            return None
        texts = records.texts()
        if texts is None:
            return None
        blank = _blank(texts)
        data = memoryview(records.data)[lo:hi]
        if not len(quotes):   # a field per delimiter, and one: the short rows are known now
            data = _padded(records, blank, *_short_rows(records, blank, self.delimiter,
                                                        len(self._names)), self.delimiter)
        table, short = (None, []) if data is None else self._read(data)
        if short:   # (told by Arrow, one call each: quoted fields may hold delimiters)
            rows = np.flatnonzero(~blank)
            numbers, missing = (np.array(x, np.int64) for x in zip(*short))
            data = None if numbers.max() > len(rows) else \
                _padded(records, blank, rows[numbers - 1], missing, self.delimiter)
            table, short = (None, []) if data is None else self._read(data)
        if short or table is None or table.num_rows != int((~blank).sum()):
            return None
        typed = self._typed(table)
        return (table.to_pandas() if typed is None else typed), np.flatnonzero(~blank), []

    def _read(self, data) -> tuple[pa.Table | None, list[tuple[int, int]]]:
        """Text columns of the records in ``data``, and its rows with fewer fields than
        the header as (row number, fields missing); None as the table if one has more."""
        invalid = []
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=self._names, use_threads=False,
                                           block_size=max(len(data) + 1, 1 << 16)),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True,
                                             invalid_row_handler=lambda row: invalid.append(row) or "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in self._names}, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=True))
        short = [(r.number, r.expected_columns - r.actual_columns) for r in invalid]
        if any(n is None or n < 1 or missing <= 0 for n, missing in short):
            return None, short
        return table, short

    def _typed(self, table: pa.Table) -> pa.Table | None:
        """The text columns cast to the types fixed before, in Arrow (no Python per value,
        and the interpreter's lock released: a replay's parsing leaves the live stream's
        threads alone); None where only the record-wise typing can say (the first block,
        a new column, times, a value that does not fit: rejects)."""
        schema = self.schema
        if schema is None or not all(n in schema.names for n in table.column_names):
            return None
        types = [schema.field(n).type for n in table.column_names]
        if not all(t in _ARROW_CASTS or _is_utc_time(t) for t in types):
            return None
        try:   # (times in ns, as the record-wise path gives them: _conform casts both)
            return pa.table([_iso_times(table[n]) if _is_utc_time(t) else table[n].cast(t)
                             for n, t in zip(table.column_names, types)], names=table.column_names)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return None

    def _row(self, text: str) -> dict | None:
        if not text.strip():
            return None
        if text.count('"') % 2:  # csv.reader would take it, quote and all, without a word
            raise ValueError("unclosed quote")
        (fields,) = list(csv.reader(io.StringIO(text), delimiter=self.delimiter)) or [[]]
        if len(fields) > len(self._names):
            raise ValueError(f"{len(fields)} fields, the header has {len(self._names)}")
        # Fewer: the missing ones are empty, as pandas reads them (a spreadsheet's export
        # leaves out a row's empty fields at its end).
        fields += [""] * (len(self._names) - len(fields))
        return {k: (v if v != "" else None) for k, v in zip(self._names, fields, strict=True)}

    def _convert(self, df: pd.DataFrame) -> pd.DataFrame:
        # Types as pyarrow's CSV reader would infer them, fixed by the first batch.
        bad: dict[int, str] = {}
        for col in df.columns:
            raw = df[col]
            want = None if self.schema is None or col not in self.schema.names else self.schema.field(col).type
            if want is not None and pa.types.is_string(want):
                continue
            if want is None and _some_not_numbers(raw):
                continue  # not numeric: stays a string column
            if want is None or pa.types.is_integer(want) or pa.types.is_floating(want):
                num, wrong = _numeric(raw)
                if want is None and wrong.any():
                    continue  # not numeric: stays a string column
                for i in map(int, wrong.nonzero()[0]):
                    bad.setdefault(i, f"{col}={raw.iloc[i]!r} does not fit {want}")
                df[col] = num
            elif pa.types.is_timestamp(want):
                df = _parse_times(df, col, fmt="ISO8601", bad=bad)
        if self.schema is None:
            for col in df.columns:
                if pd.api.types.is_string_dtype(df[col]) and df[col].notna().any():
                    try:
                        df[col] = _ns(pd.to_datetime(df[col], utc=True, format="ISO8601"))
                    except (ValueError, TypeError):
                        pass
        df.attrs["bad"] = bad
        return df


#: Bytes of a file's start read to find its header when the follower's head (1 KiB) does
#: not hold it: a header (and preamble) longer than this is not found after a restart.
HEADER_PROBE = 1 << 20


def header_bounds(head: bytes, skiprows: int = 0) -> tuple[int, int]:
    """Where a CSV file's header record starts and ends in its first bytes ``head``, past
    ``skiprows`` records (a preamble) and the empty lines after them; (start, 0) if it does
    not end in ``head``."""
    start = 0
    if skiprows:
        ends = record_ends(head, quoted=True)
        if len(ends) < skiprows:
            return len(head), 0
        start = int(ends[skiprows - 1])
    start = len(head) - len(head[start:].lstrip(b"\r\n"))
    ends = record_ends(head[start:], quoted=True)
    return start, (start + int(ends[0]) if len(ends) else 0)


# -- presets ------------------------------------------------------------------------------

_COMBINED = (r'(?P<remote_addr>\S+) (?P<ident>\S+) (?P<remote_user>\S+) \[(?P<time>[^\]]+)\] '
             r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<body_bytes_sent>\d+|-)'
             r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<user_agent>(?:[^"\\]|\\.)*)")?')
# RFC 3164 read loosely, as syslog_loose (Vector) and Fluent Bit read it: a time (RFC
# 3164 with one or two spaces, a year after it or not, fractions of seconds; or RFC
# 3339), a host, then - when there is one - a tag of one or two words (``Microsoft
# Word[14463]:``, ``syslogd 1.4.1:``) with a pid, and whatever a daemon puts between it
# and the colon (macOS's ``sandboxd[129] ([31211]):``);
# the rest is the message. Only a line without a time and a host is a reject. No
# look-around: the whole block goes through polars' regex engine.
_SYSLOG_3164 = (r'(?:<(?P<pri>\d{1,3})>)?'
                r'(?P<time>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?'
                r'|[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:[.,]\d+)?(?: \d{4})?) +(?P<host>\S+)'
                r'(?: +(?P<app>[^\s\[:]+(?: [^\s\[:]+)?)(?:\[(?P<pid>\d+)\])?(?: (?:\([^)]*\)|[^\s:]+))?:(?: |$))?'
                r' *(?P<message>.*)')
_SYSLOG_5424 = (r'<(?P<pri>\d{1,3})>(?P<version>\d{1,2}) (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) '
                r'(?P<procid>\S+) (?P<msgid>\S+) (?P<structured_data>-|(?:\[(?:[^\]\\]|\\.)*\])+)'
                r'(?: (?P<message>.*))?')

PRESETS = {
    "combined": lambda **kw: Regex(_COMBINED, types={"status": "int", "body_bytes_sent": "int"},
                                   timestamp=("time", "%d/%b/%Y:%H:%M:%S %z"), null="-", **kw),
    "syslog": lambda **kw: Regex(_SYSLOG_3164, types={"pri": "int", "pid": "int"},
                                 timestamp=("time", SYSLOG), trim=("message",), **kw),
    "syslog5424": lambda **kw: Regex(_SYSLOG_5424, types={"pri": "int", "version": "int"},
                                     timestamp=("time", "ISO8601"), null="-", **kw),
}
PRESETS["nginx"] = PRESETS["apache"] = PRESETS["combined"]
PRESETS["syslog3164"] = PRESETS["syslog"]


def get_format(fmt, *, delimiter: str = ",", max_line_bytes: int = 1 << 20,
               time_format: str | None = None, flatten: bool = True,
               skiprows: int = 0) -> LineFormat:
    """A format from its name (``csv``, ``jsonl``, a preset), a ``regex:<pattern>`` or an instance."""
    if isinstance(fmt, LineFormat):
        return fmt
    if skiprows and fmt != "csv":
        raise ValueError(f"skiprows skips the lines before a CSV header: not for format {fmt!r}")
    kw = {"max_line_bytes": max_line_bytes, "time_format": time_format}
    if fmt == "csv":
        return CsvLines(delimiter=delimiter, skiprows=skiprows, **kw)
    if isinstance(fmt, str) and fmt.startswith("csv:"):  # column names given, no header line
        return CsvLines(delimiter=delimiter, names=fmt[4:].split(","), **kw)
    if fmt in ("jsonl", "json", "ndjson"):
        return JsonLines(flatten=flatten, **kw)
    if fmt in PRESETS:
        return PRESETS[fmt](**kw)
    if isinstance(fmt, str) and fmt.startswith("regex:"):
        return Regex(fmt[len("regex:"):], **kw)
    raise ValueError(f"unknown format {fmt!r}: use csv, csv:<col>,<col>..., jsonl, "
                     f"{', '.join(sorted(PRESETS))}, or regex:<pattern with named groups>")


def _json(value) -> str:
    """JSON text of a nested value, compact, as polars writes it on the fast path."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _flat(value: dict, prefix: str = "", out: dict | None = None) -> dict:
    """``{"a": {"b": 1}, "c": [1]}`` -> ``{"a.b": 1, "c": "[1]"}``."""
    out = {} if out is None else out
    for k, v in value.items():
        if isinstance(v, dict):
            _flat(v, f"{prefix}{k}.", out)
        else:
            out[prefix + k] = _json(v) if isinstance(v, list) else v
    return out


def _nested(table: pa.Table, flatten: bool) -> pa.Table:
    """Struct columns as dotted columns (``flatten``) or JSON text; lists as JSON text."""
    if flatten:
        while any(pa.types.is_struct(t) for t in table.schema.types):
            table = table.flatten()   # one level: "a.b"
    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            table = table.set_column(i, f.name, _json_column(table.column(i)))
    return table


def _json_column(col: pa.ChunkedArray) -> pa.Array:
    """A nested column as compact JSON text, at vector speed (polars' encoder)."""
    import polars as pl
    wrapped = pl.from_arrow(pa.table({"v": col})).select(pl.struct("v").struct.json_encode())
    text = wrapped.to_series().str.slice(5, None).str.head(-1)   # '{"v":' ... '}'
    return pc.if_else(pc.is_null(col), pa.scalar(None, pa.string()), text.to_arrow().cast(pa.string()))


def _reject(file: str, records: Records, i: int, reason: str) -> dict:
    raw = records.raw(i)
    return {"file": file, "line": int(records.lines[i]), "offset": int(records.offsets[i]),
            "reason": reason, "text": raw[:_TEXT_KEPT * 4].decode("utf-8", "replace")[:_TEXT_KEPT]}


def _rejects_table(rejects: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA) if rejects else _NO_REJECTS


_NO_REJECTS = REJECT_SCHEMA.empty_table()


def _short_rows(records: Records, blank: np.ndarray, delimiter: str,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """Records (not blank) with fewer than ``width`` fields and how many they lack, in a
    block without quotes."""
    lo, hi = int(records.bounds[0]), int(records.bounds[-1])
    at = np.flatnonzero(np.frombuffer(records.data, np.uint8)[lo:hi] == ord(delimiter)) + lo
    fields = np.diff(np.searchsorted(at, records.bounds)) + 1
    missing = np.where(blank, 0, width - fields)
    rows = np.flatnonzero(missing > 0)
    return rows, missing[rows]


def _padded(records: Records, blank: np.ndarray, rows: np.ndarray, missing: np.ndarray,
            delimiter: str) -> memoryview | bytes | None:
    """The block's bytes with ``missing`` delimiters added at the end of record ``rows``;
    None where a blank record is more than a line end (Arrow reads it as a row: its row
    numbers are not ours)."""
    data = np.frombuffer(records.data, np.uint8)
    lo, hi = int(records.bounds[0]), int(records.bounds[-1])
    if not len(rows):
        return memoryview(records.data)[lo:hi]
    lengths, empty = records.lengths(), np.flatnonzero(blank)
    if not ((lengths[empty] == 0) | ((lengths[empty] == 1) & (data[records.bounds[empty]] == 13))).all():
        return None
    at = records.bounds[rows] + lengths[rows]   # before the newline
    at -= data[at - 1] == 13                    # (and before a CRLF's CR)
    return np.insert(data[lo:hi], np.repeat(at - lo, missing), ord(delimiter)).tobytes()


def _blank(texts: pa.Array) -> np.ndarray:
    """Records that are empty or only whitespace (skipped, as empty lines are)."""
    empty = pc.equal(pc.utf8_length(texts), 0)
    space = pc.utf8_is_space(texts)
    return pc.or_(empty, space).to_numpy(zero_copy_only=False)


def _parse_times(df: pd.DataFrame, col: str, *, fmt: str, bad: dict | None = None) -> pd.DataFrame:
    raw = df[col]
    if pd.api.types.is_datetime64_any_dtype(raw):
        return df.assign(**{col: _ns(raw if raw.dt.tz is not None else raw.dt.tz_localize("UTC"))})
    if fmt == AUTO:
        parsed = _auto_times(raw)
        fmt = "ISO 8601, epoch or another known format"
    elif fmt == SYSLOG:
        parsed = _syslog_times(raw)
        fmt = "RFC 3164 or RFC 3339"
    elif _lacks_year(fmt):
        parsed = _this_year(raw.astype("string"), fmt)
    else:
        parsed = pd.to_datetime(raw.astype("string"), format=fmt, errors="coerce", utc=True)
    wrong = parsed.isna() & raw.notna()
    if bad is not None:
        for i in map(int, wrong.to_numpy().nonzero()[0]):
            bad.setdefault(i, f"{col}={raw.iloc[i]!r} is not a time ({fmt})")
    elif wrong.any():
        i = int(wrong.to_numpy().nonzero()[0][0])
        raise ValueError(f"{col}={raw.iloc[i]!r} is not a time")
    return df.assign(**{col: _ns(parsed)})


def _pl_rfc3164(col: str):
    """A polars expression: RFC 3164 times (one or two spaces, a year after them or
    this year - last year for a time more than a day ahead -, fractions of seconds)."""
    import polars as pl
    text = pl.col(col).str.replace_all(r"\s+", " ")
    now = pd.Timestamp.now(tz="UTC")
    year = text.str.extract(r" (\d{4})$", 1)
    stamp = (pl.coalesce(year, pl.lit(str(now.year))) + " " + text.str.replace(r" \d{4}$", "")) \
        .str.to_datetime("%Y %b %d %H:%M:%S%.f", time_unit="ns", strict=False)
    ahead = year.is_null() & (stamp > now.tz_localize(None) + pd.Timedelta(days=1))
    return pl.when(ahead).then(stamp.dt.offset_by("-1y")).otherwise(stamp).alias(col)


def _lacks_year(fmt: str) -> bool:
    """A strptime format without a year (``%b %d %H:%M:%S``, ``%m-%d %H:%M:%S.%f``)."""
    return "%" in fmt and not any(d in fmt for d in ("%Y", "%y", "%G", "%s", "%c", "%x"))


def _this_year(text: pd.Series, fmt: str) -> pd.Series:
    """Times without a year: this year, or last year for a time more than a day ahead
    (a log read just after New Year)."""
    now = pd.Timestamp.now(tz="UTC")
    parsed = pd.to_datetime(str(now.year) + " " + text.str.replace(r"\s+", " ", regex=True),
                            format="%Y " + " ".join(fmt.split()), errors="coerce", utc=True)
    future = parsed > now + pd.Timedelta(days=1)
    parsed[future] = parsed[future] - pd.DateOffset(years=1)
    return parsed


def _syslog_times(raw: pd.Series) -> pd.Series:
    """RFC 3339 times, and RFC 3164 ones with or without a year after them and
    fractions of seconds (``Jun  4 15:16:01``, ``Jun 4 15:16:01.250 2026``)."""
    text = raw.astype("string").str.replace(r"\s+", " ", regex=True).str.replace(",", ".", regex=False)
    parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    iso = text.str.match(r"\d{4}-").fillna(False).to_numpy(bool)
    if iso.any():
        parsed[iso] = pd.to_datetime(text[iso], format="ISO8601", errors="coerce", utc=True)
    year = text.str.extract(r" (\d{4})$", expand=False)
    clock = text.str.replace(r" \d{4}$", "", regex=True)
    for has_year in (True, False):
        for frac in (True, False):
            mask = (~iso & (year.notna() == has_year).to_numpy(bool)
                    & (clock.str.contains(".", regex=False) == frac).fillna(False).to_numpy(bool))
            if not mask.any():
                continue
            fmt = "%b %d %H:%M:%S" + (".%f" if frac else "")
            parsed[mask] = (pd.to_datetime(year[mask] + " " + clock[mask], format="%Y " + fmt,
                                           errors="coerce", utc=True)
                            if has_year else _this_year(clock[mask], fmt))
    return parsed


def _ns(times: pd.Series) -> pd.Series:
    """Nanoseconds, whatever parsed them (pandas' parsers and pyarrow's pick other units),
    so that blocks of a stream agree; times outside 1677-2262 keep the unit they have."""
    try:
        return times.dt.as_unit("ns")
    except (ValueError, OverflowError):
        return times


def _mixed_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Columns whose values have several types (``1`` on a line, ``"x"`` on the next) as
    text, as JSON writes them: Arrow needs one type per column."""
    for col in df.columns:
        if df[col].dtype == object:
            try:
                pa.array(df[col], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                df[col] = [None if v is None or v is pd.NA or (isinstance(v, float) and v != v)
                           else v if isinstance(v, str) else json.dumps(v) for v in df[col]]
    return df


#: Types a CSV column's text is cast to in Arrow as the record-wise typing would give it
#: (pandas 3 gives its text columns as large_string).
_ARROW_CASTS = {pa.string(), pa.large_string(), pa.int64(), pa.float64()}
_UTC_NS = pa.timestamp("ns", "UTC")


def _is_utc_time(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) and t.tz == "UTC"


def _iso_times(text: pa.ChunkedArray) -> pa.Array:
    """A time column's text parsed as the record-wise typing parses it (pandas' ISO 8601
    parser, in C); ValueError if a value is not a time (that path then makes it a reject)."""
    raw = text.to_pandas()
    parsed = _parse_times(pd.DataFrame({"t": raw}), "t", fmt="ISO8601")["t"]
    return pa.array(parsed, type=_UTC_NS, from_pandas=True)


def _numeric(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numbers from text, as ``pd.to_numeric(errors="coerce")``; and which values that
    are not missing are not numbers."""
    if not pd.api.types.is_numeric_dtype(raw):
        try:  # the common case, whole, in Arrow's C++ (pandas' to_numeric on text loops in Python)
            arr = pa.array(raw, type=pa.string(), from_pandas=True)
            for kind in (pa.int64(), pa.float64()):
                try:
                    return pd.Series(arr.cast(kind).to_pandas(), index=raw.index), np.zeros(len(raw), bool)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass
        except (pa.ArrowException, TypeError, ValueError):
            pass
    num = pd.to_numeric(raw, errors="coerce")
    return num, (num.isna() & raw.notna()).to_numpy()


def _some_not_numbers(raw: pd.Series) -> bool:
    """Whether a value that is not missing is not a number to ``pd.to_numeric`` - judged
    on the distinct values (a text column of hosts or paths has few; ``to_numeric`` on
    text loops in Python, value by value)."""
    if pd.api.types.is_numeric_dtype(raw):
        return False
    try:
        distinct = pc.unique(pa.array(raw, type=pa.string(), from_pandas=True)).drop_null()
    except (pa.ArrowException, TypeError, ValueError):
        distinct = raw.dropna().unique()
    values = pd.Series(distinct.to_pylist() if isinstance(distinct, pa.Array) else distinct, dtype=object)
    return bool(pd.to_numeric(values, errors="coerce").isna().any())


def _epoch_ns(values: np.ndarray) -> np.ndarray:
    """Epoch times in s, ms, us or ns (by magnitude) -> int64 nanoseconds."""
    a = np.abs(values)
    to_ns = np.select([a < 1e11, a < 1e14, a < 1e17], [10**9, 10**6, 10**3], 1)
    whole = np.floor(values)  # in integers, exact; the fraction apart
    return whole.astype(np.int64) * to_ns + np.round((values - whole) * to_ns).astype(np.int64)


def _auto_times(raw: pd.Series) -> pd.Series:
    """Times of any common form, value by value: numbers are epoch times (s, ms, us or ns
    by magnitude), text is ISO 8601 or else whatever pandas recognises; NaT otherwise."""
    if not pd.api.types.is_numeric_dtype(raw):
        try:  # the common case, whole: ISO 8601 text (pandas' parser, in C)
            return pd.to_datetime(raw, format="ISO8601", utc=True)
        except (ValueError, TypeError, OverflowError):
            pass
    nums = pd.to_numeric(raw, errors="coerce")
    is_num = nums.notna().to_numpy()
    parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if is_num.any():
        ns = _epoch_ns(nums.to_numpy(dtype="float64", na_value=np.nan)[is_num])
        parsed[is_num] = pd.to_datetime(ns, unit="ns", utc=True)
    text = raw[~is_num & raw.notna().to_numpy()].astype("string")
    if len(text):
        times = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        rest = times.isna()
        if rest.any():
            times[rest] = pd.to_datetime(text[rest], format="mixed", errors="coerce", utc=True)
        parsed[text.index] = times
    return parsed
