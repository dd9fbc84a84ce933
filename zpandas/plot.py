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
import typing

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
        of value"). Default: the aggregation's first result column; with several, a
        dropdown above the picture switches between them. Required for a Subscriber.
    x : str, default "timestamp"
        The time column of a Subscriber's rows (ignored for an aggregation).
    by : str or list of str, optional
        Grouping of a Subscriber's rows into lines (an aggregation's ``by`` is used as is).
    interval : float, default 1.0
        Seconds between refreshes.
    backlog : int, optional
        Windows (aggregation) or thousands of rows (Subscriber) shown: the last ones. A
        slider changes it, and its "all" box shows everything kept. Default: 60 for a
        live plot, all for a still one.
    subscriber : Subscriber, optional
        Where the stats line comes from (default: the source, or the subscriber an
        aggregation was made by).
    title : str, optional
        Default: what is plotted, by what, over which windows (and ``where``).
    start : bool, default True
        Start refreshing at once if an event loop is running (in Jupyter it is). A plot
        made with ``start=False`` is a still picture: no pause button, no slider
        (:meth:`refresh` redraws it).
    tz : str, default "UTC"
        The time zone the time axis is read in (``"Europe/Paris"``; ``"local"``: this
        machine's); the axis label names it.
    max_lines : int, default 10
        Groups drawn as their own line, with a legend entry: the largest by their latest
        value; the others are thin grey lines under one legend entry ("32 others").
    zero : bool, default False
        Start the y axis at 0 (a small change then looks small).
    figsize : (float, float), default (7.2, 3.4)
        The figure's proportions and the size of its text, in inches as matplotlib's. The
        picture takes the width the notebook gives it (drawn at 150 dpi, so it stays sharp
        up to about 1,100 pixels wide).

    Notes
    -----
    With ``by``, a list beside the picture chooses the groups drawn (none chosen: the
    ``max_lines`` largest, the rest grey); under it, the latest value of each group.

    Examples
    --------
    >>> agg = sub.aggregate(by="host", values={"value": ["mean", "max"]}, window="10s")  # doctest: +SKIP
    >>> zpandas.LivePlot(agg, y="value_mean")                                   # doctest: +SKIP
    """

    def __init__(self, source, *, y: str | None = None, x: str = "timestamp", by=None,
                 interval: float = 1.0, backlog: int | None = None, subscriber=None,
                 title: str | None = None, start: bool = True, tz: str = "UTC",
                 max_lines: int = 10, zero: bool = False,
                 figsize: tuple[float, float] = (7.2, 3.4)) -> None:
        from .aggregate import Aggregation
        from .subscriber import Subscriber

        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self.tz = _zone(tz)
        self.max_lines, self.zero, self.figsize = max_lines, zero, tuple(figsize)
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
            self._names = {f"{c}_{s}": f"{s} of {c}" for c, stats in source.values.items()
                           for s in stats}
            y = y or next(iter(self._names))
            if y not in self._names:
                raise ValueError(f"y={y!r} is not a result of this aggregation: one of {list(self._names)}")
            self.x = "window_start"
        else:
            if y is None:
                raise ValueError("LivePlot of a Subscriber needs y= (the column to plot)")
            self.by = [by] if isinstance(by, str) else list(by or [])
            self._names = {y: y}
            self.x = x
        self.subscriber = subscriber or (source if not self._is_agg else getattr(source, "subscriber", None))
        self.interval = interval
        self._title = title
        self.refreshes = 0
        self.last_error: str | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last = (time.monotonic(), self._rows_now())

        w = _widgets()
        self.pause = w.ToggleButton(value=False, description="pause", icon="pause",
                                    tooltip="stop refreshing (data keeps arriving)")
        #: What is drawn: the result column (a dropdown when there are several).
        self.stat = w.Dropdown(options=[(label, col) for col, label in self._names.items()],
                               value=y, description="show", layout=w.Layout(width="auto"))
        unit = "windows" if self._is_agg else "k rows"
        shown = 60 if backlog is None else backlog
        self.backlog = w.IntSlider(value=shown, min=1, max=max(10 * shown, 100),
                                   description=f"last {unit}", continuous_update=False,
                                   style={"description_width": "initial"})
        #: Show every window (or row) kept, not only the last ``backlog``.
        self.all = w.Checkbox(value=backlog is None and not start, description="all",
                              indent=False, layout=w.Layout(width="auto"))
        #: The groups drawn (none chosen: the ``max_lines`` largest, the others grey).
        self.groups = w.SelectMultiple(options=[], rows=6, description="",
                                       tooltip="the groups drawn (none: the largest)",
                                       layout=w.Layout(width="auto", min_width="120px"))
        self.status = w.HTML(value="")
        # The picture takes the width left by the groups and the latest values (at least
        # 360 px; narrower than that, they go under it rather than past the right edge).
        self.image = w.Image(format="png", layout=w.Layout(flex="1 1 0%", min_width="360px",
                                                           height="auto"))
        self.table = w.HTML(value="")
        side = ([w.HTML(f"<b>{html.escape(', '.join(self.by))}</b>"), self.groups] if self.by else []) \
            + [self.table]
        picture = w.HBox([self.image, w.VBox(side, layout=w.Layout(flex="0 0 auto", margin="0 0 0 8px"))],
                         layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        # The controls match the plot: a still picture (start=False) has nothing to pause
        # and no backlog to slide; a single result column needs no chooser.
        controls = ([self.pause, self.backlog, self.all] if start else []) \
            + ([self.stat] if len(self._names) > 1 else [])
        self.widget = w.VBox(([w.HBox(controls)] if controls else []) + [self.status, picture])
        self._quiet = False   # set while the group list is refilled: not a user's choice
        for control in (self.stat, self.backlog, self.all, self.groups):
            control.observe(self._on_choice, names="value")
        self.pause.observe(self._on_pause, names="value")
        self._shown = self._empty_view()
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

    @property
    def y(self) -> str:
        """The column drawn (the ``stat`` dropdown's choice)."""
        return self.stat.value

    @property
    def label(self) -> str:
        """What the y axis says: ``"mean of value"``."""
        return self._names[self.y]

    @property
    def title(self) -> str:
        if self._title:
            return self._title
        what = self.label
        if self._is_agg:
            src = self.source
            what += f", {_duration(src.window)} windows"
            if src.every != src.window:
                what += f" every {_duration(src.every)}"
            if isinstance(src.where, str):
                what += f" where {src.where}"
        return f"{what}, by {', '.join(self.by)}" if self.by else what

    def refresh(self) -> None:
        """Redraw now (also while paused). Errors are shown in the stats line, not raised."""
        try:
            data = self._data()
            self._offer_groups(data)
            view = self._view(data)
            self.image.value = self._png(view)
            self.table.value = self._latest_html(view)
            self.status.value = self._status_html()
            self._shown = view
            self.last_error = None
        except Exception as e:  # a live view must survive a bad moment
            self.last_error = f"{type(e).__name__}: {e}"
            self.status.value = f"<span style='color:#b00'>refresh failed: {html.escape(self.last_error)}</span>"
        self.refreshes += 1

    def to_png(self, path=None) -> bytes:
        """The picture shown now, as PNG bytes; written to ``path`` if given.

        Exactly what the widget shows (call :meth:`refresh` first for the latest rows).
        """
        png = self.png
        if path is not None:
            with open(path, "wb") as f:
                f.write(png)
        return png

    def savefig(self, path, **kwargs) -> None:
        """Save what is shown now with :meth:`matplotlib.figure.Figure.savefig`.

        The same rows, column, groups and range as the picture on screen, in any format
        matplotlib writes (``.png``, ``.svg``, ``.pdf``; ``dpi=``, ...).
        """
        self._figure(self._shown).savefig(path, **kwargs)

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

    def _on_choice(self, change) -> None:
        self.backlog.disabled = self.all.value
        if not self._quiet:
            self.refresh()

    def _data(self) -> pd.DataFrame:
        """The rows in the chosen range, every group."""
        if self._is_agg:
            df = self.source.result()
            if len(df) and not self.all.value:
                starts = df["window_start"].drop_duplicates().nlargest(self.backlog.value)
                df = df[df["window_start"].isin(starts)]
            return df
        df = self.source.frame(last=None if self.all.value else self.backlog.value * 1000)
        if len(df) and not pd.api.types.is_datetime64_any_dtype(df[self.x]):
            df[self.x] = pd.to_datetime(df[self.x], utc=True, format="ISO8601")
        return df

    def _labels(self, df: pd.DataFrame) -> pd.Series:
        """Each row's group as the legend names it: ``"web1"``, ``"web1, GET"``."""
        labels = df[self.by[0]].astype(str)
        for col in self.by[1:]:
            labels = labels + ", " + df[col].astype(str)
        return labels

    def _offer_groups(self, df: pd.DataFrame) -> None:
        """Refill the group list with the groups in ``df``, keeping the choice."""
        if not self.by:
            return
        chosen = self.groups.value
        options = tuple(sorted(set(self._labels(df).unique()) | set(chosen)))
        if options != tuple(self.groups.options):
            self._quiet = True
            try:
                self.groups.options = options
                self.groups.value = chosen
                self.groups.rows = max(2, min(8, len(options)))
            finally:
                self._quiet = False

    def _view(self, df: pd.DataFrame) -> "_View":
        """What is drawn: the chosen groups' rows and column, as of now."""
        if self.by and self.groups.value and len(df):
            df = df[self._labels(df).isin(self.groups.value)]
        return _View(df, self.y, self.label, self.title, bool(self.groups.value))

    def _empty_view(self) -> "_View":
        return _View(pd.DataFrame(columns=[*self.by, self.x, self.y]), self.y, self.label,
                     self.title, False)

    def _png(self, view: "_View") -> bytes:
        buf = io.BytesIO()
        self._figure(view).savefig(buf, format="png", dpi=150)
        return buf.getvalue()

    def _figure(self, view: "_View"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        import matplotlib.dates as mdates

        df, y = view.rows, view.y
        fig = Figure(figsize=self.figsize, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if len(df):
            groups = [(k, g.sort_values(self.x)) for k, g in df.groupby(self.by, sort=True)] \
                if self.by else [(y, df.sort_values(self.x))]
            # The largest by latest value get a line and a legend entry each; the rest are
            # drawn thin and grey under one entry, so the legend stays readable. Groups
            # the user chose are all drawn in colour.
            groups.sort(key=lambda kg: -_last(kg[1][y]))
            cut = len(groups) if view.chosen else self.max_lines
            shown, rest = groups[:cut], groups[cut:]
            for i, (key, g) in enumerate(rest):
                ax.plot(g[self.x], g[y], color="0.75", linewidth=0.8, zorder=1,
                        label=f"{len(rest)} others" if i == 0 else None)
            for key, g in sorted(shown, key=lambda kg: str(kg[0])):
                label = ", ".join(map(str, key)) if isinstance(key, tuple) else str(key)
                ax.plot(g[self.x], g[y], label=label, linewidth=1.5, zorder=2)
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
        ax.set_title(view.title, fontsize="medium")
        ax.set_ylabel(view.label)
        ax.set_xlabel(f"{'window start' if self._is_agg else self.x} ({_zone_name(self.tz)})")
        if self.zero and len(df) and df[y].min() >= 0:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        return fig

    def _latest_html(self, view: "_View") -> str:
        df = view.rows
        if not len(df):
            return ""
        latest = df.sort_values(self.x).groupby(self.by, sort=True).tail(1) if self.by else df.tail(1)
        if self.by:
            latest = latest.sort_values(self.by)   # a readout by group, in the legend's order
        latest = latest[[*self.by, self.x, view.y]].rename(columns={view.y: view.label})
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


class _View(typing.NamedTuple):
    """A picture's content: drawn once on screen, again by savefig()."""
    rows: pd.DataFrame
    y: str
    label: str
    title: str
    chosen: bool   # the user chose the groups: every one gets a line of its own


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
