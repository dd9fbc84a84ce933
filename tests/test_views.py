"""Live views: Subscriber(where=..., columns=...) gets only the rows and columns it asks
for, filtered at the producers; subscribers asking the same share one filtered stream;
a producer that cannot give a view says so; the past (since=) comes filtered the same way."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zmq

import zpandas as zp
from zpandas import history, wire
from zpandas.history import View, RequestError, parse_view

from .conftest import wait_for
from .test_history import T0, expected, write_log

LOCAL = "@tcp://127.0.0.1:*"


def frame(n: int = 1000) -> pd.DataFrame:
    return pd.DataFrame({"status": np.tile([200, 500, 404, 503], n // 4),
                         "path": [f"/p{i % 7}" for i in range(n)],
                         "bytes": np.arange(n, dtype=np.int64)})


def test_a_view_is_named_by_what_it_asks_so_equal_views_are_one_subscription():
    a = View.new("web", "status >= 500", ["path", "status"])
    b = View.new("web", "status >= 500", ("path", "status"))
    assert a.subscription == b.subscription and history.is_view(a.subscription)
    assert parse_view(a.subscription) == a
    assert View.new("web", "status >= 500", ["status", "path"]).subscription != a.subscription
    assert history.topic_name(a.subscription) == "web"
    with pytest.raises(zp.where.WhereError, match="a call of something other"):
        View.new("web", "__import__('os').system('x')")
    with pytest.raises(RequestError, match="more than 8,192"):
        View.new("web", columns=[f"c{i}" for i in range(2000)])


@pytest.mark.parametrize("raw,says", [
    (history.VIEW_PREFIX + b"2/{}", "another version"),
    (history.VIEW_PREFIX + b"1/{nope", "not JSON"),
    (history.VIEW_PREFIX + b"1/" + json.dumps({"topic": "", "evil": 1}).encode(), "unknown request field"),
    (history.VIEW_PREFIX + b"1/" + json.dumps({"where": "open('x')"}).encode(), "a call of something other"),
    (history.VIEW_PREFIX + b"1/" + json.dumps({"columns": "status"}).encode(), "not a list of names"),
])
def test_hostile_views_are_refused_with_a_reason_and_the_producer_keeps_serving(raw, says):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        with zp.Producer(f">tcp://127.0.0.1:{port}", topic="web") as p:
            sock.subscribe(raw)      # in a zmq call, the bound SUB greets the producer
            sock.subscribe(b"web")
            got = {}
            while "end" not in got or "rows" not in got:
                assert sock.poll(10_000), got
                msg = wire.decode(sock.recv_multipart())
                if msg.kind is wire.Kind.HISTORY_END and msg.topic == raw:
                    got["end"] = history.read_end(msg.table)
                    p.send(frame(8))          # and it goes on serving
                elif msg.kind is wire.Kind.DATA:
                    got["rows"] = msg.table.num_rows
        assert got["end"]["status"] == "refused" and says in got["end"]["reason"]
        assert got["rows"] == 8
    finally:
        sock.close(linger=0)
        ctx.term()


def test_subscribers_asking_the_same_view_share_one_filtered_stream():
    df = frame()
    want = df[df["status"] >= 500][["path", "status"]].reset_index(drop=True)
    view = dict(topics="web", where="status >= 500", columns=["path", "status"])
    with zp.Subscriber(LOCAL, **view) as a, zp.Subscriber(LOCAL, **view) as b, \
            zp.Subscriber(LOCAL) as everything:
        with zp.Producer(a.endpoints + b.endpoints + everything.endpoints, topic="web",
                         wait_for_subscribers=3) as p:
            for part in (df.iloc[i:i + 200] for i in range(0, len(df), 200)):
                p.send(part)
                p.flush()
        sent = p.stats()
        for sub in (a, b):
            got = sub.collect(timeout=30)
            assert list(got.columns) == ["path", "status"]
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
            st = sub.stats()
            assert st["producers"]["topic"].tolist() == ["web"] and st["missed"] == 0
        # filtered once for both: one view message per message of rows
        assert sent["messages"] == 5 and sent["view_messages"] == 5
        # a subscriber to everything takes the plain stream, and leaves the view alone
        assert len(everything.collect(timeout=30)) == len(df)
        assert everything.stats()["others_view_messages"] >= 5
        # what was filtered out never crossed the network
        assert a.stats()["bytes"] * 2 < everything.stats()["bytes"]


def test_a_producer_whose_rows_lack_a_column_refuses_and_says_why():
    with zp.Subscriber(LOCAL, topics="web", columns=["nope"]) as bad, \
            zp.Subscriber(LOCAL, topics="web") as plain:
        with zp.Producer(bad.endpoints + plain.endpoints, topic="web", wait_for_subscribers=2,
                         name="node1") as p:
            p.send(frame(8))
            with pytest.warns(zp.DataLossWarning,
                              match="node1.*no column 'nope'; the columns are status, path, bytes"):
                wait_for(lambda: len(bad.stats()["views"]) == 1, timeout=30, what="the refusal")
        assert bad.collect(timeout=30).empty      # said once
        refused = bad.stats()["views"]
        assert refused[["name", "topic", "status"]].values.tolist() == [["node1", "web", "refused"]]
        assert len(plain.collect(timeout=30)) == 8     # the plain stream goes on


def test_a_refused_view_is_told_to_a_subscriber_that_asks_it_later():
    with zp.Producer(LOCAL, topic="web", name="node1") as p:
        with zp.Subscriber(">" + p.endpoints[0], topics="web", columns=["nope"]) as first:
            p.wait_for_subscribers(1)
            p.send(frame(8))
            p.flush()
            with pytest.warns(zp.DataLossWarning, match="no column 'nope'"):
                wait_for(lambda: len(first.stats()["views"]) == 1, timeout=30, what="the refusal")
            with zp.Subscriber(">" + p.endpoints[0], topics="web", columns=["nope"]) as second, \
                    pytest.warns(zp.DataLossWarning, match="no column 'nope'"):
                wait_for(lambda: len(second.stats()["views"]) == 1, timeout=30,
                         what="the refusal, to the newcomer")
                assert "no column 'nope'" in second.stats()["views"]["reason"].iloc[0]


def test_views_of_files_from_producer_processes_through_a_proxy(tmp_path, procs):
    """Two `zpandas publish` processes; two subscribers share a view; the past, asked with
    since=, comes filtered the same way; every row once."""
    where, columns = "status >= 500 and host != 'web0'", ["timestamp", "host", "status"]
    with zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") as proxy, \
            zp.Subscriber(">" + proxy.backend[0], topics="m") as watcher:
        for i, node in enumerate(("node1", "node2")):
            write_log(tmp_path / f"{node}.log", i * 100_000, 1200)
            procs.start("publish", str(tmp_path / f"{node}.log"), "--follow", "--history",
                        "-t", "m", "-e", ">" + proxy.frontend[0], "--name", node, "--quiet")
        wait_for(lambda: watcher.stats()["rows"] == 2400, timeout=60, what="the first 20 min")
        since = T0 + pd.Timedelta("10min")
        with zp.Subscriber(">" + proxy.backend[0], topics="m", where=where, columns=columns,
                           since=since) as late, \
                zp.Subscriber(">" + proxy.backend[0], topics="m", where=where,
                              columns=columns) as live:
            wait_for(lambda: late.stats()["history"].shape[0] == 2, timeout=60, what="the past")
            assert set(late.stats()["history"]["status"]) == {"done"}
            wait_for(lambda: all(n == 2 for n in (len(late.stats()["producers"]),
                                                  len(live.stats()["producers"]))),
                     timeout=60, what="both views live")
            for i, node in enumerate(("node1", "node2")):
                write_log(tmp_path / f"{node}.log", i * 100_000 + 1200, 600, mode="a")
            wait_for(lambda: watcher.stats()["rows"] == 3600, timeout=60, what="the new lines")
            files = [tmp_path / "node1.log", tmp_path / "node2.log"]
            everything = expected(files)
            new = everything[everything["timestamp"].isin(
                {T0 + pd.Timedelta(seconds=i * 100_000 + k) for i in (0, 1) for k in range(1200, 1800)})]
            want_live = new.query(where)[columns].reset_index(drop=True)
            want_late = expected(files, since, where, columns)
            wait_for(lambda: len(late.frame()) == len(want_late), timeout=60, what="late: past and live")
            wait_for(lambda: len(live.frame()) == len(want_live), timeout=60, what="live view")
            for sub, want in ((late, want_late), (live, want_live)):
                got = sub.frame()
                assert set(got.columns) == {*columns, "_file", "_offset"}
                got = got[columns].sort_values(["timestamp", "host"]).reset_index(drop=True)
                pd.testing.assert_frame_equal(
                    got, want.sort_values(["timestamp", "host"]).reset_index(drop=True), check_dtype=False)
            # filtered at the producers: a fraction of the plain stream's bytes crossed
            assert live.stats()["bytes"] * 4 < watcher.stats()["bytes"]


def test_the_command_line_subscriber_asks_for_a_view(tmp_path, procs):
    from .test_cli import free_port
    log = tmp_path / "app.log"
    write_log(log, 0, 3000)
    port = free_port()
    out = tmp_path / "rows.parquet"
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "-t", "m", "--producers", "1",
                      "--where", "status >= 500 and host == 'web1'", "--columns", "timestamp, status",
                      "--parquet", str(out))
    assert sub.stdout.readline().startswith("listening on")
    procs.start("publish", str(log), "-e", f">tcp://127.0.0.1:{port}", "-t", "m")
    bad = procs.start("subscribe", "-e", "@tcp://127.0.0.1:0", "--where", "os.system('id')")
    results = procs.wait_all(timeout=60)
    assert [code for code, _ in results[:2]] == [0, 0], results
    assert results[2][0] == 1 and "a call of something other" in results[2][1]
    got = pd.read_parquet(out)
    want = expected([log], where="status >= 500 and host == 'web1'", columns=["timestamp", "status"])
    assert len(want) > 100
    pd.testing.assert_frame_equal(got[["timestamp", "status"]].sort_values("timestamp").reset_index(drop=True),
                                  want, check_dtype=False)
