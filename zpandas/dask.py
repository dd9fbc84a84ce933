"""zpandas on a Dask cluster: a stream shared by Subscribers on the workers.

Producers shard their stream into buckets (``Producer(shards=N)``, ``publish --shards N``):
each message goes under the topic of one bucket, and ZeroMQ sends it only to the
subscribers of that bucket. :class:`DaskSubscriber` starts a Subscriber on every worker
of a ``distributed.Client`` with its share of the buckets (inside a Dask actor, which lives
as long as the stream), and offers from the client what a Subscriber offers in a notebook:

* :meth:`~DaskSubscriber.frame` - a ``dask.dataframe.DataFrame`` whose partitions are the
  workers' retained rows (computed on the workers, never copied to the client);
* :meth:`~DaskSubscriber.aggregate` - an aggregation per worker, combined exactly on the
  client (:func:`zpandas.aggregate.combine`), which a :class:`~zpandas.LivePlot` shows as
  it shows a local one;
* :meth:`~DaskSubscriber.to_parquet` - one partitioned dataset, written by the workers;
* :meth:`~DaskSubscriber.stats`, :meth:`~DaskSubscriber.gaps` - gathered, a row per
  producer and topic, with the worker that received it;
* :meth:`~DaskSubscriber.rebalance` - a lost worker's buckets move to the live ones (also
  done by every call above): the new owners join those streams late, and what was lost
  shows as ``"joined late"`` gaps and ``skipped_rows``, never silently.

Where workers connect: the same ``endpoints`` serve every worker, so they must not depend on
the worker - producers that bind (``@tcp://*:5556`` on each node; workers connect to every
node), or a :class:`~zpandas.Proxy` that producers and workers both connect to.

Needs Dask: ``pip install '.[dask]'`` in zpandas' folder (or ``pip install 'dask[distributed,dataframe]'``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid

import pandas as pd

from .aggregate import Aggregation, combine
from .shards import shard_topics

try:
    import dask.dataframe as dd
    import distributed
except ImportError as e:  # pragma: no cover - an optional extra
    raise ImportError("zpandas.dask needs Dask: pip install 'dask[distributed,dataframe]' "
                      "(or, in zpandas' folder, pip install '.[dask]')") from e

__all__ = ["DaskSubscriber", "DaskAggregation"]

_ids = itertools.count(1)


class _Shard:
    """The worker side: Subscribers of some buckets, and their aggregations (a Dask actor).

    A bucket set taken over from a lost worker gets a Subscriber of its own, so that the
    first one's subscriptions never change under it.
    """

    def __init__(self, endpoints, topic: str, shards: int, buckets: list[int], options: dict) -> None:
        self.endpoints, self.topic, self.shards, self.options = endpoints, topic, shards, options
        self.subscribers: list = []               # (buckets, Subscriber)
        self.aggregations: dict[str, tuple[dict, list]] = {}   # id -> (spec, [Aggregation])
        self.take(buckets)

    def take(self, buckets: list[int]) -> list[str]:
        """Start receiving ``buckets``; return this worker's endpoints (ports resolved)."""
        from .subscriber import Subscriber

        if buckets:
            sub = Subscriber(self.endpoints, topics=shard_topics(self.topic, buckets, self.shards),
                             **self.options)
            self.subscribers.append((list(buckets), sub))
            for spec, aggs in self.aggregations.values():
                aggs.append(sub.aggregate(**spec))
        return self.resolved()

    def resolved(self) -> list[str]:
        return [ep for _, sub in self.subscribers for ep in sub.endpoints]

    def frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        frames = [sub.frame() for _, sub in self.subscribers]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else \
            frames[0] if frames else pd.DataFrame()
        return df if columns is None else df.reindex(columns=columns)

    def meta(self) -> pd.DataFrame:
        """The columns and dtypes of :meth:`frame`, without converting its rows."""
        frames = [sub.frame(last=0) for _, sub in self.subscribers]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def stats(self) -> list[dict]:
        return [sub.stats() for _, sub in self.subscribers]

    def gaps(self) -> pd.DataFrame:
        frames = [sub.gaps() for _, sub in self.subscribers]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def rejects(self) -> pd.DataFrame:
        frames = [sub.rejects() for _, sub in self.subscribers]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def aggregate(self, key: str, spec: dict) -> None:
        self.aggregations[key] = (spec, [sub.aggregate(**spec) for _, sub in self.subscribers])

    def partials(self, key: str) -> list:
        return [agg._partials() for agg in self.aggregations[key][1]]

    def agg_stats(self, key: str) -> list[dict]:
        return [agg.stats() for agg in self.aggregations[key][1]]

    def late(self, key: str) -> pd.DataFrame:
        frames = [agg.late() for agg in self.aggregations[key][1]]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def to_parquet(self, path: str, index: int, partition_by=None) -> int:
        """Write this worker's rows into the dataset at ``path`` under names of its own
        (``part-<index>...``), beside the other workers' files; return the rows."""
        import pyarrow as pa
        import pyarrow.dataset as pads

        from .parquet import to_parquet
        df = self.frame()
        if not len(df):
            return 0
        if partition_by is None:
            to_parquet(df, os.path.join(path, f"part-{index:04d}.parquet"))   # atomic, per file
        else:
            parts = [partition_by] if isinstance(partition_by, str) else list(partition_by)
            pads.write_dataset(pa.Table.from_pandas(df, preserve_index=False), path, format="parquet",
                               partitioning=parts, partitioning_flavor="hive",
                               basename_template=f"part-{index:04d}-{{i}}.parquet",
                               existing_data_behavior="overwrite_or_ignore")
        return len(df)

    def close(self) -> None:
        for _, sub in self.subscribers:
            sub.close()
        self.subscribers.clear()


