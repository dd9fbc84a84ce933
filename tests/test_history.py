"""History requests: asked as subscriptions, answered under the requester's own topic, in
every topology; a producer without history says so, a bad request gets a reply saying why,
and nobody else's frames are touched."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import pandas as pd
import pyarrow as pa
import pytest
import zmq

import zpandas as zp
from zpandas import history, wire
from zpandas.history import PREFIX, Request, RequestError, parse_request, parse_time

from .conftest import wait_for

NOW = pd.Timestamp("2026-12-06T11:00Z")


def test_a_request_travels_as_a_subscription_and_comes_back_whole():
    req = Request.new(topic="metrics", since="30min", until="2026-12-06T10:55", where="status >= 500",
                      columns=["host", "status"], now=NOW)
    topic = req.reply_topic
    assert topic.startswith(PREFIX) and history.is_history(topic) and len(topic) < 300
    back = parse_request(topic)
    assert back == req
    assert back.since == pd.Timestamp("2026-12-06T10:30Z") and back.until == pd.Timestamp("2026-12-06T10:55Z")
    assert Request.new(now=NOW).id != Request.new(now=NOW).id     # each request its own topic
    one = dataclasses.replace(req, producer="ab" * 16)              # asked of one producer only
    assert parse_request(one.reply_topic) == one and b"producer" not in topic


@pytest.mark.parametrize("value,want", [
    ("1h", "2026-12-06T10:00Z"), ("90s", "2026-12-06T10:58:30Z"), (pd.Timedelta("2h"), "2026-12-06T09:00Z"),
    ("2026-12-06T10:40", "2026-12-06T10:40Z"), ("2026-12-06T11:40+01:00", "2026-12-06T10:40Z"),
    (pd.Timestamp("2026-12-06 10:40"), "2026-12-06T10:40Z"),
])
def test_times_are_durations_back_or_points_in_utc(value, want):
    assert parse_time(value, NOW) == pd.Timestamp(want)


@pytest.mark.parametrize("value,says", [
    ("soon", "not a duration"), ("-1h", "not a duration"), (pd.Timedelta("-1h"), "must be positive"),
    (pd.NaT, "not a duration|NaT"),
])
def test_bad_times_are_refused(value, says):
    with pytest.raises(RequestError, match=says):
        parse_time(value, NOW)


def test_a_request_that_cannot_be_asked_is_refused_before_it_travels():
    with pytest.raises(RequestError, match="until .* must be after since"):
        Request.new(since="10min", until="20min", now=NOW)
    with pytest.raises(zp.where.WhereError, match="a call of something other"):
        Request.new(where="__import__('os')")
    with pytest.raises(RequestError, match="more than 8,192"):
        Request.new(columns=[f"c{i}" for i in range(2000)]).reply_topic


def _raw(doc) -> bytes:
    return PREFIX + b"1/" + (doc if isinstance(doc, bytes) else json.dumps(doc).encode())


GOOD = {"id": "0" * 32, "topic": "", "since": None, "until": None, "where": None, "columns": None}


@pytest.mark.parametrize("topic,says", [
    (PREFIX + b"2/{}", "another version"),
    (_raw(b"{not json"), "not JSON"),
    (_raw(b"[1, 2]"), "not a JSON object"),
    (_raw(b"\xff\xfe"), "not JSON"),
    (_raw({**GOOD, "evil": 1}), "unknown request field"),
    (_raw({**GOOD, "id": "x"}), "id is not 32 hex digits"),
    (_raw({**GOOD, "topic": 5}), "topic is not a string"),
    (_raw({**GOOD, "since": "yesterday"}), "since is not nanoseconds"),
    (_raw({**GOOD, "until": 2**70}), "until is not nanoseconds"),
    (_raw({**GOOD, "since": True}), "since is not nanoseconds"),
    (_raw({**GOOD, "where": "open('/etc/passwd')"}), "a call of something other"),
    (_raw({**GOOD, "where": 5}), "where is not a string"),
    (_raw({**GOOD, "columns": "host"}), "columns are not a list"),
    (_raw({**GOOD, "columns": [1]}), "columns are not a list"),
    (_raw({**GOOD, "where": "a == 1 or " * 900 + "a == 2"}), "more than 8,192"),
    (_raw({**GOOD, "producer": "node1"}), "producer is not 32 hex digits"),
])
def test_hostile_requests_are_refused_with_a_reason(topic, says):
    with pytest.raises(RequestError, match=says):
        parse_request(topic)


def test_history_end_bodies_are_checked():
    body = history.end_table("refused", "why", rows=0)
    assert history.read_end(body)["status"] == "refused"
    with pytest.raises(ValueError):
        history.end_table("maybe")
    header = wire.Header(kind=wire.Kind.HISTORY_END, producer=bytes(16))
    ok = wire.encode(body, topic=b"t", header=header)
    assert wire.decode(ok).table.num_rows == 1
    bad = wire.encode(pa.table({"x": [1]}), topic=b"t", header=header)
    with pytest.raises(zp.WireError) as e:
        wire.decode(bad)
    assert e.value.reason == "columns"


def rows(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"host": ["a"] * n, "value": range(n)})


@pytest.mark.parametrize("topology", ["direct", "proxy"])
def test_producers_without_history_say_so_in_every_topology(topology):
    proxy = zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") if topology == "proxy" else None
    try:
        sub = zp.Subscriber(">" + proxy.backend[0] if proxy else "@tcp://127.0.0.1:*", topics="m")
        into = proxy.frontend if proxy else sub.endpoints
        with sub, zp.Producer(into, topic="m", name="p1", wait_for_subscribers=1) as p1, \
                zp.Producer(into, topic="m", name="p2", wait_for_subscribers=1) as p2, \
                zp.Producer(into, topic="other", name="p3") as p3:
            for p in (p1, p2):
                p.send(rows())
            p3.send(rows())
            wait_for(lambda: len(sub.stats()["producers"]) == 2, what="both producers heard")
            df = sub.history(since="1h", timeout=30)
            assert df.empty
            h = sub.stats()["history"]
            # both answered, neither in silence; the producer of another topic kept out
            assert sorted(h["name"]) == ["p1", "p2"] and set(h["status"]) == {"no history"}
            assert h["reason"].str.contains("keeps no history").all()
            # the live stream went on as before, and the requests took no subscriber slot
            p1.send(rows(2))
            wait_for(lambda: sub.stats()["rows"] == 8, what="live rows after the request")
            assert p1.stats()["history_messages"] == 1
    finally:
        if proxy:
            proxy.close()


def test_a_hostile_request_gets_a_reply_and_the_producer_keeps_serving():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        with zp.Producer(f">tcp://127.0.0.1:{port}", topic="m", name="p1") as p:
            bad = _raw({**GOOD, "where": "__import__('os').system('id')"})
            raw.subscribe(bad)
            assert raw.poll(10_000), "no reply to a hostile request"
            msg = wire.decode(raw.recv_multipart())
            assert msg.topic == bad and msg.header.kind is wire.Kind.HISTORY_END
            end = history.read_end(msg.table)
            assert end["status"] == "refused" and "a call of something other" in end["reason"]
            # and then a good one
            good = Request.new(topic="m").reply_topic
            raw.subscribe(good)
            assert raw.poll(10_000)
            msg = wire.decode(raw.recv_multipart())
            assert msg.topic == good and history.read_end(msg.table)["status"] == "no history"
            p.send(rows())
    finally:
        raw.close(linger=0)
        ctx.term()


def test_a_subscriber_of_everything_does_not_take_anothers_replies():
    with zp.Subscriber("@tcp://127.0.0.1:*") as everything, \
            zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as asker:
        with zp.Producer([*everything.endpoints, *asker.endpoints], topic="m", name="p1",
                         wait_for_subscribers=2) as p:
            p.send(rows())
            wait_for(lambda: asker.stats()["rows"] == 3 and everything.stats()["rows"] == 3,
                     what="live rows")
            asker.history(since="1h", timeout=30)
            wait_for(lambda: everything.stats()["others_history_messages"] >= 1,
                     what="the other's reply seen and dropped")
            st = everything.stats()
            assert st["rows"] == 3 and st["bad_frames"] == {} and len(everything.frame()) == 3


def test_a_producer_that_does_not_answer_is_said():
    """An old or hung producer (here a raw XPUB that never replies): "no answer", warned."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    try:
        with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
            pub.connect(sub.endpoints[0])
            assert pub.poll(10_000)
            pub.recv()   # the subscription to m
            header = wire.Header(producer=b"s" * 16, name="silent")
            pub.send_multipart(wire.encode(pa.table({"x": [1]}), topic=b"m", header=header))
            wait_for(lambda: sub.stats()["rows"] == 1, what="the silent producer's row")
            with pytest.warns(zp.DataLossWarning, match=r"1 producer\(s\) did not answer: silent"):
                assert sub.history(since="1h", timeout=0.5).empty
            h = sub.stats()["history"]
            assert h[["name", "status"]].values.tolist() == [["silent", "no answer"]]
            # with no producer known, whoever answers within the timeout: here nobody
    finally:
        pub.close(linger=0)
        ctx.term()


