"""Incremental groupby with event-time windows: memory grows with groups x windows, not rows.

Each batch of rows is reduced to partial results per (window, group) - count, sum, min,
max, first, last - and merged into the running state, so the rows themselves are never
kept. ``mean`` is sum / count. The results equal pandas' groupby over all the rows fed,
in the order they were fed.

Windows become final as event time progresses, producer by producer (see
:mod:`zpandas._eventtime`: the watermark is the slowest active producer's progress, and a
window is final ``idle`` seconds after the watermark passes its end). A row for a window
that is already final is *late*: it is counted and kept aside
(:meth:`Aggregation.late`), never silently dropped or merged into a final result.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ._eventtime import EventTime
from ._feed import Feed
from .errors import ColumnWarning

__all__ = ["Aggregation"]

log = logging.getLogger("zpandas")

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
    where : str or callable, optional
        Only rows that match: a :meth:`pandas.DataFrame.query` expression
        (``"metric == 'cpu_pct'"``) or a function of a batch returning a boolean mask.
        Aggregate one metric at a time: a mean over CPU percent and memory megabytes
        together means nothing.
    lateness : str or pandas.Timedelta, default "0s"
        How far behind its producer's own latest event time a row may be (out of
        order within one producer) and still count. Rarely needed: a window stays open
        ``idle`` seconds after the watermark passes it anyway, which covers rows that
        arrive out of order within those seconds.
    idle : float, default 5.0
        Wall-clock patience, in seconds: a producer silent this long stops holding the
        watermark back, and a window is final this long after the watermark passed its
        end. Lower it for windows that must become final sooner; raise it when
        producers start or stall further apart.

    Examples
    --------
    >>> agg = zpandas.Aggregation(by="host", values={"value": ["mean", "max"]},
    ...                           window="1min", where="metric == 'cpu_pct'")  # doctest: +SKIP
    >>> agg.update(df); agg.result()                                     # doctest: +SKIP
    """

    def __init__(self, by: str | Sequence[str] | None = None, *,
                 values: Mapping[str, str | Sequence[str]],
                 window: str | pd.Timedelta | None = None, every: str | pd.Timedelta | None = None,
                 on: str = "timestamp", where=None, lateness: str | pd.Timedelta = "0s",
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
        if where is not None and not isinstance(where, str) and not callable(where):
            raise TypeError(f"where is a query string or a function of a DataFrame, not {where!r}")
        self.where = where
        self.lateness = pd.Timedelta(lateness)
        if not idle >= 0:
            raise ValueError(f"idle must be >= 0 seconds, not {idle!r}")
        self.idle = float(idle)
        # partial reductions to keep per value column
        self._parts = {col: sorted({p for s in stats for p in _parts_of(s)})
                       for col, stats in self.values.items()}
        self._keys = (["window_start"] if self.window is not None else []) + self.by
        self._state: pd.DataFrame | None = None   # open windows (or all groups)
        # partial results of closed windows (kept as partials: zpandas.dask merges them
        # across workers exactly), in closing order
        self._closed: list[pd.DataFrame] = []
        self._late: list[pd.DataFrame] = []
        self._counts = {"rows": 0, "late_rows": 0, "rejected_batches": 0, "windows_closed": 0,
                        "dropped_rows": 0}
        self._errors: list[str] = []
        self._unseen: dict[str, bool] = {}   # missing-column messages -> told the caller
        # Event-time progress per source: a producer's id, or None for update()'s caller.
        self._time = EventTime(self.lateness, self.idle, self.window)
        self._lock = threading.Lock()
        self._fed: Feed | None = None   # tables from a Subscriber, folded on their own thread
        #: The Subscriber feeding this aggregation, if it was made by ``Subscriber.aggregate``.
        self.subscriber = None

    # -- public API -------------------------------------------------------------------

    def update(self, data, *, final: bool = False) -> None:
        """Fold a batch of rows (DataFrame or Arrow table) into the running results.

        A batch that lacks a column this aggregation needs is rejected whole (counted in
        :meth:`stats`, the reason kept), and the aggregation carries on.

        Parameters
        ----------
        data : pandas.DataFrame or pyarrow.Table
        final : bool, default False
            These are the last rows you will give for the time they reach: every window
            up to the latest row's is final at once (``final`` is True in
            :meth:`result`), instead of ``idle`` seconds after the watermark passes it.
            Rows for those windows given later are late: counted and kept aside
            (:meth:`late`). For data that is complete, e.g. read from files.
        """
        with self._lock:
            self._fold_fed()
            self._arrived(None)
            self._fold(data)
            if final:
                self._time.complete()
            self._close_windows()

    def result(self, *, closed_only: bool = False) -> pd.DataFrame:
        """The results now, as a tidy DataFrame.

        One row per (window, group): ``window_start``, ``window_end``, the ``by``
        columns, one column per ``<value>_<reduction>``, and ``final`` (the window has
        closed and will not change). Without windows: one row per group.
        """
        with self._lock:
            self._fold_fed()
            self._close_windows()
            if len(self._closed) > 1:
                self._closed = [pd.concat(self._closed)]
            frames = [self._finish(self._closed[0], final=True)] if self._closed else []
            if not closed_only and self._state is not None and len(self._state):
                frames.append(self._finish(self._state, final=False))
            untold = [m for m, told in self._unseen.items() if not told]
            self._unseen.update(dict.fromkeys(untold, True))
        for message in untold:   # on the caller's thread, once each: a typo'd column
            warnings.warn(f"Aggregation: {message}", ColumnWarning, stacklevel=2)
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
        """How the aggregation is doing.

        Returns
        -------
        dict
            ``rows`` folded in, ``late_rows``, ``rejected_batches`` (with ``errors``),
            ``windows_open``, ``windows_closed``; ``dropped_rows``: rows a
            ``policy="drop"`` Subscriber received faster than they could be folded in
            (past its ``buffer_bytes`` waiting), left out of the results. Event time:
            the ``watermark``, ``final_through`` (windows ending by then are final),
            ``producers`` (sources of rows seen), ``active`` (those holding the
            watermark back now) and ``slowest`` (the active one furthest behind: the
            first 12 hex digits of its id, as in ``Subscriber.stats()["producers"]``).
        """
        with self._lock:
            self._fold_fed()
            self._close_windows()
            out = dict(self._counts)
            out["windows_open"] = 0 if self._state is None or self.window is None else \
                self._state.index.get_level_values("window_start").nunique()
            wm, active = self._time.watermark(time.monotonic())
            out["watermark"] = wm
            out["final_through"] = self._time.final_through
            out["producers"] = len(self._time.progress)
            out["active"] = len(active)
            slowest = self._time.slowest(active)
            out["slowest"] = slowest.hex()[:12] if isinstance(slowest, bytes) else None
            out["errors"] = list(self._errors)
            return out

    def to_parquet(self, path, *, partition_by=None, closed_only: bool = False) -> str:
        """Write :meth:`result` to Parquet atomically; see :func:`zpandas.to_parquet`."""
        from .parquet import to_parquet
        return to_parquet(self.result(closed_only=closed_only), path, partition_by=partition_by,
                          provenance={"aggregation": self._describe()})

    def __repr__(self) -> str:
        w = "" if self.window is None else f" window={self.window} every={self.every} on={self.on!r}"
        q = "" if self.where is None else f" where={self.where!r}"
        return f"<zpandas.Aggregation by={self.by} values={self.values}{w}{q}>"

    # -- fed by a Subscriber (see zpandas._feed) ----------------------------------------

    def _start_feed(self, items: list, limit_bytes: int, quiet: Mapping[object, float],
                    ended: set) -> None:
        """Take tables from a Subscriber from now on, starting with ``items``
        ((producer, table) pairs received so far); ``quiet``: seconds since each producer
        was last heard from; ``ended``: producers that ended their streams."""
        now = time.monotonic()
        for producer, ago in quiet.items():
            self._time.arrived(producer, now, ago)
        self._fed = Feed(self._fold, self._time.end, self._close_windows, self._lock,
                         list(items) + [(p, None) for p in ended], limit_bytes)

    def _feed(self, source: bytes, table: pa.Table, block: bool) -> None:
        """Hand a producer's table over (the Subscriber's socket thread); past the
        backlog's bound, wait (``block``) or count its rows as ``dropped_rows``."""
        self._arrived(source)
        if not self._fed.put(source, table, block):
            # No lock: a fold may hold it, and this thread must not wait. It alone
            # writes this counter.
            self._counts["dropped_rows"] += table.num_rows

    def _feed_end(self, source: bytes) -> None:
        """``source`` ended its stream (after the tables it fed)."""
        self._fed.put_end(source)

    def _stop_feed(self, timeout: float | None) -> None:
        self._fed.close(timeout)

    def _fold_fed(self) -> None:
        """Fold what a Subscriber fed so far (holds _lock)."""
        if self._fed is not None:
            self._fed.drain()

    # -- internals (hold _lock) -------------------------------------------------------

    def _arrived(self, source) -> None:
        self._time.arrived(source, time.monotonic())

    def _fold(self, data, sources: list | None = None) -> None:
        """Fold rows; ``sources``: (source, rows) of consecutive slices of them (default:
        all from ``update()``'s caller)."""
        try:
            df = data.to_pandas() if isinstance(data, (pa.Table, pa.RecordBatch)) else data
            self._update(df, sources or [(None, len(df))])
        except Exception as e:  # one bad batch must not end a live aggregation
            self._counts["rejected_batches"] += 1
            self._errors.append(f"{type(e).__name__}: {e}")
            del self._errors[:-100]
            if isinstance(e, _MissingColumns) and str(e) not in self._unseen:
                self._unseen[str(e)] = False   # said on the worker's log, then by result()
                log.warning("aggregation: %s", e)

    def _update(self, df: pd.DataFrame, sources: list) -> None:
        missing = [c for c in [*self.by, *self.values] if c not in df.columns]
        if self.window is not None and self.on not in df.columns:
            missing.append(self.on)
        if missing:
            raise _MissingColumns(f"the rows have no column(s) {missing} (named by by=, values= or "
                                  f"on=); their columns: {[c for c in df.columns if c != '_offset']}")
        if self.where is not None and len(df):
            mask = df.eval(self.where) if isinstance(self.where, str) else self.where(df)
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (len(df),):
                raise ValueError(f"where= gave {mask.shape} values for {len(df)} rows")
            sources = _kept(sources, mask)
            df = df[mask]
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
            # A row whose earliest window is final is late: it could no longer count
            # in all of its windows, so it counts in none.
            final = self._time.final_through
            if final is not None:
                late = ts.dt.floor(self.every) + self.every <= final
                if late.any():
                    self._keep_late(df[late])
                    df = df[~late]
            self._time.advance(ts, sources)
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

    def _close_windows(self) -> None:
        if self.window is None:
            return
        final = self._time.finality(time.monotonic())
        if final is None or self._state is None or not len(self._state):
            return
        starts = self._state.index.get_level_values("window_start")
        done = (starts + self.window) <= final
        if done.any():
            closed = self._state[done]
            self._state = self._state[~done]
            self._closed.append(closed)
            self._counts["windows_closed"] += closed.index.get_level_values("window_start").nunique()

    def _partials(self) -> tuple[pd.DataFrame | None, pd.Timestamp | None, int]:
        """The partial results of every window (closed or open) or group, indexed by the
        keys; the time through which windows are final; and how many producers were
        heard from. What :func:`combine` merges."""
        with self._lock:
            self._fold_fed()
            self._close_windows()
            parts = self._closed + ([self._state] if self._state is not None else [])
            return (pd.concat(parts) if parts else None, self._time.final_through,
                    len(self._time.progress))

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
                "where": self.where if isinstance(self.where, str) else
                None if self.where is None else getattr(self.where, "__name__", repr(self.where)),
                "window": None if self.window is None else str(self.window),
                "every": None if self.every is None else str(self.every),
                "rows": self._counts["rows"], "late_rows": self._counts["late_rows"]}


