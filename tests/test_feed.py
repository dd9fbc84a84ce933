"""The hand-over from a socket thread to an aggregation's own fold thread (zpandas._feed)."""

from __future__ import annotations

import threading

import pyarrow as pa

from zpandas._feed import Feed


def test_tables_are_folded_in_order_a_run_of_one_schema_at_a_time():
    folded, lock, go = [], threading.Lock(), threading.Event()

    def fold(table):
        go.wait(10)
        folded.append(table.column(0).to_pylist())

    feed = Feed(fold, lock, [pa.table({"a": [1]})], limit_bytes=1 << 20)
    for t in (pa.table({"a": [2]}), pa.table({"b": ["x"]}), pa.table({"a": [3]})):
        assert feed.put(t, block=True)
    go.set()
    feed.close(10)
    # the first table may be folded alone before the others were put
    assert sum(folded, []) == [1, 2, "x", 3]
    assert all(len({type(v) for v in run}) == 1 for run in folded)
    assert not any(t.name.startswith("zpandas-aggregate-") for t in threading.enumerate())


def test_a_full_backlog_leaves_tables_out_or_makes_the_feeder_wait():
    lock, folded = threading.Lock(), []
    table = pa.table({"a": list(range(1000))})
    with lock:  # folding is held up: the backlog fills
        feed = Feed(lambda t: folded.append(t.num_rows), lock, [], limit_bytes=table.nbytes)
        assert feed.put(table, block=False)
        assert not feed.put(table, block=False)       # over the bound: left out, said so
        waiting = threading.Thread(target=feed.put, args=(table, True))
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive()                      # block: waits for room
    waiting.join(10)                                   # the fold thread made room
    assert not waiting.is_alive()
    feed.close(10)
    with lock:
        feed.drain()
    assert sum(folded) == 2000
