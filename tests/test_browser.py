"""The notebooks as a user sees them: JupyterLab in a real (headless) Chromium.

JupyterLab is started on 127.0.0.1 with a copy of notebooks/ (and data/ beside it);
Playwright drives Debian's Chromium (no browser download: ``executable_path``). Every
notebook runs with Run All, and no cell may show an error. The others run to their end; the
live dashboard stays live until its stop button is pressed, and the test checks what the page
shows:

* the LivePlot widget's picture is rendered, and changes between two moments;
* it has a line per host (the three line colours, counted in the picture's pixels);
* a ``1+1`` cell returns ``2`` while the plot keeps updating;
* then the last cell runs, and no cell shows an error.

The picture is saved as ``out/browser/liveplot.png`` (docs/notebook.md's LivePlot picture is one).
Skips, with the reason, where Chromium or Playwright or JupyterLab is not installed;
``.ci/run`` installs them (``make browser``).
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from .conftest import ROOT, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                                "make browser)"),
    pytest.mark.timeout(420),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (make browser)")
pytest.importorskip("jupyterlab", reason="jupyterlab not installed (make browser)")

# matplotlib's default colours of the first three lines (tab10), as drawn
HOST_COLOURS = {"node1": (31, 119, 180), "node2": (255, 127, 14), "node3": (44, 160, 44)}
# Chromium as root in a closed network: no sandbox, no GPU, no background connections
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/ (data/ beside it, as in the
    repository); yields its URL and token."""
    shutil.copytree(os.path.join(ROOT, "notebooks"), tmp_path / "notebooks")
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "lab.log", "wb")   # a file, not a pipe nobody reads: it never fills
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / ".jupyter"),
               ZPANDAS_OUT=str(tmp_path / "out"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / ".runtime"), JUPYTER_DATA_DIR=str(tmp_path / ".data"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab ended: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=120, interval=0.2, what="jupyter lab to answer")
        yield url, token
    finally:
        # Shutting the server down ends its kernels, and with them (zp.spawn) the tails.
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _colour_pixels(png: bytes) -> dict[str, int]:
    from matplotlib import image
    rgb = (image.imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(int)
    return {host: int((np.abs(rgb - np.array(c)).max(axis=-1) <= 12).sum())
            for host, c in HOST_COLOURS.items()}


def open_and_run_all(browser, lab, name: str):
    """A page with notebooks/``name`` open in JupyterLab, Run All started."""
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/notebooks/{name}?token={token}")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    page.evaluate("(cmd) => window.jupyterapp.commands.execute(cmd)", "notebook:run-all-cells")
    return page


def outputs(page) -> list[dict]:
    """Every code cell's outputs, from the notebook's model (JupyterLab leaves cells out of
    view out of the page, so the page alone would not show them all)."""
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .filter(c => c.model.type === 'code').flatMap(c => c.model.outputs.toJSON())""")


def shown_text(page) -> str:
    """The text of every output: streams, and results as text."""
    parts = []
    for o in outputs(page):
        text = o.get("text") or o.get("data", {}).get("text/plain") or ""
        parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def assert_no_error_shown(page) -> None:
    bad = [o for o in outputs(page) if o["output_type"] == "error"
           or (o.get("name") == "stderr" and re.search(r"error|traceback", "".join(o["text"]), re.I))]
    assert not bad, bad


@pytest.fixture
def browser():
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("name", ["quickstart.ipynb", "multi_node.ipynb", "dask_cluster.ipynb",
                                  "history.ipynb"])
def test_every_notebook_runs_all_in_a_real_browser(lab, browser, name):
    if name == "dask_cluster.ipynb":
        pytest.importorskip("distributed", reason="Dask not installed: pip install '.[dask]'")
    page = open_and_run_all(browser, lab, name)
    # every code cell ran (has its number) and the kernel is idle
    page.wait_for_function("""() => {
        const w = window.jupyterapp.shell.currentWidget, cells = w.content.widgets;
        return w.sessionContext.session.kernel.status === 'idle'
            && cells.filter(c => c.model.type === 'code').every(c => c.model.executionCount !== null);
    }""", timeout=240_000, polling=500)
    assert_no_error_shown(page)
    text = shown_text(page)
    if name == "quickstart.ipynb":
        assert page.locator(".jp-OutputArea-output img").count() >= 1   # the LivePlot picture
        assert "40,000 rows from 4 hosts" in text
    if name == "history.ipynb":
        assert re.search(r"[\d,]+ error rows in [\d,]+ kB \(all rows of the half hour: [\d,]+ kB\)", text)
        assert page.locator(".jp-OutputArea-output img").count() >= 1   # the LivePlot picture
    if name == "dask_cluster.ipynb":
        # the loss, in numbers that add up, as the page shows them
        m = re.search(r"\(([\d,]+) \+ ([\d,]+) = ([\d,]+)\)", text)
        assert m, text[-3000:]
        kept, lost, sent = (int(g.replace(",", "")) for g in m.groups())
        assert kept + lost == sent and lost > 0
        assert re.search(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", text)


def test_live_dashboard_in_a_real_browser(lab, browser, tmp_path):
    # Run All: the dashboard stays live until its stop button is pressed.
    page = open_and_run_all(browser, lab, "live_dashboard.ipynb")
    image = page.locator(".jp-OutputArea-output img").first
    image.wait_for(timeout=120_000)
    # the plot keeps changing for 30 s and more: a new picture at least every 6 s
    last, changed_at, start = image.screenshot(), time.monotonic(), time.monotonic()
    while time.monotonic() - start < 30:
        shot = image.screenshot()
        now = time.monotonic()
        if shot != last:
            last, changed_at = shot, now
        assert now - changed_at < 6, f"the plot stopped changing after {changed_at - start:.0f} s"
        page.wait_for_timeout(500)   # between screenshots (a sampling rate, not a sync)
    seen = {}

    def a_line_per_host() -> bool:  # each host's line long enough to count
        seen.update(_colour_pixels(image.screenshot()))
        return all(n >= 150 for n in seen.values())

    wait_for(a_line_per_host, timeout=60, interval=0.5, what="a line per host")
    # the latest-values table sits beside the picture, inside the output area
    widget = page.locator(".jp-OutputArea-output .widget-vbox").first.bounding_box()
    picture = image.bounding_box()
    table = page.locator(".jp-OutputArea-output .widget-html", has_text="latest").first.bounding_box()
    assert table["x"] >= picture["x"] + picture["width"] - 1, (picture, table)
    assert table["x"] + table["width"] <= widget["x"] + widget["width"] + 1, (widget, table)
    # A new cell at the end runs while the plot updates
    before = image.screenshot()
    page.evaluate("""() => {
        const app = window.jupyterapp, nb = app.shell.currentWidget.content;
        nb.activeCellIndex = nb.widgets.length - 1;
        return app.commands.execute('notebook:insert-cell-below').then(() => {
            nb.activeCell.model.sharedModel.setSource('1+1');
            return app.commands.execute('notebook:run-cell');
        });
    }""")
    page.wait_for_function("""() => window.jupyterapp.shell.currentWidget.content.widgets.some(
        c => c.model.sharedModel.getSource() === '1+1' && c.model.outputs && c.model.outputs.length
             && c.model.outputs.get(0).data['text/plain'] === '2')""", timeout=60_000)
    wait_for(lambda: image.screenshot() != before, timeout=30, interval=0.3,
             what="the plot to go on changing after 1+1")
    out = os.path.join(ROOT, "out", "browser")
    os.makedirs(out, exist_ok=True)
    page.locator(".jp-OutputArea-output .widget-vbox").first.screenshot(
        path=os.path.join(out, "liveplot.png"))
    # The stop button: the nodes stop, and it says what arrived
    page.get_by_role("button", name="stop the nodes").click()
    page.locator(".jp-OutputArea-output", has_text="stopped:").wait_for(timeout=60_000)
    assert_no_error_shown(page)
