"""LivePlot without a browser: the widget's state follows the data; errors never escape.

Refreshing on the kernel's event loop while other cells run is checked by executing
notebooks/live_dashboard.ipynb (tests/test_notebooks.py).
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

import zpandas as zp

from .conftest import wait_for

PNG = b"\x89PNG\r\n\x1a\n"


def rows(start: str, n: int = 100) -> pd.DataFrame:
    t = pd.Timestamp(start, tz="UTC")
    return pd.DataFrame({"timestamp": t + pd.to_timedelta(range(n), unit="s"),
                         "host": ["a", "b"] * (n // 2), "value": range(n)})


def test_widget_state_changes_as_data_arrives():
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        agg = sub.aggregate(by="host", values={"value": ["mean", "count"]}, window="10s")
        plot = zp.LivePlot(agg, y="value_mean", interval=0.1)
        assert not plot.running  # no event loop here: refresh() by hand
        empty = plot.png
        assert empty.startswith(PNG) and plot.table.value == ""
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(rows("2026-11-01T10:00:00"))
            wait_for(lambda: agg.stats()["rows"] == 100, what="rows aggregated")
            plot.refresh()
            one = plot.png
            assert one != empty and "latest" in plot.table.value
            assert "100 rows" in plot.status.value and "1 of 1 producers alive" in plot.status.value
            p.send(rows("2026-11-01T10:01:40"))
            wait_for(lambda: agg.stats()["rows"] == 200, what="more rows")
            plot.refresh()
            assert plot.png != one
        plot.pause.value = True
        assert plot.pause.description == "resume"
        plot.refresh()
        assert "paused" in plot.status.value
        plot.backlog.value = 2  # the slider redraws with fewer windows
        assert plot.refreshes >= 4 and plot.last_error is None


def test_plot_of_raw_rows_and_headless_png(tmp_path):
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(rows("2026-11-01T10:00:00"))
        sub.collect(producers=1, timeout=10)
        plot = zp.LivePlot(sub, y="value", by="host", start=False)
        png = plot.to_png(tmp_path / "plot.png")
    assert png.startswith(PNG) and (tmp_path / "plot.png").read_bytes() == png


def test_a_failing_refresh_is_shown_not_raised(monkeypatch):
    agg = zp.Aggregation(by="host", values={"value": "sum"}, window="1s")
    plot = zp.LivePlot(agg, start=False)
    agg.update(rows("2026-11-01T10:00:00", 10))

    def broken(**kwargs):
        raise RuntimeError("a bad moment")

    monkeypatch.setattr(agg, "result", broken)
    plot.refresh()
    assert plot.last_error and "refresh failed" in plot.status.value and "a bad moment" in plot.status.value


def test_the_plot_shows_the_column_its_title_and_axis_name():
    agg = zp.Aggregation(by="host", values={"value": ["count", "mean", "max"]}, window="10s",
                         where="value >= 0")
    agg.update(rows("2026-11-01T10:00:00", 100))
    with pytest.raises(ValueError, match="not a result.*value_count"):
        zp.LivePlot(agg, y="value_median", start=False)
    plot = zp.LivePlot(agg, y="value_mean", start=False)
    assert plot.title == "mean of value, 10s windows where value >= 0, by host"
    result = agg.result()
    ax = drawn(plot)[1]
    assert ax.get_title() == plot.title and ax.get_ylabel() == "mean of value"
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    for line, (_, want) in zip(ax.lines, result.groupby("host")):
        assert list(line.get_ydata()) == want["value_mean"].tolist()   # the mean, not the count
    # a title of one's own is used as given; the axis still names what is drawn
    own = zp.LivePlot(agg, y="value_max", title="hottest hosts", start=False)
    ax = drawn(own)[1]
    assert (ax.get_title(), ax.get_ylabel()) == ("hottest hosts", "max of value")
    plot.refresh()
    assert "mean of value" in plot.table.value and "10:01:30" in plot.table.value  # times, short


def test_bad_sources_are_clear():
    with pytest.raises(TypeError, match="Aggregation or a Subscriber"):
        zp.LivePlot(pd.DataFrame())
    with pytest.raises(ValueError, match="windows"):
        zp.LivePlot(zp.Aggregation(values={"v": "sum"}))


def spanning(span: str, window: str, hosts: int = 3) -> zp.Aggregation:
    """An aggregation of ``hosts`` lines over ``span`` of event time, from 05:19:58 UTC."""
    t = pd.date_range("2026-12-05 05:19:58", periods=200, freq=pd.Timedelta(span) / 200, tz="UTC")
    agg = zp.Aggregation(by="host", values={"value": "mean"}, window=window)
    agg.update(pd.DataFrame({"timestamp": list(t) * hosts,
                             "host": [f"h{k:02d}" for k in range(hosts) for _ in t],
                             "value": [float(k * 1000 + i) for k in range(hosts) for i in range(200)]}))
    return agg


def drawn(plot: zp.LivePlot):
    """The figure of what ``plot`` shows now, drawn."""
    fig = plot._figure(plot._shown)
    fig.canvas.draw()
    return fig, fig.axes[0]


@pytest.mark.parametrize("span,window,ticks,offset", [
    ("30s", "1s", r"\d\d:\d\d|\d\d", "2026-Dec-05 05:20"),      # seconds: 05:20, 05, 10, ...
    ("30min", "1min", r"\d\d:\d\d", "2026-Dec-05"),
    ("12h", "10min", r"\d\d:\d\d", "2026-Dec-05"),
    ("10D", "1h", r"\d\d", "2026-Dec"),                          # days of the month
    ("400D", "1D", r"\d{4}|[A-Z][a-z]{2}", ""),                  # months, years
])
def test_time_axis_ticks_are_times_a_person_reads(span, window, ticks, offset):
    fig, ax = drawn(zp.LivePlot(spanning(span, window), start=False, backlog=10_000))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) >= 4 and all(re.fullmatch(ticks, x) for x in labels), labels
    assert ax.xaxis.get_offset_text().get_text() == offset   # the date, once
    assert ax.get_xlabel() == "window start (UTC)"


def test_the_time_axis_reads_in_the_zone_asked_for():
    fig, ax = drawn(zp.LivePlot(spanning("30min", "1min"), start=False, tz="Europe/Paris",
                                backlog=10_000))
    assert ax.get_xticklabels()[0].get_text() == "06:20"         # 05:20 UTC is 06:20 in Paris
    assert ax.get_xlabel() == "window start (Europe/Paris)"
    with pytest.raises(ValueError, match="unknown time zone"):
        zp.LivePlot(spanning("30min", "1min"), start=False, tz="Mars/Olympus")


@pytest.mark.parametrize("hosts", [1, 8, 30])
def test_the_legend_sits_outside_the_axes_and_hides_no_line(hosts):
    plot = zp.LivePlot(spanning("30min", "1min", hosts), start=False, backlog=10_000, max_lines=30)
    fig, ax = drawn(plot)
    assert len(ax.get_lines()) == hosts
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())   # so it covers no line, whatever the data
    assert legend.x1 <= fig.bbox.x1 + 1 and legend.y0 >= fig.bbox.y0 - 1   # and it is in the picture


def test_beyond_max_lines_the_largest_groups_have_lines_and_the_rest_one_entry():
    fig, ax = drawn(zp.LivePlot(spanning("30min", "1min", 45), start=False, backlog=10_000))
    assert len(ax.get_lines()) == 45                                   # every group is drawn
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names[0] == "35 others" and sorted(names[1:]) == [f"h{k}" for k in range(35, 45)]


def test_a_still_plot_has_no_controls_and_zero_starts_the_axis_at_zero():
    still = zp.LivePlot(spanning("30min", "1min"), start=False, zero=True)
    assert [type(c).__name__ for c in still.widget.children] == ["HTML", "HBox"]   # status, picture
    fig, ax = drawn(still)
    assert ax.get_ylim()[0] == 0
    # a still picture shows all it has, not the last 60 windows of a live one
    agg = spanning("2h", "1min")
    windows = agg.result()["window_start"].nunique()
    assert windows > 60
    assert len(drawn(zp.LivePlot(agg, start=False))[1].get_lines()[0].get_xdata()) == windows


def several() -> zp.Aggregation:
    t = pd.date_range("2026-12-05 05:00", periods=120, freq="30s", tz="UTC")
    agg = zp.Aggregation(by=["host", "dc"], values={"value": ["mean", "max"], "ms": "sum"},
                         window="1min")
    agg.update(pd.DataFrame({"timestamp": list(t) * 4, "host": [h for h in "abcd" for _ in t],
                             "dc": [d for d in ("x", "x", "y", "y") for _ in t],
                             "value": [float(k) for k in range(4) for _ in t], "ms": 2.0}), final=True)
    return agg


def test_the_statistic_groups_and_range_are_chosen_in_the_widget():
    agg = several()
    plot = zp.LivePlot(agg, backlog=10)
    controls = plot.widget.children[0].children
    assert plot.stat in controls and plot.backlog in controls and plot.all in controls
    assert [label for label, _ in plot.stat.options] == ["mean of value", "max of value", "sum of ms"]
    assert plot.y == "value_mean" and plot.title.startswith("mean of value, 1min windows")

    plot.stat.value = "ms_sum"                                   # the dropdown redraws
    fig, ax = drawn(plot)
    assert ax.get_ylabel() == "sum of ms" and ax.get_title().startswith("sum of ms")
    assert {v for line in ax.get_lines() for v in line.get_ydata()} == {4.0}   # 2 rows x 2.0
    assert "sum of ms" in plot.table.value

    # every group is offered, by its legend name; choosing some draws only those
    assert plot.groups.options == ("a, x", "b, x", "c, y", "d, y")
    plot.groups.value = ("b, x", "d, y")
    fig, ax = drawn(plot)
    assert [line.get_label() for line in ax.get_lines()] == ["b, x", "d, y"]
    assert ">a<" not in plot.table.value and ">d<" in plot.table.value

    # the last 10 windows, then all 60
    assert len(ax.get_lines()[0].get_xdata()) == 10
    plot.all.value = True
    assert plot.backlog.disabled
    assert len(drawn(plot)[1].get_lines()[0].get_xdata()) == 60
    # new groups keep the choice
    agg.update(pd.DataFrame({"timestamp": [pd.Timestamp("2026-12-05 06:00", tz="UTC")], "host": "e",
                             "dc": "z", "value": 9.0, "ms": 1.0}))
    plot.refresh()
    assert plot.groups.options[-1] == "e, z" and plot.groups.value == ("b, x", "d, y")
    assert plot.last_error is None


def test_chosen_groups_each_get_a_line_beyond_max_lines():
    agg = spanning("30min", "1min", 12)
    plot = zp.LivePlot(agg, start=False, max_lines=3)
    assert [t.get_text() for t in drawn(plot)[1].get_legend().get_texts()][0] == "9 others"
    plot.groups.value = tuple(f"h{k:02d}" for k in range(6))
    names = [t.get_text() for t in drawn(plot)[1].get_legend().get_texts()]
    assert names == [f"h{k:02d}" for k in range(6)]


def test_to_png_and_savefig_are_exactly_what_is_shown(tmp_path):
    agg = several()
    plot = zp.LivePlot(agg, start=False)
    plot.groups.value = ("a, x",)
    shown = plot.png
    assert plot.to_png(tmp_path / "p.png") == shown == (tmp_path / "p.png").read_bytes()
    # more rows arrive: the picture on screen is unchanged until it refreshes, and so
    # are to_png() and savefig()
    agg.update(pd.DataFrame({"timestamp": [pd.Timestamp("2026-12-05 07:00", tz="UTC")], "host": "a",
                             "dc": "x", "value": 50.0, "ms": 1.0}))
    assert plot.to_png() == shown
    plot.savefig(tmp_path / "p.svg")
    svg = (tmp_path / "p.svg").read_text()
    assert svg.startswith("<?xml") and "mean of value" in svg
    plot.refresh()
    assert plot.to_png() != shown
    plot.savefig(tmp_path / "p.pdf")
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")


def test_the_picture_takes_the_width_it_is_given_and_stays_sharp():
    plot = zp.LivePlot(spanning("30min", "1min"), start=False, figsize=(9, 3))
    assert plot.image.layout.max_width is None and plot.image.layout.flex == "1 1 0%"
    import matplotlib.image
    import io
    img = matplotlib.image.imread(io.BytesIO(plot.png), format="png")
    assert img.shape[:2] == (450, 1350)     # 9 x 3 inches at 150 dpi


def test_the_rate_is_never_negative_when_the_row_count_goes_down():
    """A Dask worker lost takes its rows out of the total: the status line said -63 rows/s."""
    class Source:   # a subscriber whose total drops, as a DaskSubscriber's does
        closed = False
        rows = [1000, 400]

        def stats(self):
            return {"rows": self.rows.pop(0) if len(self.rows) > 1 else self.rows[0],
                    "producers": pd.DataFrame({"producer": ["a"], "alive": [True]}),
                    "missed_rows": 0, "bad_frames": {}}

    plot = zp.LivePlot(spanning("30min", "1min"), start=False, subscriber=Source())
    plot.refresh()
    assert "-" not in plot.status.value.split(" rows/s")[0].split("·")[-1], plot.status.value
    assert " 0 rows/s" in plot.status.value
