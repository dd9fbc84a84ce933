"""LivePlot: a live-updating ipywidgets + matplotlib view of an Aggregation or a Subscriber.

The only module that touches ipywidgets and matplotlib. Everything it draws is drawn on
the kernel's own thread: refreshes are scheduled on the kernel's asyncio event loop
(``loop.call_later``), which runs them between and during cells that await, so the
notebook stays usable while the plot moves. The figure is rendered with matplotlib's Agg
backend to a PNG shown in an ``ipywidgets.Image``: no browser-side plotting extension is
needed, and the same code renders headless (:meth:`LivePlot.to_png`) for tests and
pictures.
"""

from __future__ import annotations

import asyncio
import html
import io
import time

import pandas as pd

__all__ = ["LivePlot"]


def _widgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("LivePlot needs ipywidgets: pip install ipywidgets") from e
    return ipywidgets


class LivePlot:
    """A line per group over time, the latest values, and a stats line; refreshed live.

    Parameters
    ----------
    source : Aggregation or Subscriber
        With an :class:`~zpandas.Aggregation` (windows; or a
        ``zpandas.dask.DaskAggregation``): x is ``window_start``, one line per group. With a :class:`~zpandas.Subscriber`: its retained rows, x is ``x``.
    y : str, optional
        Column to plot, e.g. ``"value_mean"``; the title and the y axis name it ("mean
        of value"). Default: the aggregation's only result column (with several, say
        which); required for a Subscriber.
    x : str, default "timestamp"
        The time column of a Subscriber's rows (ignored for an aggregation).
    by : str or list of str, optional
        Grouping of a Subscriber's rows into lines (an aggregation's ``by`` is used as is).
    interval : float, default 1.0
        Seconds between refreshes.
    backlog : int, default 60
        Windows (aggregation) or thousands of rows (Subscriber) shown; a slider changes it.
    subscriber : Subscriber, optional
        Where the stats line comes from (default: the source, or the subscriber an
        aggregation was made by).
    title : str, optional
        Default: what is plotted, by what, over which windows (and ``where``).
    start : bool, default True
        Start refreshing at once if an event loop is running (in Jupyter it is). A plot
        made with ``start=False`` is a still picture: no pause button, no slider.
    tz : str, default "UTC"
        The time zone the time axis is read in (``"Europe/Paris"``; ``"local"``: this
        machine's); the axis label names it.
    max_lines : int, default 10
        Groups drawn as their own line, with a legend entry: the largest by their latest
        value; the others are thin grey lines under one legend entry ("32 others").
    zero : bool, default False
        Start the y axis at 0 (a small change then looks small).

    Examples
    --------
    >>> agg = sub.aggregate(by="host", values={"value": ["mean", "max"]}, window="10s")  # doctest: +SKIP
    >>> zpandas.LivePlot(agg, y="value_mean")                                   # doctest: +SKIP
    """

    def __init__(self, source, *, y: str | None = None, x: str = "timestamp", by=None,
                 interval: float = 1.0, backlog: int = 60, subscriber=None,
                 title: str | None = None, start: bool = True, tz: str = "UTC",
                 max_lines: int = 10, zero: bool = False) -> None:
        from .aggregate import Aggregation
        from .subscriber import Subscriber

        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self.tz = _zone(tz)
        self.max_lines, self.zero = max_lines, zero
        self.source = source
        # An Aggregation, or one that combines several (zpandas.dask.DaskAggregation)
        self._is_agg = isinstance(source, Aggregation) or all(
            hasattr(source, a) for a in ("result", "stats", "window", "values", "by"))
        if not self._is_agg and not isinstance(source, Subscriber):
            raise TypeError("LivePlot shows an Aggregation or a Subscriber, "
                            f"not {type(source).__name__}")
        if self._is_agg:
            if source.window is None:
                raise ValueError("LivePlot needs an aggregation over windows (window=...)")
            self.by = source.by
            names = {f"{c}_{s}": f"{s} of {c}" for c, stats in source.values.items() for s in stats}
            if y is None and len(names) > 1:
                raise ValueError(f"say which result column to plot: y= one of {list(names)}")
            y = y or next(iter(names))
            if y not in names:
                raise ValueError(f"y={y!r} is not a result of this aggregation: one of {list(names)}")
            self.y, self.x, self.label = y, "window_start", names[y]
            what = f"{self.label}, {_duration(source.window)} windows"
            if source.every != source.window:
                what += f" every {_duration(source.every)}"
            if isinstance(source.where, str):
                what += f" where {source.where}"
        else:
            if y is None:
                raise ValueError("LivePlot of a Subscriber needs y= (the column to plot)")
            self.by = [by] if isinstance(by, str) else list(by or [])
            self.y, self.x, self.label = y, x, y
            what = y
        self.subscriber = subscriber or (source if not self._is_agg else getattr(source, "subscriber", None))
        self.interval = interval
        self.title = title or (f"{what}, by {', '.join(self.by)}" if self.by else what)
        self.refreshes = 0
        self.last_error: str | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last = (time.monotonic(), self._rows_now())

        w = _widgets()
        self.pause = w.ToggleButton(value=False, description="pause", icon="pause",
                                    tooltip="stop refreshing (data keeps arriving)")
        unit = "windows" if self._is_agg else "k rows"
        self.backlog = w.IntSlider(value=backlog, min=1, max=max(10 * backlog, 100),
                                   description=unit, continuous_update=False)
        self.status = w.HTML(value="")
        # The latest-values table keeps its width beside the picture, which shrinks to
        # make room (down to 360 px; narrower than that, the table goes under it rather
        # than past the right edge).
        self.image = w.Image(format="png", layout=w.Layout(flex="1 1 0%", min_width="360px",
                                                           max_width="720px", height="auto"))
        self.table = w.HTML(value="", layout=w.Layout(flex="0 0 auto", margin="0 0 0 8px"))
        picture = w.HBox([self.image, self.table],
                         layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        # A still picture (start=False) has nothing to pause and no backlog to slide.
        self.widget = w.VBox(([w.HBox([self.pause, self.backlog])] if start else [])
                             + [self.status, picture])
        self.backlog.observe(lambda change: self.refresh(), names="value")
        self.pause.observe(self._on_pause, names="value")
        self.refresh()
        if start:
            self.start()

    # -- public API -------------------------------------------------------------------

    def start(self) -> bool:
        """Refresh every ``interval`` seconds on the running event loop.

        Returns False (and does nothing) when no event loop is running, e.g. in a plain
        script: call :meth:`refresh` yourself there.
        """
        try:
            loop = asyncio.get_running_loop()  # in a Jupyter cell, the kernel's loop
        except RuntimeError:
            return False
        self.stop()
        self._handle = loop.call_later(self.interval, self._tick)
        return True

    def stop(self) -> None:
        """Stop refreshing."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def refresh(self) -> None:
        """Redraw now (also while paused). Errors are shown in the stats line, not raised."""
        try:
            data = self._data()
            self.image.value = self._png(data)
            self.table.value = self._latest_html(data)
            self.status.value = self._status_html()
            self.last_error = None
        except Exception as e:  # a live view must survive a bad moment
            self.last_error = f"{type(e).__name__}: {e}"
            self.status.value = f"<span style='color:#b00'>refresh failed: {html.escape(self.last_error)}</span>"
        self.refreshes += 1

    def to_png(self, path=None) -> bytes:
        """Render the current state headless; write it to ``path`` if given."""
        png = self._png(self._data())
        if path is not None:
            with open(path, "wb") as f:
                f.write(png)
        return png

    @property
    def png(self) -> bytes:
        """The image shown now."""
        return bytes(self.image.value)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<zpandas.LivePlot {self.title!r} every {self.interval} s>"

    # -- internals ----------------------------------------------------------------------

    def _tick(self) -> None:
        self._handle = None
        if not self.pause.value:
            self.refresh()
        self.start()

    def _on_pause(self, change) -> None:
        self.pause.description = "resume" if change["new"] else "pause"
        self.pause.icon = "play" if change["new"] else "pause"

    def _data(self) -> pd.DataFrame:
        if self._is_agg:
            df = self.source.result()
            if len(df):
                starts = df["window_start"].drop_duplicates().nlargest(self.backlog.value)
                df = df[df["window_start"].isin(starts)]
            return df
        df = self.source.frame(last=self.backlog.value * 1000)
        if len(df) and not pd.api.types.is_datetime64_any_dtype(df[self.x]):
            df[self.x] = pd.to_datetime(df[self.x], utc=True, format="ISO8601")
        return df

    def _png(self, df: pd.DataFrame) -> bytes:
        buf = io.BytesIO()
        self._figure(df).savefig(buf, format="png")
        return buf.getvalue()

    def _figure(self, df: pd.DataFrame):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        import matplotlib.dates as mdates

        fig = Figure(figsize=(7.2, 3.4), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if len(df):
            groups = [(k, g.sort_values(self.x)) for k, g in df.groupby(self.by, sort=True)] \
                if self.by else [(self.y, df.sort_values(self.x))]
            # The largest by latest value get a line and a legend entry each; the rest are
            # drawn thin and grey under one entry, so the legend stays readable.
            groups.sort(key=lambda kg: -_last(kg[1][self.y]))
            shown, rest = groups[:self.max_lines], groups[self.max_lines:]
            for i, (key, g) in enumerate(rest):
                ax.plot(g[self.x], g[self.y], color="0.75", linewidth=0.8, zorder=1,
                        label=f"{len(rest)} others" if i == 0 else None)
            for key, g in sorted(shown, key=lambda kg: str(kg[0])):
                label = ", ".join(map(str, key)) if isinstance(key, tuple) else str(key)
                ax.plot(g[self.x], g[self.y], label=label, linewidth=1.5, zorder=2)
            if self.by:
                # Outside the axes, on the right: it never hides a line.
                entries = len(shown) + bool(rest)
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                          fontsize="small", frameon=False, title=", ".join(self.by),
                          title_fontsize="small", ncols=-(-entries // 15))  # 15 fit a column
        else:
            ax.text(0.5, 0.5, "waiting for rows...", ha="center", va="center", transform=ax.transAxes)
        locator = mdates.AutoDateLocator(tz=self.tz)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=self.tz))
        ax.set_title(self.title, fontsize="medium")
        ax.set_ylabel(self.label)
        ax.set_xlabel(f"{'window start' if self._is_agg else self.x} ({_zone_name(self.tz)})")
        if self.zero and len(df) and df[self.y].min() >= 0:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        return fig

    def _latest_html(self, df: pd.DataFrame) -> str:
        if not len(df):
            return ""
        latest = df.sort_values(self.x).groupby(self.by, sort=True).tail(1) if self.by else df.tail(1)
        if self.by:
            latest = latest.sort_values(self.by)   # a readout by group, in the legend's order
        latest = latest[[*self.by, self.x, self.y]].rename(columns={self.y: self.label})
        # Times as the clock shows them (the date and zone are on the plot's axis): the
        # table stays narrow enough to sit beside the picture.
        latest[self.x] = pd.to_datetime(latest[self.x]).dt.strftime("%H:%M:%S")
        return "<b>latest</b>" + latest.to_html(index=False, float_format=lambda v: f"{v:,.4g}")

    def _rows_now(self) -> int:
        sub = self.subscriber
        return sub.stats()["rows"] if sub is not None and not sub.closed else 0

    def _status_html(self) -> str:
        parts = []
        sub = self.subscriber
        if sub is not None and not sub.closed:
            st = sub.stats()
            now = time.monotonic()
            then, rows_then = self._last
            # Never negative: rows counted by a worker that is lost leave the total.
            rate = max(0, st["rows"] - rows_then) / max(now - then, 1e-6)
            self._last = (now, st["rows"])
            prod = st["producers"]
            alive = int(prod.groupby("producer")["alive"].any().sum()) if len(prod) else 0
            parts += [f"{st['rows']:,} rows", f"{rate:,.0f} rows/s",
                      f"{alive} of {prod['producer'].nunique()} producers alive",
                      f"{st['missed_rows']:,} rows lost", f"{sum(st['bad_frames'].values())} bad frames"]
        if self._is_agg:
            a = self.source.stats()
            parts += [f"{a['late_rows']:,} late rows", f"{a['rejected_batches']} rejected batches",
                      f"{a['windows_open']} windows open"]
        state = "paused" if self.pause.value else f"every {self.interval:g} s"
        return " · ".join(parts + [state])


def _last(values: pd.Series) -> float:
    last = values.dropna()
    return float(last.iloc[-1]) if len(last) else float("-inf")


def _zone(tz: str):
    """A tzinfo for ``tz`` ("UTC", "local", or an IANA name)."""
    import datetime
    import zoneinfo
    if tz == "local":
        return datetime.datetime.now().astimezone().tzinfo
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}: 'UTC', 'local' or a name such as "
                         "'Europe/Paris'") from None


def _zone_name(tz) -> str:
    import datetime
    return getattr(tz, "key", None) or tz.tzname(datetime.datetime.now())


def _duration(t: pd.Timedelta) -> str:
    """``5min``, ``2s``, ``1h30min``: a window length as a person writes it."""
    seconds = int(t.total_seconds())
    if seconds * 1_000_000_000 != t.value or seconds == 0:
        return str(t)
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "min"),
             (seconds % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