def _on_worker(actor_key: str, method: str, *args):
    """Call a method of this worker's actor, from a task running on the worker: what it
    returns stays on the worker (a partition of a Dask DataFrame, say)."""
    actor = distributed.get_worker().state.actors[actor_key]
    return getattr(actor, method)(*args)


class DaskSubscriber:
    """A sharded stream received by a Subscriber on each worker of a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
    endpoints : str or list of str
        Where every worker's Subscriber listens or connects (see the module's docstring).
    topic : str
        The producers' topic; they send with ``shards=shards``.
    shards : int, default 16
        Buckets of the stream (the producers' ``shards``); each worker takes a share.
    workers : list of str, optional
        Worker addresses to use (default: every worker of ``client`` now).
    **options
        Passed to each worker's :class:`~zpandas.Subscriber` (``retain``, ``policy``, ...).

    Examples
    --------
    >>> from distributed import Client                                       # doctest: +SKIP
    >>> ds = zpandas.dask.DaskSubscriber(Client(), ">tcp://proxy:5560", topic="metrics",
    ...                                  shards=16)                           # doctest: +SKIP
    >>> ds.frame().groupby("host")["value"].mean().compute()                 # doctest: +SKIP
    """

    def __init__(self, client, endpoints, *, topic: str, shards: int = 16, workers=None,
                 **options) -> None:
        if not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive int, not {shards!r}")
        self.client, self._endpoints, self.topic, self.shards = client, endpoints, topic, shards
        self._options = options
        self._lock = threading.Lock()
        self._closed = False
        #: Losses: a worker that went away with the rows it held, and its buckets' new owner.
        self.lost: list[dict] = []
        self._aggregations: dict[str, dict] = {}
        workers = list(workers or client.scheduler_info()["workers"])
        if not workers:
            raise ValueError("the Dask cluster has no workers")
        # worker address -> its buckets, its actor, and the future that keeps the actor alive
        self._assigned: dict[str, list[int]] = {}
        self._actors: dict[str, object] = {}
        self._futures: dict[str, object] = {}
        for i, w in enumerate(workers):
            self._start(w, list(range(i, shards, len(workers))))

    # -- what a notebook asks -------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Every worker's endpoints, ports resolved (producers connect to all of them when
        the workers bind)."""
        self._live()
        return [ep for a in self._actors.values() for ep in a.resolved().result()]

    def buckets(self) -> dict[str, list[int]]:
        """Which worker receives which buckets."""
        self._live()
        return {w: list(bs) for w, bs in self._assigned.items()}

    def frame(self):
        """Every worker's retained rows as one ``dask.dataframe.DataFrame``, a partition
        per worker; the rows stay on the workers until computed."""
        actors = self._live()
        metas = [a.meta().result() for a in actors.values()]
        metas = [m for m in metas if len(m.columns)]
        meta = pd.concat(metas).iloc[:0] if metas else pd.DataFrame()
        columns = list(meta.columns)
        parts = [self.client.submit(_on_worker, self._key(w), "frame", columns, workers=[w],
                                    allow_other_workers=False, pure=False)
                 for w in actors]
        return dd.from_delayed(parts, meta=meta, verify_meta=False)

    def aggregate(self, by=None, *, values, window=None, every=None, on: str = "timestamp",
                  where=None, lateness="0s", idle: float = 5.0) -> DaskAggregation:
        """An aggregation on each worker (arguments of :meth:`Subscriber.aggregate`),
        combined exactly on the client: results equal pandas' groupby over all rows."""
        spec = dict(by=by, values=values, window=window, every=every, on=on, where=where,
                    lateness=lateness, idle=idle)
        template = Aggregation(**spec)   # checks the arguments here, before any worker does
        key = f"agg-{next(_ids)}"
        for a in self._live().values():
            a.aggregate(key, spec).result()
        self._aggregations[key] = spec
        return DaskAggregation(self, key, template)

    def to_parquet(self, path, *, partition_by=None) -> str:
        """The workers' retained rows as one Parquet dataset, each worker writing its
        part in parallel; read it with ``pandas.read_parquet(path)`` or
        ``dask.dataframe.read_parquet(path)``."""
        path = os.path.abspath(os.fspath(path))
        os.makedirs(path, exist_ok=True)
        actors = self._live()
        runs = [a.to_parquet(path, i, partition_by) for i, a in enumerate(actors.values())]
        [r.result() for r in runs]
        return path

    def stats(self) -> dict:
        """The workers' Subscriber stats, summed; ``producers`` has a row per (producer,
        topic) with the ``worker`` that received it; ``workers``: how many; ``lost``: the
        workers lost so far (see :attr:`lost`)."""
        actors = self._live()
        per = {w: a.stats() for w, a in actors.items()}
        rows = []
        out: dict = {}
        for w, future in per.items():
            for st in future.result():
                for k, v in st.items():
                    if k == "producers":
                        rows.append(v.assign(worker=w))
                    elif isinstance(v, dict):
                        acc = out.setdefault(k, {})
                        for kk, vv in v.items():
                            acc[kk] = acc.get(kk, 0) + vv
                    else:
                        out[k] = out.get(k, 0) + v
        out["producers"] = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
        out["workers"] = len(actors)
        out["lost"] = list(self.lost)
        return out

    def wait_for_producers(self, producers: int = 1, timeout: float | None = 60.0) -> pd.DataFrame:
        """Wait until rows from ``producers`` live producers have arrived on the live
        workers (see :meth:`zpandas.Subscriber.wait_for_producers`).

        Also after a worker is lost: until the scheduler notices, calls to it fail, and
        this waits on; then its buckets move and their streams go on elsewhere.

        Returns
        -------
        pandas.DataFrame
            ``stats()["producers"]`` at that moment.

        Raises
        ------
        TimeoutError
            If fewer sent rows within ``timeout`` seconds; it says which did.
        """
        from .errors import ClosedError
        from .subscriber import not_sending, sending
        deadline = None if timeout is None else time.monotonic() + timeout
        names, trouble = [], ""
        while True:
            try:
                table = self.stats()["producers"]
            except ClosedError:
                raise
            except Exception as e:  # noqa: BLE001 - a worker gone, the scheduler not told yet
                trouble = f" (last: {type(e).__name__}: {e})"
            else:
                trouble, names = "", sending(table)
                if len(names) >= producers:
                    return table
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(not_sending(names, producers, timeout, trouble))
            time.sleep(0.1)   # the workers' stats are asked for, not pushed: look again

    def gaps(self) -> pd.DataFrame:
        """Every loss seen by every worker: when, from whom, how many messages and rows."""
        actors = self._live()
        frames = [f.result().assign(worker=w) for w, f in ((w, a.gaps()) for w, a in actors.items())]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["time", "producer", "name", "topic", "kind", "messages", "rows", "worker"])

    def rejects(self) -> pd.DataFrame:
        """Lines the producers could not parse, from every worker."""
        actors = self._live()
        frames = [f.result().assign(worker=w) for w, f in ((w, a.rejects()) for w, a in actors.items())]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def rebalance(self) -> list[dict]:
        """Move the buckets of workers that are gone to the live ones (a worker without
        a share first: one restarted in a lost one's place); return the moves made now,
        also kept in :attr:`lost`. Every other call does this first."""
        with self._lock:
            live = _workers(self.client)
            moves = []
            for w in [w for w in self._actors if w not in live]:
                self._actors.pop(w)
                self._futures.pop(w, None)
                buckets = self._assigned.pop(w)
                fresh = [x for x in live if x not in self._actors]
                targets = fresh or list(self._actors)
                if not targets:
                    raise RuntimeError("no live Dask worker is left to take the stream")
                share = {t: buckets[i::len(targets)] for i, t in enumerate(targets)}
                share = {t: bs for t, bs in share.items() if bs}
                for t, bs in share.items():
                    if t in self._actors:
                        self._actors[t].take(bs).result()
                        self._assigned[t] = sorted(self._assigned[t] + bs)
                    else:
                        self._start(t, bs)
                move = {"time": pd.Timestamp.now(tz="UTC"), "worker": w, "buckets": buckets,
                        "to": share}
                moves.append(move)
                self.lost.append(move)
            return moves

    def close(self) -> None:
        """Stop every worker's Subscribers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = set(_workers(self.client))
            for w, a in self._actors.items():
                if w in live:
                    try:
                        a.close().result()
                    except Exception:  # noqa: BLE001 - a worker going away as we close
                        pass
            self._actors.clear()
            self._futures.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> DaskSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<zpandas.dask.DaskSubscriber topic={self.topic!r} shards={self.shards} " \
               f"workers={len(self._actors)}>"

    # -- internals ------------------------------------------------------------------------

    def _live(self) -> dict:
        if self._closed:
            from .errors import ClosedError
            raise ClosedError("this DaskSubscriber is closed")
        self.rebalance()
        return dict(self._actors)

    def _start(self, worker: str, buckets: list[int]) -> None:
        future = self.client.submit(_Shard, self._endpoints, self.topic, self.shards, buckets,
                                    self._options, actor=True, workers=[worker],
                                    allow_other_workers=False,
                                    key=f"zpandas-shard-{uuid.uuid4().hex[:8]}")
        actor = future.result()
        for key, spec in self._aggregations.items():
            actor.aggregate(key, spec).result()
        self._actors[worker], self._futures[worker] = actor, future
        self._assigned[worker] = sorted(buckets)

    def _key(self, worker: str) -> str:
        return self._futures[worker].key


class DaskAggregation:
    """A :class:`~zpandas.Aggregation` per worker, seen as one (made by
    :meth:`DaskSubscriber.aggregate`). ``result()``, ``stats()``, ``late()`` and
    ``to_parquet()`` as an Aggregation's; a LivePlot shows it as a local one."""

    def __init__(self, owner: DaskSubscriber, key: str, template: Aggregation) -> None:
        self.subscriber, self._key, self._template = owner, key, template
        # what LivePlot and a reader of the spec look at
        self.by, self.values, self.window, self.every = template.by, template.values, \
            template.window, template.every
        self.on, self.where = template.on, template.where

    def result(self, *, closed_only: bool = False) -> pd.DataFrame:
        """The combined results: equal to pandas' groupby over every worker's rows."""
        actors = self.subscriber._live()
        partials = [p for f in [a.partials(self._key) for a in actors.values()] for p in f.result()]
        out = combine(self._template, partials)
        return out[out["final"]].reset_index(drop=True) if closed_only else out

    def stats(self) -> dict:
        """The workers' aggregation stats: counts summed; ``watermark`` and
        ``final_through`` the lowest of the workers that heard from a producer."""
        actors = self.subscriber._live()
        stats = [s for f in [a.agg_stats(self._key) for a in actors.values()] for s in f.result()]
        out = {k: sum(s[k] for s in stats) for k in ("rows", "late_rows", "rejected_batches",
                                                        "windows_closed", "dropped_rows",
                                                        "producers", "active")}
        heard = [s for s in stats if s["producers"]]
        for k in ("watermark", "final_through"):
            values = [s[k] for s in heard]
            out[k] = min(values) if values and all(v is not None for v in values) else None
        result = self.result()
        out["windows_open"] = int((~result["final"]).groupby(result["window_start"]).any().sum()) \
            if self.window is not None and len(result) else 0
        out["errors"] = [e for s in stats for e in s["errors"]]
        return out

    def late(self) -> pd.DataFrame:
        actors = self.subscriber._live()
        frames = [f.result() for f in [a.late(self._key) for a in actors.values()]]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def to_parquet(self, path, *, partition_by=None, closed_only: bool = False) -> str:
        from .parquet import to_parquet
        return to_parquet(self.result(closed_only=closed_only), path, partition_by=partition_by,
                          provenance={"aggregation": self._template._describe()})

    def __repr__(self) -> str:
        return f"<zpandas.dask.DaskAggregation {self._template!r}>"


def _workers_on(dask_scheduler=None) -> list[str]:
    return list(dask_scheduler.workers)


def _workers(client) -> list[str]:
    """The workers the scheduler knows now (``Client.scheduler_info()`` is a copy refreshed
    every few seconds: just after a worker restarts it can name none of the live ones)."""
    return client.run_on_scheduler(_workers_on)

