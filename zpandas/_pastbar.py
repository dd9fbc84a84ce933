"""How far history replies are, shown to the person waiting for them (see
:meth:`zpandas.Subscriber.history` and :meth:`~zpandas.Subscriber.wait_for_producers`)."""

from __future__ import annotations

import html
import sys
import time

__all__ = ["PastBar"]


class PastBar:
    """How far history replies are: bytes of file read of all the producers', producers
    done, rows. In a notebook an output updated in place (its text too, so a saved notebook
    shows where it ended), elsewhere a tqdm bar on stderr; shown when asked, or by default
    in a notebook. The caller shows it as replies arrive (it waits on the condition the
    worker notifies for each); drawn at most every 0.2 s, and once more at the end."""

    def __init__(self, show: bool | None) -> None:
        self._notebook = "ipykernel" in sys.modules
        self._show = self._notebook if show is None else show
        self._out = None      # a display handle (notebook) or a tqdm bar
        self._state: tuple | None = None
        self._drawn = 0.0

    def show(self, replies) -> None:
        if not self._show:
            return
        rows = [r for rep in replies for r in rep.report(time.monotonic())]
        total = sum(r["bytes_total"] for r in rows)
        if total:
            self._state = (sum(r["bytes_done"] for r in rows), total,
                           sum(r["status"] != "running" for r in rows), len(rows),
                           sum(r["rows"] for r in rows))
            if time.monotonic() - self._drawn >= 0.2:
                self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        done, total, finished, producers, rows = self._state
        text = (f"the past: {_size(done)} of {_size(total)} ({100 * done / total:.0f}%), "
                f"{finished} of {producers} producers done, {rows:,} rows")
        if self._notebook:
            from IPython.display import display
            view = _Text(text, f'<progress value="{done}" max="{total}" style="width: 40%"></progress> '
                               f"<span>{html.escape(text[len('the past: '):])}</span>")
            if self._out is None:
                self._out = display(view, display_id=True)
            else:
                self._out.update(view)
            return
        if self._out is None:
            from tqdm import tqdm

            class Bar(tqdm):
                monitor_interval = 0   # drawn here as replies come: no thread of tqdm's

            self._out = Bar(desc="the past", unit="B", unit_scale=True, unit_divisor=1024,
                            total=total, leave=True)
        self._out.total, self._out.n = total, done
        self._out.set_postfix_str(f"{finished} of {producers} producers done, {rows:,} rows",
                                  refresh=False)
        self._out.refresh()

    def __enter__(self) -> PastBar:
        return self

    def __exit__(self, *exc) -> None:
        if self._state is not None:
            self._draw()
        if self._out is not None and not self._notebook:
            self._out.close()


class _Text:
    """Something to display: text, and HTML for a notebook."""

    def __init__(self, text: str, html_: str) -> None:
        self._text, self._html = text, html_

    def __repr__(self) -> str:
        return self._text

    def _repr_html_(self) -> str:
        return self._html


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"