class _MissingColumns(KeyError):
    def __str__(self) -> str:   # KeyError's would quote the message
        return str(self.args[0])


def combine(template: Aggregation, partials: list) -> pd.DataFrame:
    """Merge the :meth:`Aggregation._partials` of aggregations of the same spec over
    disjoint rows (one per worker, in order) into the result one aggregation over all of
    them would give: counts and sums add, min and max of the parts, first and last in
    the parts' order. A window is final when every part that has heard from a producer
    says so."""
    states = [p for p, _, _ in partials if p is not None and len(p)]
    if not states:
        return template._empty()
    both = pd.concat(states)
    state = both.groupby(level=list(range(both.index.nlevels)), sort=False,
                         dropna=False).agg(template._merge_spec())
    out = template._finish(state, final=False)
    if template.window is not None:
        heard = [final for _, final, producers in partials if producers]
        if heard and all(f is not None for f in heard):
            out["final"] = out["window_end"] <= min(heard)
    return out.sort_values(template._keys, kind="stable", ignore_index=True) if template._keys else out


def _kept(sources: list, mask: np.ndarray) -> list:
    """``sources``' consecutive slices, counted again over the rows ``mask`` keeps."""
    bounds = np.cumsum([n for _, n in sources])
    kept = np.bincount(np.searchsorted(bounds, np.flatnonzero(mask), side="right"),
                       minlength=len(sources))
    return [(source, int(k)) for (source, _), k in zip(sources, kept)]


def _parts_of(stat: str) -> tuple[str, ...]:
    return ("sum", "count") if stat == "mean" else (stat,)
