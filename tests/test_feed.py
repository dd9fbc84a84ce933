"""The hand-over from a socket thread to an aggregation's own fold thread (zpandas._feed)."""

from __future__ import annotations

import threading

import pyarrow as pa

from zpandas._feed import Feed


def test_tables_are_folded_in_order_a_run_of_one_schema_at_a_time():
    folded, lock, go = [], threading.Lock(), threading.Event()

    def fold(table, sources):
        go.wait(10)
        assert sum(n for _, n in sources) == table.num_rows
        folded.append((table.column(0).to_pylist(), [s for s, _ in sources]))

    # the backlog to start with: a table, and a stream that had already ended
    feed = Feed(fold, lambda s: folded.append(("end", s)), lambda: folded.append("settled"), lock,
                [(b"p", pa.table({"a": [1]})), (b"r", None)], limit_bytes=1 << 20)
    for source, t in ((b"q", pa.table({"a": [2, 3]})), (b"p", pa.table({"b": ["x"]})),
                      (b"q", pa.table({"a": [4]}))):
        assert feed.put(source, t, block=True)
    feed.put_end(b"q")
    go.set()
    feed.close(10)
    # the first table may be folded alone before the others were put
    assert folded[-1] == "settled"                       # once all taken was folded
    folded = [f for f in folded if f != "settled"]
    runs = [run for run in folded if run[0] != "end"]
    assert sum((values for values, _ in runs), []) == [1, 2, 3, "x", 4]
    assert sum((sources for _, sources in runs), []) == [b"p", b"q", b"p", b"q"]
    assert all(len({type(v) for v in values}) == 1 for values, _ in runs)
    assert folded[-1] == ("end", b"q")   # after the rows of q, in order
    assert ("end", b"r") in folded
    assert not any(t.name.startswith("zpandas-aggregate-") for t in threading.enumerate())


def test_a_full_backlog_leaves_tables_out_or_makes_the_feeder_wait():
    lock, folded = threading.Lock(), []
    table = pa.table({"a": list(range(1000))})
    with lock:  # folding is held up: the backlog fills
        feed = Feed(lambda t, _: folded.append(t.num_rows), lambda s: None, lambda: None, lock, [],
                    limit_bytes=table.nbytes)
        assert feed.put(b"p", table, block=False)
        assert not feed.put(b"p", table, block=False)   # over the bound: left out, said so
        waiting = threading.Thread(target=feed.put, args=(b"p", table, True))
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive()                      # block: waits for room
    waiting.join(10)                                   # the fold thread made room
    assert not waiting.is_alive()
    feed.close(10)
    with lock:
        feed.drain()
    assert sum(folded) == 2000