# -- serving history from files --------------------------------------------------------------

T0 = pd.Timestamp("2026-12-06T09:00Z")


def write_log(path, start: int, n: int, mode: str = "w") -> None:
    """``n`` CSV rows one second apart from ``T0 + start`` seconds: status 500 every 7th."""
    with open(path, mode) as f:
        if mode == "w":
            f.write("timestamp,host,status,latency_ms\n")
        for i in range(start, start + n):
            f.write(f"{(T0 + pd.Timedelta(seconds=i)).isoformat()},web{i % 3},"
                    f"{500 if i % 7 == 0 else 200},{i % 1000}\n")


def expected(paths, since=None, where=None, columns=None) -> pd.DataFrame:
    df = pd.concat([pd.read_csv(p, parse_dates=["timestamp"]) for p in paths], ignore_index=True)
    if since is not None:
        df = df[df["timestamp"] >= since]
    if where is not None:
        df = df.query(where)
    cols = columns or list(df.columns)
    return df[cols].sort_values("timestamp" if "timestamp" in cols else cols[0]).reset_index(drop=True)


class Publishing:
    """``publish_files(..., follow=True, history=True)`` on a thread, stopped at the end."""

    def __init__(self, pattern: str, endpoint: str, **options) -> None:
        import threading
        self.stop = threading.Event()
        self.result: dict = {}
        if not isinstance(endpoint, zp.Producer):
            options = {"topic": "m", "name": "node1", **options}
        self.thread = threading.Thread(target=lambda: self.result.update(zp.publish_files(
            pattern, endpoint, follow=True, history=True, stop=self.stop, poll_interval=0.05,
            **options)))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


