"""Event-time progress of an aggregation's producers: watermark and finality, sans-IO.

As Flink treats event time with idle sources. Each producer's *progress* is the latest
event time it has sent. The *watermark* is the slowest active producer's progress minus
``lateness``: a producer is active until it ends its stream or sends nothing for ``idle``
seconds, so a node that is a little behind (a busy CPU, a slower link, a file read
later) holds the watermark back instead of having its rows called late. A window becomes
*final* once the watermark has stayed past its end for ``idle`` seconds of wall-clock
time - the time a producer that starts late, or stalls, has to catch up - or at once
when every producer has been quiet for ``idle`` seconds; the watermark then follows the
wall clock, so the last windows of a quiet stream close too, and all of them if every
producer ended its stream.

No threads and no clock of its own: every call that needs the time is given ``now``
(``time.monotonic()`` seconds), so tests set it. :meth:`EventTime.arrived` may be called
from another thread than the rest (a Subscriber's socket thread): it has a lock of its own.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import pandas as pd


class EventTime:
    """Progress, watermark and finality over the sources of an aggregation's rows.

    Parameters
    ----------
    lateness : pandas.Timedelta
    idle : float
        Seconds (see the module's docstring).
    window : pandas.Timedelta
        The longest window: once every source ended, every window is final.
    """

    def __init__(self, lateness: pd.Timedelta, idle: float, window: pd.Timedelta) -> None:
        self.lateness, self.idle, self.window = lateness, idle, window
        self.progress: dict[object, pd.Timestamp] = {}   # source -> latest event time
        self.ended: set = set()
        self.final_through: pd.Timestamp | None = None   # windows ending by then are final
        self._arrivals: dict[object, float] = {}         # source -> when its last rows came
        self._arrivals_lock = threading.Lock()
        self._marks: collections.deque = collections.deque()  # (now, watermark) as it changed

    def arrived(self, source, now: float, ago: float = 0.0) -> None:
        """Rows of ``source`` arrived ``ago`` seconds before ``now`` (any thread)."""
        with self._arrivals_lock:
            self._arrivals[source] = now - max(0.0, ago)

    def end(self, source) -> None:
        """``source`` ended its stream: it holds nothing back any more."""
        self.ended.add(source)

    def complete(self) -> None:
        """The caller says no more rows come for the time seen so far: every window up
        to the latest progress is final now."""
        if self.progress and self.window is not None:
            through = max(self.progress.values()) + self.window
            if self.final_through is None or through > self.final_through:
                self.final_through = through

    def advance(self, ts: pd.Series, sources: list) -> None:
        """Each source's progress from its rows: ``ts``, the event times of consecutive
        slices ``sources`` = [(source, rows), ...]."""
        sizes = np.array([n for _, n in sources], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        nonempty = sizes > 0
        latest = np.maximum.reduceat(ts.to_numpy(dtype="datetime64[ns]"), starts[nonempty])
        for (source, _), t in zip([s for s, keep in zip(sources, nonempty) if keep], latest):
            t = pd.Timestamp(t).tz_localize(ts.dt.tz)
            old = self.progress.get(source)
            self.progress[source] = t if old is None or t > old else old
            self.ended.discard(source)  # it sends again

    def watermark(self, now: float) -> tuple[pd.Timestamp | None, list]:
        """The watermark at ``now`` and the sources holding it (none: every one quiet or
        ended)."""
        if not self.progress:
            return None, []
        with self._arrivals_lock:
            arrivals = dict(self._arrivals)
        active = [s for s in self.progress
                  if s not in self.ended and now - arrivals.get(s, -np.inf) < self.idle]
        if active:
            return min(self.progress[s] for s in active) - self.lateness, active
        wm = max(self.progress.values()) - self.lateness
        quiet = now - max(arrivals.values(), default=now)
        if quiet >= self.idle:
            wm += pd.Timedelta(seconds=quiet)  # a quiet stream's clock is the wall clock
        return wm, []

    def finality(self, now: float) -> pd.Timestamp | None:
        """Move ``final_through`` to the lowest the watermark was over the last ``idle``
        seconds (a producer that joins behind lowers it, and so holds windows open); once
        every producer has been quiet that long, to the watermark as it is, and past
        every window if every producer ended. Returns ``final_through``."""
        wm, _ = self.watermark(now)
        if wm is None:
            return None
        marks = self._marks
        if not marks or wm != marks[-1][1]:
            marks.append((now, wm))
        cutoff = now - self.idle
        while len(marks) >= 2 and marks[1][0] <= cutoff:
            marks.popleft()    # marks[0] is the watermark in effect at the cutoff
        with self._arrivals_lock:
            last = max(self._arrivals.values(), default=now)
        if now - last >= self.idle:
            ended = self.ended >= self.progress.keys()
            candidate = max(self.progress.values()) + self.window if ended else wm
        elif marks[0][0] <= cutoff:
            candidate = min(w for _, w in marks)
        else:
            return self.final_through
        if self.final_through is None or candidate > self.final_through:
            self.final_through = candidate
        return self.final_through

    def slowest(self, active: list):
        """The active source furthest behind (None if there is none)."""
        return min(active, key=self.progress.__getitem__, default=None)
