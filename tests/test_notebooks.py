"""Every notebook in notebooks/ executes cleanly, in a real kernel, in bounded time.

The notebooks assert what they show (the aggregation equals pandas, the live plot
redraws while another cell runs, pause stops it, an idle stream's windows close), so a
clean run is a real check. Outputs are never committed.
"""

from __future__ import annotations

import asyncio
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "live_dashboard.ipynb", "multi_node.ipynb"} <= names


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
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    # Our own event loop, closed afterwards (nbclient's execute() keeps one per thread).
    # Raises CellExecutionError, with the cell and its traceback, on failure.
    asyncio.run(client.async_execute())
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