def test_history_from_files_equals_a_pandas_filter_of_them(tmp_path):
    log = tmp_path / "app.log"
    write_log(log, 0, 1800)                               # the first half hour...
    log.rename(tmp_path / "app.log.1")                    # ...rotated away
    write_log(log, 1800, 1800)                            # and the second
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == 3600, timeout=60, what="the live stream")
            files = [tmp_path / "app.log.1", log]
            since = T0 + pd.Timedelta("20min")
            got = sub.history(since=since, timeout=60)
            want = expected(files, since)
            cols = list(want.columns)
            assert len(got) == len(want) == 2400
            pd.testing.assert_frame_equal(got[cols].sort_values("timestamp").reset_index(drop=True), want,
                                          check_dtype=False)
            # rows carry their file and offset; from both files
            assert set(got["_file"]) == {str(f) for f in files}
            h = sub.stats()["history"]
            assert h[["name", "status", "rows"]].values.tolist() == [["node1", "done", 2400]]
            everything = h["bytes"].iloc[-1]
            # pushed down: where and columns at the producer
            before = sub.stats()["bytes"]
            got = sub.history(since=since, where="status >= 500 and host == 'web1'",
                              columns=["timestamp", "status"], timeout=60)
            want = expected(files, since, "status >= 500 and host == 'web1'", ["timestamp", "status"])
            assert set(got.columns) == {"timestamp", "status", "_file", "_offset"}
            pd.testing.assert_frame_equal(got[["timestamp", "status"]].sort_values("timestamp")
                                          .reset_index(drop=True), want, check_dtype=False)
            assert 0 < len(got) < 200
            # the rows and columns left out never crossed the network
            assert sub.stats()["history"]["bytes"].iloc[-1] * 5 < everything
            # an until, and an unknown column: the producer's reply says which
            got = sub.history(since=T0 + pd.Timedelta("10min"), until=T0 + pd.Timedelta("11min"), timeout=60)
            assert len(got) == 60
            sub.history(since=since, columns=["nope"], timeout=60)
            last = sub.stats()["history"].iloc[-1]
            assert last["status"] == "refused" and "no column 'nope'" in last["reason"]
            assert sub.stats()["bytes"] == before   # history bytes are not the live stream's
        finally:
            pub.close()


def test_a_producer_killed_mid_replay_is_a_counted_loss_and_the_others_finish(tmp_path, procs):
    import os
    import signal
    import threading
    with zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") as proxy, \
            zp.Subscriber(">" + proxy.backend[0], topics="m") as sub:
        for node in ("node1", "node2"):
            write_log(tmp_path / f"{node}.log", 0, 20_000)
            # replays at 100 kB/s: about 8 s for each file's 800 kB
            procs.start("publish", str(tmp_path / f"{node}.log"), "--follow", "--history",
                        "--history-rate", "100k", "-t", "m", "-e", ">" + proxy.frontend[0],
                        "--name", node, "--quiet")
        wait_for(lambda: sub.stats()["rows"] == 40_000, timeout=60, what="both live streams")
        result: dict = {}
        asking = threading.Thread(target=lambda: result.update(
            df=sub.history(since=T0, timeout=120)))
        with pytest.warns(zp.DataLossWarning, match=r"1 producer\(s\) did not answer: node2"):
            asking.start()

            def node2_replaying() -> bool:
                return any(rep.rows.get(p, 0) and rep.names.get(p) == "node2"
                           for rep in list(sub._rx.past.replies.values()) for p in list(rep.rows))

            wait_for(node2_replaying, timeout=60, what="node2's replay under way")
            victim = procs.procs[1]
            os.kill(victim.pid, signal.SIGKILL)
            asking.join(120)
        assert not asking.is_alive()
        h = sub.stats()["history"].set_index("name")
        assert h.loc["node1", "status"] == "done" and h.loc["node1", "rows"] == 20_000
        assert h.loc["node2", "status"] == "no answer" and 0 < h.loc["node2", "rows"] < 20_000
        df = result["df"]
        assert len(df) == 20_000 + h.loc["node2", "rows"]          # what came is kept, counted


