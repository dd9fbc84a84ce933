"""Parse blocks on a few threads while the next ones are read, and keep their order.

pyarrow's readers and polars release the GIL while they parse, so two blocks parse at
once on two cores: the producer's parsing, its largest cost, takes half the wall time
at the same CPU time per line (unlike Arrow's own threaded readers, which cost a third
more CPU). Results come back in the order the blocks were read, which is what the
stream's offsets, a checkpoint and deduplication need.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from .follow import Chunk
from .lines import LineFormat

__all__ = ["ParsePipeline", "default_threads"]


def default_threads() -> int:
    """Two parsing threads where there are two cores to run them; else one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


class ParsePipeline:
    """Parse :class:`Chunk` s with ``fmt`` on up to ``threads`` threads, in order.

    Parameters
    ----------
    fmt : LineFormat
    threads : int
        1 parses on the caller's thread, at :meth:`submit`.
    initializer : callable, optional
        Run first on each parsing thread (a replay lowers their priority).
    """

    def __init__(self, fmt: LineFormat, threads: int, *, initializer=None) -> None:
        self.fmt = fmt
        self.threads = max(1, threads)
        self._pool = (ThreadPoolExecutor(self.threads, thread_name_prefix="zpandas-parse",
                                         initializer=initializer)
                      if self.threads > 1 else None)
        self._queue: deque[tuple[Chunk, Future]] = deque()

    def submit(self, chunk: Chunk) -> None:
        # In file order: what a format must see in order (a CSV header) is taken here.
        records = self.fmt.begin(chunk.records, chunk.path, key=chunk.key, head=chunk.head)
        if self._pool is None or self.fmt.schema is None:
            # The first rows fix the column types: parsed alone, as they would be in order.
            done: Future = Future()
            done.set_result(self.fmt.parse_body(records, chunk.path, key=chunk.key))
            self._queue.append((chunk, done))
        else:
            self._queue.append((chunk, self._pool.submit(self.fmt.parse_body, records, chunk.path,
                                                         key=chunk.key)))

    @property
    def full(self) -> bool:
        """Enough blocks are in flight to keep every thread busy: take results first."""
        return len(self._queue) >= 2 * self.threads

    def results(self, *, wait: bool):
        """Yield ``(chunk, table, rejects)`` in order: all of them if ``wait``, else
        those ready, and the oldest while :attr:`full`."""
        while self._queue and (wait or self.full or self._queue[0][1].done()):
            chunk, future = self._queue.popleft()
            table, rejects = future.result()
            yield chunk, table, rejects

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()
