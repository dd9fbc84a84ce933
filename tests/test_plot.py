"""LivePlot without a browser: the widget's state follows the data; errors never escape.

Refreshing on the kernel's event loop while other cells run is checked by executing
notebooks/live_dashboard.ipynb (tests/test_notebooks.py).
"""

from __future__ import annotations

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
        plot = zp.LivePlot(agg, interval=0.1)
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


def test_a_failing_refresh_is_shown_not_raised():
    agg = zp.Aggregation(by="host", values={"value": "sum"}, window="1s")
    plot = zp.LivePlot(agg, y="no_such_column", start=False)
    agg.update(rows("2026-11-01T10:00:00", 10))
    plot.refresh()
    assert plot.last_error and "refresh failed" in plot.status.value


def test_bad_sources_are_clear():
    with pytest.raises(TypeError, match="Aggregation or a Subscriber"):
        zp.LivePlot(pd.DataFrame())
    with pytest.raises(ValueError, match="windows"):
        zp.LivePlot(zp.Aggregation(values={"v": "sum"}))