def test_a_late_subscriber_gets_the_past_then_the_live_stream_each_row_once(tmp_path, procs):
    """8 producer processes follow logs holding an hour (a rename and a copytruncate
    rotation in the middle), through a Proxy; a subscriber that starts after all of it,
    with since=, gets exactly what a pandas filter of the files gives, then new lines."""
    import shutil
    nodes = [f"node{i}" for i in range(1, 9)]
    with zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") as proxy, \
            zp.Subscriber(">" + proxy.backend[0], topics="m") as watcher:   # another notebook
        for i, node in enumerate(nodes):
            (tmp_path / node).mkdir()
            write_log(tmp_path / node / "app.log", i * 100_000, 0)           # header only
            procs.start("publish", str(tmp_path / node / "app.log*"), "--follow", "--history",
                        "-t", "m", "-e", ">" + proxy.frontend[0], "--name", node, "--quiet")
        wait_for(lambda: len(watcher.stats()["producers"]) == 8, timeout=60, what="8 producers")

        def first(i):   # the node's own seconds: rows stay unique across nodes
            return i * 100_000

        for i, node in enumerate(nodes):
            write_log(tmp_path / node / "app.log", first(i), 1800, mode="a")
        wait_for(lambda: watcher.stats()["rows"] == 8 * 1800, timeout=60, what="the first half hour")
        for i, node in enumerate(nodes):
            log = tmp_path / node / "app.log"
            if i % 2:                                    # rename
                log.rename(tmp_path / node / "app.log.1")
                write_log(log, first(i) + 1800, 0)
            else:                                        # copytruncate
                shutil.copy(log, tmp_path / node / "app.log.1")
                with open(log, "r+") as f:
                    f.truncate(0)
                    f.write("timestamp,host,status,latency_ms\n")
            write_log(log, first(i) + 1800, 1800, mode="a")
        wait_for(lambda: watcher.stats()["rows"] == 8 * 3600, timeout=60, what="the second half hour")

        since = T0 + pd.Timedelta("30min")
        with zp.Subscriber(">" + proxy.backend[0], topics="m", since=since) as late:
            # new lines while the past is asked for: in the replay or live or both - once
            for i, node in enumerate(nodes):
                write_log(tmp_path / node / "app.log", first(i) + 3600, 50, mode="a")
            wait_for(lambda: late.stats()["history"].shape[0] == 8, timeout=120, what="the past")
            h = late.stats()["history"]
            assert set(h["status"]) == {"done"}, h
            # then new lines, live
            for i, node in enumerate(nodes):
                write_log(tmp_path / node / "app.log", first(i) + 3650, 50, mode="a")
            wait_for(lambda: watcher.stats()["rows"] == 8 * 3700, timeout=60, what="the new lines")
            wait_for(lambda: late.stats()["rows"] == 8 * 100, timeout=60, what="the new lines, late")
            got = late.frame()
            cols = ["timestamp", "host", "status", "latency_ms"]
            everything = expected(sorted(tmp_path.glob("node*/app.log*")))
            want = everything[everything["timestamp"] >= since][cols].sort_values("timestamp")
            assert got.duplicated(["timestamp", "host"]).sum() == 0          # each row once
            pd.testing.assert_frame_equal(got[cols].sort_values("timestamp").reset_index(drop=True),
                                          want.reset_index(drop=True), check_dtype=False)
            # the past came first, then the lines written after the replays
            new = {(f"web{k % 3}", T0 + pd.Timedelta(seconds=k)) for i in range(8)
                   for k in range(first(i) + 3650, first(i) + 3700)}
            assert set(zip(got["host"].tail(400), got["timestamp"].tail(400))) == new


def test_replays_are_bounded_in_number_and_a_requester_that_stops_asking_cancels(tmp_path):
    import threading
    log = tmp_path / "app.log"
    write_log(log, 0, 20_000)                                    # 800 kB
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as a, \
            zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as b:
        producer = zp.Producer([*a.endpoints, *b.endpoints], topic="m", name="node1",
                               wait_for_subscribers=2)
        pub = Publishing(str(log), producer, history_rate=100_000, history_max=1)
        try:
            wait_for(lambda: a.stats()["rows"] == 20_000 and b.stats()["rows"] == 20_000,
                     timeout=60, what="the live stream")
            result: dict = {}
            first = threading.Thread(target=lambda: result.update(a=a.history(since=T0, timeout=1)))
            with pytest.warns(zp.DataLossWarning, match="did not answer: node1"):
                first.start()
                # a second request while the first replays: one at a time, so refused
                wait_for(lambda: producer.stats()["history_messages"] > 0, what="a's replay")
                b.history(since=T0, timeout=30)
                first.join(30)
            h = b.stats()["history"]
            assert h["status"].tolist() == ["refused"] and "busy: 1 replays running" in h["reason"].iloc[0]
            # a gave up after 1 s (an 8 s replay): its unsubscribing cancels the replay
            counts: list[int] = []

            def stopped() -> bool:
                counts.append(producer.stats()["history_messages"])
                return len(counts) > 10 and counts[-1] == counts[-10]

            wait_for(stopped, timeout=30, interval=0.1, what="the replay to stop")
            assert 0 < len(result["a"]) < 20_000
            assert a.stats()["history"]["status"].tolist() == ["no answer"]
            # and the producer takes a new request at once
            assert len(b.history(since=T0 + pd.Timedelta(seconds=19_990), timeout=30)) == 10
        finally:
            pub.close()
            producer.close()


