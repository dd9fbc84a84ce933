"""Files that grow, rotate and restart: every line exactly once; formats, rejects, text."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import zmq

import zpandas as zp
from zpandas.sources.follow import Follower

from .conftest import ROOT, wait_for

LOCAL = "@tcp://127.0.0.1:*"
WRITER = os.path.join(ROOT, "tests", "writer.py")


class Publishing:
    """``publish_files`` on a thread of this process, stopped and joined at the end."""

    def __init__(self, paths, endpoint, **kw) -> None:
        self.stop = threading.Event()
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(paths, endpoint), kwargs=kw)
        self.thread.start()

    def _run(self, paths, endpoint, **kw) -> None:
        try:
            self.result = zp.publish_files(paths, endpoint, stop=self.stop, **kw)
        except BaseException as e:  # re-raised by finish()
            self.error = e

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def ids(sub: zp.Subscriber) -> np.ndarray:
    df = sub.frame()
    return np.sort(df["i"].to_numpy()) if len(df) else np.array([], dtype=int)


def test_rotation_by_rename_and_copytruncate_loses_and_repeats_nothing(tmp_path):
    lines = 100_000
    log = tmp_path / "app.log"
    log.touch()
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0], format="jsonl",
                         follow=True, poll_interval=0.05, wait_for_subscribers=1, name="tail")
        try:
            writer = subprocess.Popen(
                [sys.executable, WRITER, str(log), "--lines", str(lines), "--rate", "40000",
                 "--rotate", "20000:rename,40000:copy,60000:rename,80000:copy"],
                stdout=subprocess.PIPE, text=True)
            try:
                assert writer.stdout.readline().strip() == "done"
            finally:
                writer.communicate(timeout=30)
            wait_for(lambda: sub.stats()["rows"] >= lines, timeout=60, what="every line")
        finally:
            result = pub.finish()
        got = ids(sub)
    np.testing.assert_array_equal(got, np.arange(lines))  # each line exactly once
    assert result["lost_truncations"] == 0 and result["rejects"] == 0
    # rotated files: app.log.1 .. app.log.4 and the current app.log were all read
    assert sorted(os.listdir(tmp_path)) == ["app.log", *(f"app.log.{k}" for k in range(1, 5))]


def test_kill_9_three_times_and_restart_every_line_once(tmp_path, procs):
    lines = 60_000
    log = tmp_path / "app.log"
    log.touch()
    checkpoint = tmp_path / "state" / "checkpoint.db"
    rng = random.Random(7)
    with zp.Subscriber(LOCAL) as sub:
        def producer():
            return procs.start("publish", str(log), "-e", ">" + sub.endpoints[0], "--format", "jsonl",
                               "--follow", "--checkpoint", str(checkpoint), "--quiet", "--name", "node")

        writer = subprocess.Popen([sys.executable, WRITER, str(log), "--lines", str(lines),
                                   "--rate", "15000"], stdout=subprocess.PIPE, text=True)
        try:
            p = producer()
            for _ in range(3):  # killed at a random point of the run, restarted at once
                # (never past the last line: on a loaded machine the writer may be done)
                at = min(sub.stats()["rows"] + rng.randint(2_000, 12_000), lines)
                wait_for(lambda at=at: sub.stats()["rows"] >= at, timeout=60, what=f"{at} rows")
                p.send_signal(signal.SIGKILL)
                p.wait()
                p = producer()
            assert writer.stdout.readline().strip() == "done"
            wait_for(lambda: len(ids(sub)) >= lines, timeout=60, what="every line")
            # the last run may have had nothing left to send: wait until it is up (its
            # heartbeats), so that SIGTERM meets its handler, not a process still starting
            wait_for(lambda: len(sub.stats()["producers"]) == 4, timeout=30, what="the last run")
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == -signal.SIGTERM   # a clean stop, ended by the signal
        finally:
            writer.communicate(timeout=60)
        stats = sub.stats()
        got = ids(sub)
    np.testing.assert_array_equal(got, np.arange(lines))
    # the restarts resent what was in flight, and the subscriber dropped exactly that
    assert stats["duplicate_rows"] > 0
    assert stats["rows"] == lines and stats["producers"]["name"].eq("node").all()
    assert len(stats["producers"]) == 4  # four runs of the producer


def test_multiline_records_and_the_last_one_within_the_timeout(tmp_path):
    log = tmp_path / "service.log"
    records = []
    for n in range(5):
        head = f"2026-11-28 07:00:0{n} ERROR request {n} failed"
        trace = "\n".join(["Traceback (most recent call last):",
                           f'  File "app.py", line {10 + n}, in handle',
                           "    do()", f"ValueError: bad input {n}"])
        records.append((head, trace))
    log.write_text("".join(f"{h}\n{t}\n" for h, t in records))
    fmt = r"regex:(?P<time>\S+ \S+) (?P<level>[A-Z]+) (?P<message>[\s\S]*)"
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], format=fmt, follow=True,
                         multiline=r"\d{4}-\d\d-\d\d ", multiline_timeout=0.5,
                         poll_interval=0.05, wait_for_subscribers=1)
        try:
            # the last traceback has no next record after it: only the timeout sends it
            wait_for(lambda: sub.stats()["rows"] == 5, timeout=10, what="all 5 records")
            assert pub.thread.is_alive()  # still following: it was the timeout
        finally:
            pub.finish()
        df = sub.frame()
    assert df["level"].tolist() == ["ERROR"] * 5
    for (head, trace), message in zip(records, df["message"], strict=True):
        assert message == head.split("ERROR ", 1)[1] + "\n" + trace


def test_new_files_are_picked_up_and_deleted_ones_released(tmp_path):
    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(10)))
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing(str(tmp_path / "*.jsonl"), ">" + sub.endpoints[0], format="jsonl",
                         follow=True, poll_interval=0.05, wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] == 10, what="the first file")
            second = tmp_path / "b.jsonl"
            with open(second, "w") as f:
                f.write("".join(json.dumps({"i": i}) + "\n" for i in range(10, 15)))
                f.write('{"i": 15')  # a partial last line: held until its newline comes
                f.flush()
                wait_for(lambda: sub.stats()["rows"] == 15, what="the new file")
                f.write("}\n")
            wait_for(lambda: sub.stats()["rows"] == 16, what="the completed line")
            os.unlink(first)
            wait_for(lambda: not _open(first), timeout=15, what="the deleted file released")
        finally:
            pub.finish()
        assert ids(sub).tolist() == list(range(16))


def _open(path) -> bool:
    """Is ``path`` open in this process (also once deleted)?"""
    target = str(path)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(target):
                return True
        except OSError:
            continue
    return False


ACCESS = [
    '10.0.0.1 - alice [28/Nov/2026:07:00:00 +0100] "GET /index.html HTTP/1.1" 200 512 "-" "curl/8"',
    'this is not an access log line',
    '10.0.0.2 - - [28/Nov/2026:07:00:01 +0100] "POST /api HTTP/1.1" 500 - "http://x/" "Mozilla"',
    '10.0.0.3 - - [28/Nov/2026:07:00:02 +0100] "GET / HTTP/1.1" 99x 1 "-" "-"',
]


def test_bad_lines_become_rejects_with_file_line_offset_and_reason(tmp_path):
    log = tmp_path / "access.log"
    data = ("\n".join(ACCESS) + "\n").encode() + b"\xff\xfe not utf-8\n" + b"x" * 300 + b"\n"
    log.write_bytes(data)
    with zp.Subscriber(LOCAL) as sub:
        result = zp.publish_files(log, sub.endpoints, format="nginx", max_line_bytes=200,
                                  wait_for_subscribers=1)
        df = sub.collect(producers=1, timeout=10)
        rejects = sub.rejects()
        stats = sub.stats()
    assert df["remote_addr"].tolist() == ["10.0.0.1", "10.0.0.2"]
    assert df["status"].tolist() == [200, 500]
    assert df["time"].tolist() == [pd.Timestamp("2026-11-28T06:00:00Z"), pd.Timestamp("2026-11-28T06:00:01Z")]
    assert pd.isna(df["body_bytes_sent"].iloc[1])   # "-" is missing, not a reject
    assert result["rejects"] == stats["rejects"] == 4
    rejects = rejects.sort_values("line")
    assert rejects["line"].tolist() == [2, 4, 5, 6]
    assert rejects["offset"].tolist() == [data.index(b"this"), data.index(b"10.0.0.3"),
                                          data.index(b"\xff"), data.index(b"xxx")]
    assert [r.split(" ")[0] for r in rejects["reason"]] == ["does", "does", "invalid", "longer"]
    assert set(rejects["file"]) == {str(log)}


def test_a_value_that_does_not_fit_its_column_is_a_reject(tmp_path):
    log = tmp_path / "m.csv"
    log.write_text("host,value\nnode1,1.5\nnode2,2\n")
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing(str(log), ">" + sub.endpoints[0], follow=True, poll_interval=0.05,
                         wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] == 2, what="the first rows")
            with open(log, "a") as f:
                f.write("node3,lots\nnode4,\"4\"\nnode5,5,extra\n")
            wait_for(lambda: sub.stats()["rows"] == 3 and sub.stats()["rejects"] == 2,
                     what="a row and two rejects")
        finally:
            pub.finish()
        df, rejects = sub.frame(), sub.rejects().sort_values("line")
    assert df["value"].tolist() == [1.5, 2.0, 4.0]
    assert rejects["line"].tolist() == [4, 6]
    assert rejects["reason"].tolist() == ["value='lots' does not fit double",
                                          "3 fields, the header has 2"]


def _publish_and_collect(path, fmt: str):
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(path, sub.endpoints, format=fmt, wait_for_subscribers=1)
        return sub.collect(producers=1, timeout=10), sub.rejects()


def test_syslog_and_jsonl_times_are_timezone_aware(tmp_path):
    syslog = tmp_path / "messages"
    syslog.write_text("<34>Oct 11 22:14:15 host1 su[231]: 'su root' failed\n"
                      "<13>1 2026-11-28T07:00:00.5+01:00 host2 app 99 ID1 - started\n")
    old, rejected = _publish_and_collect(syslog, "syslog")           # RFC 3164
    assert old[["host", "app", "pid", "message"]].values.tolist() == [["host1", "su", 231, "'su root' failed"]]
    t = old["time"].iloc[0]
    assert t.tzinfo is not None and (t.month, t.day, t.hour) == (10, 11, 22)
    assert rejected["line"].tolist() == [2]
    new, rejected = _publish_and_collect(syslog, "syslog5424")       # RFC 5424
    assert new[["host", "app", "procid", "msgid", "message"]].values.tolist() == [
        ["host2", "app", "99", "ID1", "started"]]
    assert new["time"].iloc[0] == pd.Timestamp("2026-11-28T06:00:00.5Z")
    assert rejected["line"].tolist() == [1]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text('{"timestamp": "2026-11-28T07:00:00+01:00", "n": 1, "tags": ["a"]}\n')
    events, _ = _publish_and_collect(jsonl, "jsonl")
    assert events["timestamp"].tolist() == [pd.Timestamp("2026-11-28T06:00:00Z")]
    assert events["tags"].tolist() == ['["a"]']  # nested values stay JSON text


def test_plain_text_from_an_existing_publisher_joins_as_rows():
    with zp.Subscriber(LOCAL, text_format="csv:host,metric,value", topics="metrics") as sub:
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        try:
            pub.connect(sub.endpoints[0])
            # the seed's producers: one send_string per row, nothing of zpandas on their side
            # (repeated until the connection is up: PUB drops what it sends before that)
            wait_for(lambda: (pub.send_string("metrics node1,cpu,1.5"), sub.stats()["rows"])[1] > 0,
                     what="a text row")
            pub.send_string("metrics one,two,3,four")
            pub.send_string("other node9,cpu,9")  # another topic: not subscribed
            wait_for(lambda: sub.stats()["rejects"] == 1, what="the reject")
        finally:
            pub.close(linger=0)
            ctx.term()
        df = sub.frame()
        rejects = sub.rejects()
        producers = sub.stats()["producers"]
    assert set(df["host"]) == {"node1"} and (df["value"] == 1.5).all()
    assert rejects["reason"].tolist() == ["4 fields, the header has 3"]
    assert producers["name"].tolist() == ["text"] and producers["topic"].tolist() == ["metrics"]


def test_follower_tells_a_reused_inode_from_the_same_file(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("one\ntwo\n")
    f = Follower([str(path)])
    try:
        assert [r.raw for c in f.poll() for r in c.records] == [b"one", b"two"]
        os.unlink(path)
        path.write_text("three\n")  # may well get the same inode back
        assert [r.raw for c in f.poll() for r in c.records] == [b"three"]
        with open(path, "a") as out:
            out.write("four\nfiv")
        assert [r.raw for c in f.poll() for r in c.records] == [b"four"]  # "fiv" waits
    finally:
        f.close()
