"""Incremental groupby with event-time windows: memory grows with groups x windows, not rows.

Each batch of rows is reduced to partial results per (window, group) - count, sum, min,
max, first, last - and merged into the running state, so the rows themselves are never
kept. ``mean`` is sum / count. The results equal pandas' groupby over all the rows fed,
in the order they were fed.

Windows close when the watermark passes their end. The watermark is the latest event
time seen minus ``lateness``; when no rows arrive for ``idle`` seconds of wall-clock
time it keeps moving with the wall clock, so the last windows of a quiet stream close
too. A row for a window that has already closed is *late*: it is counted and kept aside
(:meth:`Aggregation.late`), never silently dropped or merged into a final result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ._feed import Feed

__all__ = ["Aggregation"]

#: Reductions offered, and how two partial results of each combine.
_MERGE = {"count": "sum", "size": "sum", "sum": "sum", "min": "min", "max": "max",
          "first": "first", "last": "last"}
STATS = ("count", "size", "sum", "mean", "min", "max", "first", "last")
_LATE_KEPT = 100_000


class Aggregation:
    """A running groupby, optionally over tumbling or hopping event-time windows.

    Parameters
    ----------
    by : str or list of str, optional
        Columns to group by (none: one group).
    values : mapping of column to reduction(s)
        E.g. ``{"value": ["mean", "max"], "latency_ms": "count"}``. Reductions:
        ``count`` (non-null values), ``size`` (rows), ``sum``, ``mean``, ``min``, ``max``,
        ``first``, ``last`` (first and last non-null value in arrival order), as pandas
        defines them.
    window : str or pandas.Timedelta, optional
        Window length (``"1min"``); without it, one running total per group.
    every : str or pandas.Timedelta, optional
        Hop of hopping (sliding) windows; must divide ``window``. Default: ``window``
        (tumbling windows).
    on : str, default "timestamp"
        The event-time column (windows only). Strings are parsed as datetimes.
    lateness : str or pandas.Timedelta, default "0s"
        How far behind the latest event time a row may be and still count.
    idle : float, default 5.0
        Seconds without rows after which the watermark follows the wall clock.

    Examples
    --------
    >>> agg = zpandas.Aggregation(by="host", values={"value": ["mean", "max"]},
    ...                           window="1min", on="timestamp")          # doctest: +SKIP
    >>> agg.update(df); agg.result()                                     # doctest: +SKIP
    """

    def __init__(self, by: str | Sequence[str] | None = None, *,
                 values: Mapping[str, str | Sequence[str]],
                 window: str | pd.Timedelta | None = None, every: str | pd.Timedelta | None = None,
                 on: str = "timestamp", lateness: str | pd.Timedelta = "0s",
                 idle: float = 5.0) -> None:
        self.by = [by] if isinstance(by, str) else list(by or [])
        if not values:
            raise ValueError("values must name at least one column and reduction")
        self.values = {col: [stats] if isinstance(stats, str) else list(stats)
                       for col, stats in values.items()}
        for col, stats in self.values.items():
            unknown = [s for s in stats if s not in STATS]
            if unknown:
                raise ValueError(f"unknown reduction(s) {unknown} for {col!r}; choose from {STATS}")
        self.window = None if window is None else pd.Timedelta(window)
        self.every = self.window if every is None or self.window is None else pd.Timedelta(every)
        if self.window is not None:
            if self.window <= pd.Timedelta(0) or self.every <= pd.Timedelta(0):
                raise ValueError("window and every must be positive")
            if self.window % self.every:
                raise ValueError(f"every ({self.every}) must divide window ({self.window})")
        self.on = on
        self.lateness = pd.Timedelta(lateness)
        self.idle = idle
        # partial reductions to keep per value column
        self._parts = {col: sorted({p for s in stats for p in _parts_of(s)})
                       for col, stats in self.values.items()}
        self._keys = (["window_start"] if self.window is not None else []) + self.by
        self._state: pd.DataFrame | None = None   # open windows (or all groups)
        self._closed: list[pd.DataFrame] = []     # final results, in closing order
        self._late: list[pd.DataFrame] = []
        self._counts = {"rows": 0, "late_rows": 0, "rejected_batches": 0, "windows_closed": 0,
                        "dropped_rows": 0}
        self._errors: list[str] = []
        self._max_event: pd.Timestamp | None = None
        self._last_arrival = time.monotonic()
        self._lock = threading.Lock()
        self._fed: Feed | None = None   # tables from a Subscriber, folded on their own thread
        #: The Subscriber feeding this aggregation, if it was made by ``Subscriber.aggregate``.
        self.subscriber = None

    # -- public API -------------------------------------------------------------------

    def update(self, data) -> None:
        """Fold a batch of rows (DataFrame or Arrow table) into the running results.

        A batch that lacks a column this aggregation needs is rejected whole (counted in
        :meth:`stats`, the reason kept), and the aggregation carries on.
        """
        with self._lock:
            self._fold_fed()
            self._last_arrival = time.monotonic()
            self._fold(data)

    def result(self, *, closed_only: bool = False) -> pd.DataFrame:
        """The results now, as a tidy DataFrame.

        One row per (window, group): ``window_start``, ``window_end``, the ``by``
        columns, one column per ``<value>_<reduction>``, and ``final`` (the window has
        closed and will not change). Without windows: one row per group.
        """
        with self._lock:
            self._fold_fed()
            self._close_windows()
            frames = list(self._closed)
            if not closed_only and self._state is not None and len(self._state):
                frames.append(self._finish(self._state, final=False))
        if not frames:
            return self._empty()
        out = pd.concat(frames, ignore_index=True)
        return out.sort_values(self._keys, kind="stable", ignore_index=True) if self._keys else out

    def late(self) -> pd.DataFrame:
        """Rows that arrived after their window had closed (the last 100,000 kept)."""
        with self._lock:
            self._fold_fed()
            return pd.concat(self._late, ignore_index=True) if self._late else pd.DataFrame()

    def stats(self) -> dict:
        """``rows`` folded in, ``late_rows``, ``rejected_batches`` (with ``errors``),
        ``windows_open``, ``windows_closed``, the ``watermark``, and ``dropped_rows``:
        rows a ``policy="drop"`` Subscriber received faster than they could be folded
        in (past its ``buffer_bytes`` waiting), left out of the results."""
        with self._lock:
            self._fold_fed()
            self._close_windows()
            out = dict(self._counts)
            out["windows_open"] = 0 if self._state is None or self.window is None else \
                self._state.index.get_level_values("window_start").nunique()
            out["watermark"] = self._watermark()
            out["errors"] = list(self._errors)
            return out

    def to_parquet(self, path, *, partition_by=None, closed_only: bool = False) -> str:
        """Write :meth:`result` to Parquet atomically; see :func:`zpandas.to_parquet`."""
        from .parquet import to_parquet
        return to_parquet(self.result(closed_only=closed_only), path, partition_by=partition_by,
                          provenance={"aggregation": self._describe()})

    def __repr__(self) -> str:
        w = "" if self.window is None else f" window={self.window} every={self.every} on={self.on!r}"
        return f"<zpandas.Aggregation by={self.by} values={self.values}{w}>"

    # -- fed by a Subscriber (see zpandas._feed) ----------------------------------------

    def _start_feed(self, tables: list, limit_bytes: int) -> None:
        """Take tables from a Subscriber from now on, starting with ``tables``."""
        self._fed = Feed(self._fold, self._lock, tables, limit_bytes)

    def _feed(self, table: pa.Table, block: bool) -> None:
        """Hand a table over (the Subscriber's socket thread); past the backlog's bound,
        wait (``block``) or count its rows as ``dropped_rows``."""
        self._last_arrival = time.monotonic()
        if not self._fed.put(table, block):
            # No lock: a fold may hold it, and this thread must not wait. It alone
            # writes this counter.
            self._counts["dropped_rows"] += table.num_rows

    def _stop_feed(self, timeout: float | None) -> None:
        self._fed.close(timeout)

    def _fold_fed(self) -> None:
        """Fold what a Subscriber fed so far (holds _lock)."""
        if self._fed is not None:
            self._fed.drain()

    # -- internals (hold _lock) -------------------------------------------------------

    def _fold(self, data) -> None:
        try:
            df = data.to_pandas() if isinstance(data, (pa.Table, pa.RecordBatch)) else data
            self._update(df)
        except Exception as e:  # one bad batch must not end a live aggregation
            self._counts["rejected_batches"] += 1
            self._errors.append(f"{type(e).__name__}: {e}")
            del self._errors[:-100]
        self._close_windows()

    def _update(self, df: pd.DataFrame) -> None:
        missing = [c for c in [*self.by, *self.values] if c not in df.columns]
        if self.window is not None and self.on not in df.columns:
            missing.append(self.on)
        if missing:
            raise KeyError(f"batch has no column(s) {missing}")
        if not len(df):
            return
        df = df[list(dict.fromkeys([*self.by, *self.values] +
                                   ([self.on] if self.window is not None else [])))]
        if self.window is not None:
            ts = df[self.on]
            if not pd.api.types.is_datetime64_any_dtype(ts):
                ts = pd.to_datetime(ts, utc=True, format="ISO8601")
            if ts.isna().any():
                raise ValueError(f"{int(ts.isna().sum())} rows have no {self.on!r}")
            df = df.assign(**{self.on: ts})
            batch_max = ts.max()
            # A row whose earliest window the watermark has passed is late: it could
            # no longer count in all of its windows, so it counts in none.
            wm = self._watermark()
            if wm is not None:
                late = ts.dt.floor(self.every) + self.every <= wm
                if late.any():
                    self._keep_late(df[late])
                    df = df[~late]
            self._max_event = batch_max if self._max_event is None else max(self._max_event, batch_max)
            df = self._assign_windows(df)
        self._counts["rows"] += len(df)
        partial = self._partial(df)
        if self._state is None:
            self._state = partial
        else:
            both = pd.concat([self._state, partial])
            self._state = both.groupby(level=list(range(both.index.nlevels)), sort=False,
                                       dropna=False).agg(self._merge_spec())

    def _assign_windows(self, df: pd.DataFrame) -> pd.DataFrame:
        first = df[self.on].dt.floor(self.every)
        hops = int(self.window / self.every)
        if hops == 1:
            return df.assign(window_start=first)
        # A row belongs to every window that starts at one of the last `hops` hops.
        reps = np.repeat(np.arange(len(df)), hops)
        out = df.iloc[reps].copy()
        back = np.tile(np.arange(hops), len(df))
        starts = first.repeat(hops).reset_index(drop=True) - pd.to_timedelta(back * self.every.value, unit="ns")
        out["window_start"] = starts.array
        return out

    def _partial(self, df: pd.DataFrame) -> pd.DataFrame:
        spec = {}
        for col, parts in self._parts.items():
            for p in parts:
                spec[f"{col}\0{p}"] = (col, p)
        if self._keys:
            g = df.groupby(self._keys, sort=False, dropna=False, observed=True)
            return g.agg(**spec)
        return df.assign(_all=0).groupby("_all").agg(**spec)

    def _merge_spec(self) -> dict:
        return {f"{col}\0{p}": _MERGE[p] for col, parts in self._parts.items() for p in parts}

    def _watermark(self) -> pd.Timestamp | None:
        if self._max_event is None:
            return None
        wm = self._max_event - self.lateness
        quiet = time.monotonic() - self._last_arrival
        if quiet >= self.idle:
            wm += pd.Timedelta(seconds=quiet)  # a quiet stream's clock is the wall clock
        return wm

    def _close_windows(self) -> None:
        if self.window is None or self._state is None or not len(self._state):
            return
        wm = self._watermark()
        starts = self._state.index.get_level_values("window_start")
        done = (starts + self.window) <= wm
        if done.any():
            closed = self._state[done]
            self._state = self._state[~done]
            self._closed.append(self._finish(closed, final=True))
            self._counts["windows_closed"] += closed.index.get_level_values("window_start").nunique()

    def _finish(self, state: pd.DataFrame, final: bool) -> pd.DataFrame:
        out = {}
        for col, stats in self.values.items():
            for s in stats:
                if s == "mean":
                    count = state[f"{col}\0count"]
                    out[f"{col}_mean"] = state[f"{col}\0sum"] / count.where(count > 0)
                else:
                    out[f"{col}_{s}"] = state[f"{col}\0{s}"]
        res = pd.DataFrame(out, index=state.index)
        res = res.reset_index() if self._keys else res.reset_index(drop=True)
        if self.window is not None:
            res.insert(1, "window_end", res["window_start"] + self.window)
        res["final"] = final
        return res

    def _keep_late(self, rows: pd.DataFrame) -> None:
        self._counts["late_rows"] += len(rows)
        self._late.append(rows)
        kept = sum(map(len, self._late))
        while kept > _LATE_KEPT and len(self._late) > 1:
            kept -= len(self._late.pop(0))

    def _empty(self) -> pd.DataFrame:
        cols = (["window_start", "window_end"] if self.window is not None else []) + self.by
        cols += [f"{c}_{s}" for c, stats in self.values.items() for s in stats] + ["final"]
        return pd.DataFrame(columns=cols)

    def _describe(self) -> dict:
        return {"by": self.by, "values": self.values, "on": self.on,
                "window": None if self.window is None else str(self.window),
                "every": None if self.every is None else str(self.every),
                "rows": self._counts["rows"], "late_rows": self._counts["late_rows"]}


def _parts_of(stat: str) -> tuple[str, ...]:
    return ("sum", "count") if stat == "mean" else (stat,)