def test_credit_bounds_what_a_replay_has_in_flight(tmp_path):
    """A requester that takes nothing holds a replay at its window; credit lets it on."""
    from zpandas.history import credit_topic, parse_credit
    assert parse_credit(credit_topic(b"t", b"p" * 16, 7)) == (b"t", b"p" * 16, 7)
    for bad in (b"t\x00credit/", b"t\x00credit/zz/1", b"t\x00credit/" + b"a" * 32 + b"/x", b"t"):
        assert parse_credit(bad) is None
    log = tmp_path / "app.log"
    write_log(log, 0, 200_000)                   # about 12 messages of 1 MiB
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        raw.subscribe(b"m")
        pub = Publishing(str(log), f">tcp://127.0.0.1:{port}")
        try:
            while True:   # the live stream is up: the producer knows its topic
                assert raw.poll(30_000)
                if wire.decode(raw.recv_multipart()).header.kind is wire.Kind.DATA:
                    break
            raw.unsubscribe(b"m")
            req = Request(id="a" * 32, topic="m", window=3)   # 3 messages ahead of credit
            raw.subscribe(req.reply_topic)

            def replies(seconds: float) -> list:
                """What comes within ``seconds`` (a held replay sends nothing more)."""
                out, end = [], time.monotonic() + seconds
                while raw.poll(max(1, int((end - time.monotonic()) * 1000))):
                    msg = wire.decode(raw.recv_multipart())
                    if msg.topic == req.reply_topic and msg.kind is wire.Kind.DATA:
                        out.append(msg)   # (progress messages take no credit)
                    if time.monotonic() >= end:
                        break
                return out

            first = replies(2.0)
            assert [m.header.seq for m in first] == [0, 1, 2]          # the window, no more
            producer = first[0].header.producer
            raw.subscribe(credit_topic(req.reply_topic, producer, 3))
            more = replies(2.0)
            assert [m.header.seq for m in more] == [3, 4, 5]
            raw.unsubscribe(req.reply_topic)                         # stop asking: cancelled
        finally:
            pub.close()
    finally:
        raw.close(linger=0)
        ctx.term()


def test_progress_bodies_are_checked():
    from zpandas.history import progress_table, read_progress
    assert read_progress(progress_table(files=2, bytes_total=10, bytes_done=4, rows=3)) == {
        "files": 2, "bytes_total": 10, "bytes_done": 4, "rows": 3}
    for bad in (progress_table(files=1, bytes_total=10, bytes_done=11, rows=0),
                progress_table(files=-1, bytes_total=10, bytes_done=1, rows=0),
                pa.table({"files": [1]})):
        with pytest.raises(ValueError):
            read_progress(bad)
    header = wire.Header(kind=wire.Kind.HISTORY_PROGRESS, producer=b"p" * 16, rows=1)
    frames = wire.encode(pa.table({"files": [1], "bytes_total": [5], "bytes_done": [9], "rows": [0]}),
                         topic=PREFIX + b"x", header=header)   # more done than there is
    with pytest.raises(zp.WireError) as e:
        wire.decode(frames)
    assert e.value.reason == "columns"


def test_the_past_asked_at_the_start_shows_how_far_it_is_once(tmp_path):
    """since=: while the live rows wait for the past, history_progress() has one row for
    the request and producer (it listed since='s requests twice)."""
    for name in ("app.log.1", "app.log"):
        write_log(tmp_path / name, 0 if name.endswith("1") else 30_000, 30_000)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m", since=T0, history_timeout=60) as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0], history_rate=400_000)
        try:
            seen = wait_for(lambda: [r for r in sub.history_progress().itertuples()
                                     if 0 < r.bytes_done < r.bytes_total], timeout=30,
                            what="the past under way")
            progress = sub.history_progress()
            assert len(seen) == 1 and len(progress) == 1, progress
            assert progress["name"].tolist() == ["node1"]
            wait_for(lambda: sub.history_progress().empty, timeout=60, what="the past's end")
        finally:
            pub.close()


def test_the_past_of_a_log_whose_lines_end_with_a_lone_cr_is_its_rows(tmp_path):
    """A followed file with lone-CR line ends: its past is the rows the live stream gave
    (a replay read it as one line: no rows)."""
    log = tmp_path / "app.log"
    write_log(log, 0, 1200)
    log.write_bytes(log.read_bytes().replace(b"\n", b"\r"))
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == 1200, timeout=60, what="the live stream")
            since = T0 + pd.Timedelta("10min")
            got = sub.history(since=since, timeout=60)
            want = expected([log], since)
            cols = list(want.columns)
            pd.testing.assert_frame_equal(got[cols].sort_values("timestamp").reset_index(drop=True),
                                          want, check_dtype=False)
            assert sub.stats()["history"]["status"].tolist() == ["done"]
        finally:
            pub.close()


