"""Every notebook in notebooks/ executes cleanly, in a real kernel, in bounded time.

Notebooks show; these tests assert. After a notebook's own cells, the test runs cells of
checks in the same kernel (CHECKS: the aggregation equals pandas, the Parquet file holds
every row...). Notebooks not yet rewritten for readers still assert in their cells, so a
clean run of them is a check too. Outputs are never committed.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))

#: Run after a notebook's cells, in its kernel: what it shows, asserted.
CHECKS = {
    "quickstart.ipynb": """
assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)   # every producer ended well
assert len(df) == 40_000 and df["host"].nunique() == 4
expected = (df[df["metric"] == "cpu_pct"]
            .groupby([pd.Grouper(key="timestamp", freq="5min"), "host"])["value"]
            .agg(["count", "mean", "max"]).reset_index())
assert (result["value_count"].to_numpy() == expected["count"].to_numpy()).all()
assert (result["value_mean"] - expected["mean"]).abs().max() < 1e-9
assert (result["value_max"].to_numpy() == expected["max"].to_numpy()).all()
assert result["final"].all()   # all the rows there are, given with final=True
assert len(back) == len(result) and os.path.exists(os.path.join(OUT, "quickstart.png"))
""",
    # the plot redraws while a cell awaits, pause stops it, the stop button's function ends
    # the tails cleanly and removes the logs, and an idle stream's windows all close
    "live_dashboard.ipynb": """
import asyncio
first, n0 = plot.png, plot.refreshes
for _ in range(600):
    await asyncio.sleep(0.05)
    if plot.refreshes >= n0 + 4 and plot.png != first and sub.stats()["rows"] > 0:
        break
assert plot.running and plot.refreshes >= n0 + 4 and plot.png != first, (plot.refreshes, plot.last_error)
plot.pause.value = True
n = plot.refreshes
await asyncio.sleep(1.2)
assert plot.refreshes == n
plot.pause.value = False
stop_nodes()
assert [p.poll() for p in tails] == [-signal.SIGTERM] * 3 and not os.path.exists(logs)
assert summary.value.startswith("stopped:") and stop_button.disabled
for _ in range(600):
    await asyncio.sleep(0.05)
    if agg.stats()["windows_open"] == 0:
        break
stats = agg.stats()
assert stats["windows_open"] == 0 and agg.result()["final"].all()
assert set(agg.result()["host"]) == {"node1", "node2", "node3"}
assert stats["late_rows"] < 0.01 * sub.stats()["rows"], stats
plot.stop()
sub.close()
""",
    # every node's rows on the workers, the dead worker's buckets moved and its loss counted
    # while the stream went on, and every producer ended by its SIGTERM
    "dask_cluster.ipynb": """
assert set(summary.index) == {f"node{n}" for n in range(1, 9)}
assert move["worker"] == victim and victim not in set(after["worker"])
assert set(after["name"]) == {f"node{n}" for n in range(1, 9)}
assert sent == kept + lost and lost > 0          # the printed account adds up
assert codes == [-signal.SIGTERM] * 8 and not os.path.exists(logs)
""",
    # every node answered with its half hour; the burst of 25 minutes ago is on the plot's
    # data (from the past), live rows go on after it, and the stop button ends the nodes
    "history.ipynb": """
import asyncio
h = sub.stats()["history"]
assert h.head(8)["status"].tolist() == ["done"] * 8 and (h.head(8)["rows"] > 3000).all()
res = errors.result()
spike = res[(res["window_start"] >= now - pd.Timedelta("27min"))
            & (res["window_start"] < now - pd.Timedelta("23min"))]
assert set(spike.groupby("host")["status_count"].sum().nlargest(3).index) == {"web2", "web5", "web7"}
assert res["window_start"].min() <= now - pd.Timedelta("29min")
# the one-off question: only the rows and columns asked for
assert set(burst.columns) == {"timestamp", "host", "path", "status", "_file", "_offset"}
assert (burst["status"] >= 500).all() and 500 < len(burst) < 2000
# the live view: the same errors, filtered on the nodes, three columns
errs = only_errors.frame()
assert set(errs.columns) == {"timestamp", "host", "status", "_file", "_offset"}
assert (errs["status"] >= 500).all() and len(errs) >= len(burst)
assert only_errors.stats()["history"]["status"].tolist() == ["done"] * 8
only_errors.close()
rows0 = sub.stats()["rows"]
for _ in range(200):
    await asyncio.sleep(0.05)
    if sub.stats()["rows"] > rows0 + 16:
        break
assert sub.stats()["rows"] > rows0 + 16 and plot.last_error is None and plot.png.startswith(b"\\x89PNG")
stop_nodes()
assert [p.poll() for p in publishers] == [-signal.SIGTERM] * 8 and not os.path.exists(logs)
plot.stop()
sub.close()
proxy.close()
""",
    # through the CURVE proxy: every row, the intruder refused and counted, its row absent,
    # and the keys made for the example removed
    "multi_node.ipynb": """
assert len(df) == 20_000 and set(df["host"]) == {"node1", "node2"}
assert intruder.stats()["auth_failures"] >= 1 and "evil" not in set(df["host"])
assert not os.path.exists(work)
""",
}


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "live_dashboard.ipynb", "multi_node.ipynb", "dask_cluster.ipynb",
            "history.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebooks_are_written_for_a_reader(path):
    """They show; the checks live here. No asserts, polling loops or dunder tricks."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for pattern in (r"^\s*assert\b", r"\bawait\b", r"for _ in range", r"^while\b", r"__import__"):
        assert not re.search(pattern, code, re.M), f"{os.path.basename(path)}: {pattern}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path}: outputs committed"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ZPANDAS_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    checks = CHECKS.get(os.path.basename(path))
    if checks is not None:
        nb.cells.append(nbformat.v4.new_code_cell(checks))
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    # Our own event loop, closed afterwards (nbclient's execute() keeps one per thread).
    # Raises CellExecutionError, with the cell and its traceback, on failure.
    asyncio.run(client.async_execute())
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    shown = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for pattern in SHOWN.get(os.path.basename(path), []):
        assert re.search(pattern, shown), f"{path} does not show {pattern!r}"


#: What a reader sees in a notebook's outputs (regular expressions).
SHOWN = {
    # how far the past is, where it ended (the output is updated in place)
    "history.ipynb": [r"the past: [\d.]+ MB of [\d.]+ MB \(100%\), 8 of 8 producers done, [\d,]+ rows",
                      r"\d+ error rows in \d+ kB"],
}
