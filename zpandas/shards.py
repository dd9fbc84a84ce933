"""Sharding a stream into buckets that ZeroMQ routes by topic.

A producer with ``shards=N`` sends each message under the topic ``"<topic>#<bucket>"``
(the bucket zero-padded to a fixed width, so that no bucket's topic is a prefix of
another's). ZeroMQ matches subscriptions by prefix on the publisher's side, so:

* a subscriber to ``"<topic>"`` (or to everything) still gets every bucket: a single
  notebook works as before;
* a subscriber to ``"<topic>#007"`` gets bucket 7 only, and the publisher sends each
  message to exactly the subscribers of its bucket - how ``zpandas.dask`` spreads a stream
  over workers without any of them seeing the others' rows.

The bucket is stable across processes and runs: a hash of the producer's name (all of a
producer's rows in one bucket: its stream keeps its order and numbering), or of a key
column (``shard_by="host"``: each key's rows in one bucket, a producer's rows spread).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["shard_topic", "shard_topics", "bucket_of_name", "split_by_key", "Router"]

#: Separates a topic from its bucket number.
SEP = "#"


def _width(shards: int) -> int:
    return len(str(shards - 1))


def shard_topic(topic: str, bucket: int, shards: int) -> str:
    """The topic of ``bucket`` (of ``shards``) of ``topic``: ``"metrics#03"``."""
    if not 0 <= bucket < shards:
        raise ValueError(f"bucket {bucket} is not in 0..{shards - 1}")
    return f"{topic}{SEP}{bucket:0{_width(shards)}d}"


def shard_topics(topic: str, buckets, shards: int) -> list[str]:
    """The topics to subscribe to for ``buckets`` of ``topic``."""
    return [shard_topic(topic, b, shards) for b in buckets]


def bucket_of_name(name: str, shards: int) -> int:
    """A producer's bucket when it shards by its name (CRC-32: the same everywhere)."""
    return zlib.crc32(name.encode("utf-8")) % shards


def split_by_key(table: pa.Table, column: str, shards: int) -> list[tuple[int, pa.Table]]:
    """``table``'s rows by the bucket of their ``column`` value, in bucket order; each
    part keeps the rows' order. Nulls go to bucket 0.

    The hash is pandas' ``hash_array`` (SipHash with a fixed key) of the distinct values,
    so a value lands in the same bucket in every process and on every run.
    """
    if column not in table.column_names:
        raise KeyError(f"shard_by={column!r}: the rows have no such column "
                       f"(columns: {table.column_names})")
    if table.num_rows == 0:
        return [(0, table)]
    encoded = pc.dictionary_encode(table.column(column)).combine_chunks()
    values = encoded.dictionary.to_pandas().to_numpy(dtype=object)
    of_value = (pd.util.hash_array(values) % np.uint64(shards)).astype(np.int64) if len(values) \
        else np.zeros(0, np.int64)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    valid = ~encoded.indices.is_null().to_numpy(zero_copy_only=False)
    buckets = np.zeros(table.num_rows, np.int64)
    buckets[valid] = of_value[indices[valid].astype(np.int64)]
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(shards + 1))
    return [(b, table.take(order[bounds[b]:bounds[b + 1]]))
            for b in range(shards) if bounds[b + 1] > bounds[b]]


class Router:
    """Where a producer's rows go: the topics of a stream sharded or not.

    Parameters
    ----------
    name : str
        The producer's name (its bucket, when it shards by name).
    shards : int, optional
        None: no sharding, rows go under their topic.
    shard_by : str, optional
        The key column (with ``shards``).
    """

    def __init__(self, name: str, shards: int | None = None, shard_by: str | None = None) -> None:
        self.name, self.shards, self.shard_by = name, shards, shard_by

    def topics(self, topic: str) -> list[str]:
        """The topics rows of ``topic`` go out under: itself, its bucket's (sharded by
        name), or every bucket's (sharded by a column)."""
        if not self.shards:
            return [topic]
        if self.shard_by is None:
            return [shard_topic(topic, bucket_of_name(self.name, self.shards), self.shards)]
        return shard_topics(topic, range(self.shards), self.shards)

    def route(self, topic: str, table: pa.Table) -> list[tuple[str, pa.Table]]:
        """(topic, rows) to send: one part, or one per bucket the rows fall in."""
        if not self.shards or self.shard_by is None:
            return [(self.topics(topic)[0], table)]
        return [(shard_topic(topic, b, self.shards), part)
                for b, part in split_by_key(table, self.shard_by, self.shards)]