def test_a_rotation_while_a_replay_opens_its_files_loses_no_file(tmp_path, monkeypatch):
    """A rename rotation between listing the files and opening them: opened by names that
    had moved on, the oldest file was never read and the answer still said done (a soak
    caught it when a replay was slow). The names are checked after the opens now."""
    from zpandas.sources import replay
    log = tmp_path / "app.log"
    for name, first in (("app.log.2", 0), ("app.log.1", 10), ("app.log", 20)):
        (tmp_path / name).write_text("".join(f'{{"i": {i}}}\n' for i in range(first, first + 10)))
        os.utime(tmp_path / name, (first, first))
    listed = replay._files
    rotated = []

    def rotate_after_listing(patterns):
        names = listed(patterns)
        if not rotated:
            rotated.append(True)
            for n in (2, 1):
                os.rename(f"{log}.{n}", f"{log}.{n + 1}")
            os.rename(log, f"{log}.1")
            log.write_text("".join(f'{{"i": {i}}}\n' for i in range(30, 40)))
        return names

    monkeypatch.setattr(replay, "_files", rotate_after_listing)
    fh = replay.FileHistory([str(log) + "*"], dict(fmt="jsonl", delimiter=",",
                                                   max_line_bytes=1 << 20, time_format=None,
                                                   flatten=True))
    plan = replay.Answer(fh, Request.new(topic=""), None, None)._plan([])
    try:
        firsts = [os.pread(p.f.fileno(), 9, 0) for p in plan]
    finally:
        for p in plan:
            p.f.close()
    assert rotated and firsts == [b'{"i": 0}\n', b'{"i": 10}', b'{"i": 20}', b'{"i": 30}']


def _jsonl_history(patterns):
    from zpandas.sources import replay
    return replay.FileHistory(patterns, dict(fmt="jsonl", delimiter=",", max_line_bytes=1 << 20,
                                             time_format=None, flatten=True))


def _replay_with(fh, on_first_rows):
    """Run a replay of ``fh`` in this thread; ``on_first_rows()`` is called when its first
    rows are sent. Returns (the i of every row sent, their _file values, the end)."""
    import threading
    from zpandas.sources import replay
    got, files, ends = [], set(), []

    def send(table, kind=wire.Kind.DATA, source="", start=-1, end=-1):
        if kind is wire.Kind.HISTORY_END:
            ends.append(history.read_end(table))
        elif kind is wire.Kind.DATA:
            if not got:
                on_first_rows()
            got.extend(table.column("i").to_pylist())
            files.update(table.column("_file").to_pylist())
        return True

    replay.Answer(fh, Request.new(topic=""), send, threading.Event()).run()
    return got, files, ends[0]


@pytest.mark.parametrize("copy_kept", [True, False], ids=["copy kept", "copy gone"])
def test_a_copytruncate_while_a_replay_reads_the_file(tmp_path, monkeypatch, copy_kept):
    """logrotate's copytruncate empties the live file while a replay reads it, and its
    writer fills it anew: the rest of what was asked is read from the copy - not the new
    writes at the old offsets (they are the live stream's), not a short answer that says
    "done". With no copy to be found, the answer says it failed and why."""
    import shutil
    from zpandas.sources import replay
    monkeypatch.setattr(replay, "BLOCK", 4096)   # many blocks: the truncation lands mid-file
    log = tmp_path / "app.log"
    log.write_text("".join(f'{{"i": {i}, "pad": "{"x" * 40}"}}\n' for i in range(5000)))

    def copytruncate():
        if copy_kept:
            shutil.copyfile(log, f"{log}.1")
        with open(log, "r+") as f:
            f.truncate(0)
        with open(log, "a") as f:   # the writer goes on: more than was there, other rows
            f.write("".join(f'{{"i": {i}, "pad": "{"y" * 60}"}}\n' for i in range(10_000, 15_000)))

    got, files, end = _replay_with(_jsonl_history([str(log) + "*"]), copytruncate)
    if copy_kept:
        assert end["status"] == "done", end
        assert got == list(range(5000))
        assert files == {str(log), f"{log}.1"}   # each row says where its bytes are now
    else:
        assert end["status"] == "failed" and "emptied while it was read" in end["reason"], end
        assert 0 < len(got) < 5000 and got == list(range(len(got)))   # what was read, once


@pytest.mark.parametrize("then", ["written on", "quiet for a while", "just written"])
def test_a_line_not_ended_when_the_past_was_asked_for(tmp_path, monkeypatch, then):
    """A writer in the middle of a line (a buffered logger flushes in blocks) when the
    request comes: its start alone was a row of the past ("2,b,2" for "2,b,200"), and the
    subscriber then kept that one and dropped the live stream's whole row at the same
    offset. Written on since: the whole line. Not: a record once the file has been quiet
    for 2 s, as the live stream decides - before that it is the live stream's."""
    import threading
    from zpandas.sources import replay
    monkeypatch.setattr(replay, "BLOCK", 8)   # the plan, then the reads, a few bytes at a time
    log = tmp_path / "sales.csv"
    log.write_bytes(b"n,shop,sales\n1,a,100\n2,b,2")
    if then == "quiet for a while":
        os.utime(log, (time.time() - 10, time.time() - 10))
    fh = replay.FileHistory([str(log)], dict(fmt="csv", delimiter=",", max_line_bytes=1 << 20,
                                             time_format=None, flatten=True))
    rows, ends = [], []

    def send(table, kind=wire.Kind.DATA, **_):
        if kind is wire.Kind.DATA:
            if not rows and then == "written on":
                with open(log, "ab") as out:
                    out.write(b"00\n3,c,300\n")
            rows.extend(zip(table.column("n").to_pylist(), table.column("sales").to_pylist()))
        elif kind is wire.Kind.HISTORY_END:
            ends.append(history.read_end(table)["status"])
        return True

    replay.Answer(fh, Request.new(topic=""), send, threading.Event()).run()
    assert ends == ["done"]
    assert rows == {"written on": [(1, 100), (2, 200)], "quiet for a while": [(1, 100), (2, 2)],
                    "just written": [(1, 100)]}[then]


def test_a_replay_shows_how_far_it_is(tmp_path, capsys):
    """Bytes of file read of all, rows and an ETA per producer while it runs (a paced
    replay: 100 kB/s of 2.4 MB), and a bar when asked."""
    import threading
    for name in ("app.log.1", "app.log"):
        write_log(tmp_path / name, 0 if name.endswith("1") else 30_000, 30_000)
    sizes = sum((tmp_path / n).stat().st_size for n in ("app.log.1", "app.log"))
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0], history_rate=400_000)
        try:
            wait_for(lambda: sub.stats()["rows"] == 60_000, timeout=60, what="the live stream")
            result = {}
            asking = threading.Thread(target=lambda: result.update(
                df=sub.history(since=T0, timeout=60, progress=True)))
            asking.start()
            seen = wait_for(lambda: [r for r in sub.history_progress().itertuples()
                                     if 0 < r.bytes_done < r.bytes_total], timeout=30,
                            what="a replay under way")
            r = seen[0]
            assert r.name == "node1" and r.status == "running" and r.files == 2
            # from the first row's place (the header line is not a row) to the ends
            assert sizes - 100 < r.bytes_total <= sizes and 0 < r.rows < 60_000
            assert 0 < r.eta_s < 60
            asking.join(60)
            assert len(result["df"]) == 60_000 and sub.history_progress().empty
            assert sub.stats()["history"]["status"].tolist() == ["done"]
        finally:
            pub.close()
    err = capsys.readouterr().err
    assert "the past" in err and "1 of 1 producers done, 60,000 rows" in err


def _children_of(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/stat") as f:
                if p.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
        except (OSError, ValueError):
            continue
    return out


def test_a_replay_runs_in_a_process_of_its_own_at_a_lower_priority(tmp_path):
    """No interpreter lock shared with the live stream, and a lower CPU priority (nice 10)."""
    import threading
    write_log(tmp_path / "app.log", 0, 30_000)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log"), ">" + sub.endpoints[0], history_rate=200_000)
        try:
            wait_for(lambda: sub.stats()["rows"] == 30_000, timeout=60, what="the live stream")
            asking = threading.Thread(target=lambda: sub.history(since=T0, timeout=60, progress=False))
            asking.start()

            def replaying() -> list[int]:
                servers = [p for p in _children_of(os.getpid())
                           if b"forkserver" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes()]
                return [p for server in servers for p in _children_of(server)]

            def niced() -> set[int]:
                try:
                    return {os.getpriority(os.PRIO_PROCESS, p) for p in replaying()}
                except ProcessLookupError:
                    return set()

            # (a process just forked sets its priority first thing)
            wait_for(lambda: niced() == {10}, timeout=30, what="a replay's process at nice 10")
            asking.join(60)
            assert sub.stats()["history"]["status"].tolist() == ["done"]
            live = {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threading.enumerate()
                    if t.name.startswith("zpandas-producer") and t.is_alive()}
            assert live == {0}      # the live stream's threads as they were
            wait_for(lambda: not replaying(), timeout=30, what="the replay's process to end")
        finally:
            pub.close()


def test_a_producer_first_heard_after_the_past_was_asked_is_asked_then(tmp_path):
    """since=: the past is asked of the producers heard from when the subscriber starts; one
    first heard from later is asked for its own then, and its live rows wait for it: its
    past, then its live rows, each once. One without history says so."""
    write_log(tmp_path / "app.log", 0, 100)
    write_log(tmp_path / "late.log", 1000, 50)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m", since=T0) as sub:
        pub = Publishing(str(tmp_path / "app.log"), ">" + sub.endpoints[0])
        late = None
        try:
            sub.wait_for_producers(1, timeout=60, progress=False)
            assert sub.stats()["history"]["status"].tolist() == ["done"]
            assert len(sub.frame()) == 100
            # a node that comes later, with a file of 50 rows, then 10 more while followed
            late = Publishing(str(tmp_path / "late.log"), ">" + sub.endpoints[0], name="node2")
            wait_for(lambda: len(sub.frame()) == 150, timeout=60, what="the latecomer's past")
            write_log(tmp_path / "late.log", 1050, 10, mode="a")
            wait_for(lambda: len(sub.frame()) == 160, timeout=60, what="its live rows")
            h = sub.stats()["history"].set_index("name")
            assert h.loc["node2", "status"] == "done" and h.loc["node2", "rows"] == 50
            df = sub.frame()
            mine = df[df["_file"] == str(tmp_path / "late.log")]
            assert mine["_offset"].is_unique and mine["_offset"].is_monotonic_increasing
            assert mine["latency_ms"].tolist() == [i % 1000 for i in range(1000, 1060)]
            # a producer without history: it says so, and its rows are kept
            with zp.Producer(">" + sub.endpoints[0], topic="m", name="plain",
                             wait_for_subscribers=1) as plain:
                plain.send(rows())
                wait_for(lambda: len(sub.frame()) == 163, timeout=30, what="its rows")
            assert sub.stats()["history"].set_index("name").loc["plain", "status"] == "no history"
            assert len(sub.frame()) == 163   # each row once: the seams dropped the rest
        finally:
            pub.close()
            if late is not None:
                late.close()


def test_a_producer_restarted_after_the_past_was_asked_gives_no_row_twice(tmp_path):
    """since=: a producer restarted from its checkpoint is a new one to the subscriber, and
    is asked for its past: the rows it gave before its restart are not taken again."""
    log, ckpt = tmp_path / "app.log", tmp_path / "state" / "ckpt.db"
    write_log(log, 0, 100)
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m", since=T0) as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
        try:
            sub.wait_for_producers(1, timeout=60, progress=False)
            wait_for(lambda: len(sub.frame()) == 100, timeout=30, what="the first run's rows")
            pub.close()
            write_log(log, 100, 10, mode="a")
            pub = Publishing(str(log), ">" + sub.endpoints[0], checkpoint=ckpt)
            wait_for(lambda: len(sub.frame()) >= 110 and len(sub.stats()["history"]) == 2,
                     timeout=60, what="the second run's rows and its past")
            assert sub.stats()["history"]["status"].tolist() == ["done", "done"]
            df = sub.frame()
            assert len(df) == 110 and df["_offset"].is_unique
        finally:
            pub.close()


def test_a_script_without_a_main_guard_serves_history_and_runs_once(tmp_path):
    """A replay's process is forked from multiprocessing's fork server, which would import
    a script's main module again in it: a script without ``if __name__ == "__main__"``
    must not run twice."""
    import subprocess
    import sys
    write_log(tmp_path / "app.log", 0, 100)
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys\nimport zpandas as zp\n"
        "with open(sys.argv[2], 'a') as f:\n    f.write('ran\\n')\n"
        "zp.publish_files(sys.argv[1], '>' + sys.argv[3], follow=True, history=True, topic='m',\n"
        "                 name='script', poll_interval=0.05, duration=float(sys.argv[4]))\n")
    runs = tmp_path / "runs.txt"
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "app.log"), str(runs),
                                 sub.endpoints[0], "20"], cwd=tmp_path)
        try:
            wait_for(lambda: sub.stats()["rows"] == 100, timeout=60, what="the script's rows")
            got = sub.history(since=T0, timeout=60, progress=False)
            assert len(got) == 100 and sub.stats()["history"]["status"].tolist() == ["done"]
        finally:
            proc.terminate()
            proc.wait(60)
    assert runs.read_text() == "ran\n"


def test_replayed_rows_have_the_live_streams_dtypes(tmp_path):
    """The live stream's first rows fix its column types; a replay of the same file gives
    the same ones, though its first block alone would type a column otherwise."""
    log = tmp_path / "app.log"
    log.write_text("timestamp,host,code\n" f"{T0.isoformat()},web0,7\n")   # code: integers
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=60, what="the first row")
            with open(log, "a") as f:   # whole numbers written as "12.0": alone, floats
                f.writelines(f"{(T0 + pd.Timedelta(seconds=i)).isoformat()},web{i % 3},{i}.0\n"
                             for i in range(1, 500))
            wait_for(lambda: sub.stats()["rows"] == 500, timeout=60, what="the live stream")
            live = sub.frame()
            past = sub.history(since=T0, timeout=60, progress=False)
        finally:
            pub.close()
    assert live["code"].dtype == past["code"].dtype == "int64"
    assert dict(past.dtypes) == dict(live.dtypes)
    pd.testing.assert_frame_equal(past.sort_values("_offset").reset_index(drop=True),
                                  live.sort_values("_offset").reset_index(drop=True))
