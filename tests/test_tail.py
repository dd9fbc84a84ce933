"""Issue 12 correctness cases for tails that run for days: idle costs nothing, and no
record - however long, however unterminated - can stall a file or a one-pass publish."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import zpandas as zp

from .conftest import ROOT, wait_for
from .test_follow import Publishing

LOCAL = "@tcp://127.0.0.1:*"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_idle_follow_producer_uses_under_one_percent_of_a_core(tmp_path):
    log = tmp_path / "app.log"
    log.write_text('{"a": 1}\n')
    with zp.Subscriber(LOCAL) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpandas", "publish", str(tmp_path / "app.log*"), "-f", "jsonl",
             "--follow", "-e", sub.endpoints[0], "-q"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=30, what="the first row")
            with open(log, "a") as f:  # and one more: it follows, then goes quiet
                f.write('{"a": 2}\n')
            wait_for(lambda: sub.stats()["rows"] == 2, timeout=30, what="the appended row")
            before = _cpu_seconds(proc.pid)
            t0 = time.monotonic()
            wait_for(lambda: time.monotonic() - t0 >= 10, timeout=20, interval=0.5,
                     what="10 s of idling")
            used = _cpu_seconds(proc.pid) - before
            assert used < 0.01 * (time.monotonic() - t0), f"{used:.2f} CPU s in 10 s"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM, err


BIG = 10 << 20  # a 10 MiB line: more than the 4 MiB read block


def _rejects_and_rows(sub, rows: int, rejects: int):
    wait_for(lambda: sub.stats()["rows"] >= rows and sub.stats()["rejects"] >= rejects,
             timeout=60, what=f"{rows} rows and {rejects} rejects")
    return sub.frame(), sub.rejects()


@pytest.mark.timeout(120)
def test_a_line_longer_than_the_read_block_is_a_reject_and_following_goes_on(tmp_path):
    log = tmp_path / "app.log"
    log.write_text('{"i": 0}\n')
    with zp.Subscriber(LOCAL) as sub:
        from .test_follow import Publishing
        pub = Publishing([str(log)], sub.endpoints, format="jsonl", follow=True,
                         wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=30, what="the first row")
            with open(log, "ab") as f:
                f.write(b'{"i": "' + b"x" * BIG + b'"}\n')
                for i in range(1, 4):
                    f.write(b'{"i": %d}\n' % i)
            df, rejects = _rejects_and_rows(sub, 4, 1)
        finally:
            pub.finish()
    assert sorted(df["i"]) == [0, 1, 2, 3]
    (r,) = rejects.itertuples()
    assert (r.file, r.line, r.offset) == (str(log), 2, 9)
    assert r.reason == f"longer than {1 << 20} bytes"
    assert len(r.text) <= 1000


@pytest.mark.timeout(120)
def test_a_one_pass_publish_with_a_huge_line_ends(tmp_path, procs):
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.write(b'{"i": 0}\n{"i": "' + b"y" * BIG + b'"}\n{"i": 2}\n{"i": 3}')  # no final newline
    with zp.Subscriber(LOCAL) as sub:
        p = procs.start("publish", str(big), "-f", "jsonl", "-e", sub.endpoints[0], "-q")
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        df = sub.collect(timeout=30)
        assert sorted(df["i"]) == [0, 2, 3]
        assert sub.rejects()[["line", "offset"]].values.tolist() == [[2, 9]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lines", [False, True], ids=["whole-file", "line-mode"])
def test_an_unclosed_quote_at_the_end_of_a_one_pass_csv_is_a_reject(tmp_path, lines):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,x\n2,"never closed\n3,y\n')
    with zp.Subscriber(LOCAL) as sub:
        extra = {"checkpoint": tmp_path / "ck.sqlite"} if lines else {}
        result = zp.publish_files([str(path)], sub.endpoints, wait_for_subscribers=1, **extra)
        df = sub.collect(timeout=30)
        assert df["a"].tolist() == [1]
        assert result["rejects"] == 1
        (r,) = sub.rejects().itertuples()
        assert (r.line, r.reason) == (3, "unclosed quote")


@pytest.mark.timeout(60)
def test_a_followed_csv_with_an_unclosed_quote_goes_on_after_multiline_timeout(tmp_path):
    """A stray quote in a live CSV file: the record stays open (a quoted field may span
    lines) until ``multiline_timeout`` has passed, then it is cut at its first newline as
    a reject and the lines after it are read - the file does not go quiet."""
    path = tmp_path / "t.csv"
    path.write_text('a,b,c\n1,a,1.0\n2,"b,2.0\n3,c,3.0\n')
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing([str(path)], sub.endpoints, follow=True, multiline_timeout=0.5,
                         wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] >= 2, timeout=20, what="the rows after the quote")
            with open(path, "a") as f:   # the file goes on, and so does reading it
                f.write('4,d,4.0\n5,"e, quoted",5.0\n')
            wait_for(lambda: sub.stats()["rows"] >= 4, timeout=20, what="later rows")
        finally:
            result = pub.finish()
        df = sub.frame()
    assert df["a"].tolist() == [1, 3, 4, 5] and df["b"].tolist()[-1] == "e, quoted"
    (r,) = sub.rejects().itertuples()
    assert (r.line, r.reason, r.text) == (3, "unclosed quote", '2,"b,2.0')
    assert result["rejects"] == 1


def _copytruncate_and_write(log, to_copy: str, to_truncated: str, *, between=None) -> None:
    """logrotate's copytruncate (``between`` runs after the copy), then a line to each file."""
    copy = log.with_name(log.name + ".1")
    shutil.copy(log, copy)
    if between is not None:
        between()
    os.truncate(log, 0)
    with open(copy, "a") as fh:
        fh.write(to_copy)
    with open(log, "a") as fh:
        fh.write(to_truncated)


def _copytruncate(tmp_path, *, lines: int, poll_between: bool, first_sight: str | None):
    """Follow app.log*, copytruncate it, write a line to each file; return what was read."""
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    want = [f"line {i:04d} " + "x" * 30 for i in range(lines)]
    f = Follower([str(tmp_path / "app.log*")], release_after=0)
    got = []

    def poll():
        for _ in range(3):
            for chunk in f.poll():
                got.extend(r.raw.decode() for r in chunk.records)

    try:
        with open(log, "w") as fh:
            if first_sight is not None:  # seen first with only this much written
                fh.write(first_sight)
                fh.flush()
                poll()
                want = [x.rstrip("\n") for x in (first_sight + "ne\n").splitlines()] + want
                fh.write("ne\n")
            fh.write("".join(x + "\n" for x in want[-lines:]))
        poll()
        _copytruncate_and_write(log, "written to the copy\n", "written to the truncated file\n",
                                between=poll if poll_between else None)
        poll()
        poll()
    finally:
        f.close()
    return got, want + ["written to the copy", "written to the truncated file"], f


@pytest.mark.parametrize("lines", [5, 100], ids=["under-1KiB", "over-1KiB"])
@pytest.mark.parametrize("poll_between", [False, True], ids=["copy-unseen", "copy-seen"])
@pytest.mark.parametrize("first_sight", [None, "first line\nsecond li"], ids=["whole", "mid-line"])
def test_copytruncate_then_lines_to_both_files_gives_each_line_once(tmp_path, lines, poll_between,
                                                                    first_sight, caplog):
    got, want, follower = _copytruncate(tmp_path, lines=lines, poll_between=poll_between,
                                        first_sight=first_sight)
    assert sorted(got) == sorted(want)
    assert follower.lost_truncations == 0 and "no copy of it was found" not in caplog.text


def _poller(f, got: list):
    """A function that polls follower ``f`` a few times, adding (record, offset) to ``got``."""
    def poll():
        for _ in range(3):
            for chunk in f.poll():
                got.extend((r.raw, r.offset) for r in chunk.records)
    return poll


@pytest.mark.parametrize("seen", [True, False], ids=["truncation-seen", "truncation-unseen"])
def test_a_writer_that_kept_its_offset_after_copytruncate_loses_no_line(tmp_path, seen):
    """logrotate's copytruncate, and a writer that did not open its log for appending: its
    next lines land past a hole of NULs as long as the file was. The first line after the
    hole was glued to the NULs (a reject, its row lost); the NULs are left out, counted."""
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    f = Follower([str(tmp_path / "app.log*")], release_after=0)
    got = []
    poll = _poller(f, got)

    try:
        with open(log, "w") as out:   # "w", not "a": the writer keeps its own offset
            out.write("".join(f"line {i}\n" for i in range(3)))
            out.flush()
            poll()
            hole = out.tell()
            shutil.copy(log, tmp_path / "app.log.1")
            os.truncate(log, 0)
            if seen:
                poll()   # the truncation seen before the writer writes again
            out.write("line 3\nline 4\n")   # at its old offset: past a hole of NULs
        assert log.read_bytes()[:hole] == b"\0" * hole
        poll()
    finally:
        f.close()
    assert sorted(got) == [(b"line 0", 0), (b"line 1", 7), (b"line 2", 14), (b"line 3", hole),
                           (b"line 4", hole + 7)]
    assert f.nul_bytes == hole   # (unseen too: the file's head is not what it was)


def test_nuls_a_file_ends_with_stay_unread_until_a_line_follows_them(tmp_path):
    """A file preallocated with NULs, written over past its first KiB later: each line once."""
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    head = b"".join(b"line %04d " % i + b"x" * 40 + b"\n" for i in range(40))   # > 1 KiB
    log.write_bytes(head + b"\0" * 500)
    f = Follower([str(log)], release_after=0)
    got = []
    poll = _poller(f, got)

    try:
        poll()
        with open(log, "r+b") as out:
            out.seek(len(head))
            out.write(b"over the NULs\n")
        poll()
        with open(log, "ab") as out:
            out.write(b"appended\n")
        poll()
    finally:
        f.close()
    assert got[-3:] == [(b"line 0039 " + b"x" * 40, len(head) - 51), (b"over the NULs", len(head)),
                        (b"appended", len(head) + 500)]
    assert len(got) == 42 and f.nul_bytes == 500 - len(b"over the NULs\n")


def test_a_preallocated_log_written_over_from_its_start_gives_each_line_once(tmp_path, monkeypatch):
    """A logger that preallocates its file and writes into it (log4j2's memory-mapped
    appender: a region of NULs, filled from the start): its first KiB changes with every
    line. Taken for a truncation, the file was read again from its start - lines twice.
    The NULs are not the file's head yet: each line once live, after a restart from a
    checkpoint, and in the past."""
    import threading
    from zpandas import history, wire
    from zpandas.history import Request
    from zpandas.sources import replay
    from zpandas.sources.checkpoint import Checkpoint
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    log.write_bytes(b"\0" * 8192)
    lines = [b'{"i": %d}\n' % i for i in range(60)]   # 9-10 bytes each: many fit in a KiB
    written = [0]

    def write(upto):   # in place, as a memory map is written
        with open(log, "r+b") as out:
            out.seek(sum(map(len, lines[:written[0]])))
            out.write(b"".join(lines[written[0]:upto]))
        written[0] = upto

    got = []
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        f = Follower([str(log)], release_after=0)
        try:
            for upto in (5, 20, 30):
                write(upto)
                chunks = [ch for _ in range(3) for ch in f.poll()]
                got += [r.raw for ch in chunks for r in ch.records]
                ck.save(f.discovered)
                ck.save([(ch.key, ch.path, ch.dev, ch.ino, ch.head, ch.end, ch.line) for ch in chunks])
            assert f.lost_truncations == 0
        finally:
            f.close()
        write(40)   # while stopped
        f = Follower([str(log)], resume=ck.load(), release_after=0)
        try:
            for upto in (40, 50):
                write(upto)
                got += [r.raw for _ in range(3) for ch in f.poll() for r in ch.records]
        finally:
            f.close()
    assert got == [line.rstrip() for line in lines[:50]]
    monkeypatch.setattr(replay, "BLOCK", 64)   # blocks of a few lines: written on meanwhile
    fh = replay.FileHistory([str(log)], dict(fmt="jsonl", delimiter=",", max_line_bytes=1 << 20,
                                             time_format=None, flatten=True))
    past = []

    def send(table, kind=wire.Kind.DATA, **_):
        if kind is wire.Kind.DATA:
            if not past:
                write(60)
            past.extend(table.column("i").to_pylist())
        elif kind is wire.Kind.HISTORY_END:
            past.append(history.read_end(table)["status"])
        return True

    replay.Answer(fh, Request.new(topic=""), send, threading.Event()).run()
    # (lines written after the replay passed their place are the live stream's)
    assert past[-1] == "done" and past[:-1] == list(range(len(past) - 1)) and len(past) > 50


def test_a_crash_s_nul_block_in_a_whole_log_is_left_out_live_and_in_the_past(tmp_path):
    """A crash leaves a block of NULs before the lines written after it: every line is a
    row, with its offset in the file, live and when the past is asked for."""
    from .test_history import Publishing as Following
    log = tmp_path / "app.log"
    lines = [b'{"i": %d, "msg": "m"}\n' % i for i in range(6)]
    log.write_bytes(b"".join(lines[:3]) + b"\0" * 5000 + b"".join(lines[3:]))
    starts = [0, 21, 42, 5063, 5084, 5105]
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="m") as sub:
        pub = Following(str(log), ">" + sub.endpoints[0], format="jsonl")
        try:
            wait_for(lambda: sub.stats()["rows"] == 6, timeout=30, what="the live stream")
            past = sub.history(timeout=30)
        finally:
            pub.close()
        live = sub.frame()
        assert len(sub.rejects()) == 0
    assert pub.result["nul_bytes"] == 5000
    for df in (live, past):
        assert df.sort_values("i")["i"].tolist() == list(range(6))
        assert df.sort_values("i")["_offset"].tolist() == starts


@pytest.mark.timeout(60)
def test_copytruncate_end_to_end_exactly_the_lines_plus_the_two_new_ones(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("".join(f'{{"i": {i}}}\n' for i in range(5)))  # a small file: 45 bytes
    with zp.Subscriber(LOCAL) as sub:
        from .test_follow import Publishing
        pub = Publishing([str(tmp_path / "app.log*")], sub.endpoints, format="jsonl", follow=True,
                         wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] == 5, timeout=30, what="the first rows")
            _copytruncate_and_write(log, '{"i": 100}\n', '{"i": 200}\n')
            wait_for(lambda: sub.stats()["rows"] >= 7, timeout=30, what="the two new rows")
        finally:
            result = pub.finish()
        df = sub.frame()
        assert sorted(df["i"]) == [0, 1, 2, 3, 4, 100, 200]
        assert sub.stats()["duplicate_rows"] == 0 and result["lost_truncations"] == 0
    # Rows say where they came from: the copy's new line names the copy, the truncated
    # file's names it; each offset is where its line starts in that file.
    where = {i: (os.path.basename(f), o) for i, f, o in df[["i", "_file", "_offset"]].itertuples(index=False)}
    assert where[100] == ("app.log.1", 45) and where[200] == ("app.log", 0)  # 5 lines of 9 bytes
    assert str(df["_file"].dtype) == "category"


@pytest.mark.parametrize("lines", [5, 100], ids=["under-1KiB", "over-1KiB"])
def test_copytruncate_while_stopped_resumes_the_copy_and_reads_the_new_file(tmp_path, lines):
    from zpandas.sources.checkpoint import Checkpoint
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    first = [f"line {i:04d} " + "x" * 30 for i in range(lines)]
    log.write_text("".join(x + "\n" for x in first))
    pattern = [str(tmp_path / "app.log*")]
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        f = Follower(pattern)
        chunks = f.poll()
        got = [r.raw.decode() for ch in chunks for r in ch.records]
        ck.save(f.discovered)
        ck.save([(ch.key, ch.path, ch.dev, ch.ino, ch.head, ch.end, ch.line) for ch in chunks])
        f.close()
        # stopped: the file is rotated by copytruncate and written to
        _copytruncate_and_write(log, "written to the copy\n", "written to the new file\n")
        f = Follower(pattern, resume=ck.load(), release_after=0)
        for _ in range(3):
            got += [r.raw.decode() for ch in f.poll() for r in ch.records]
        f.close()
    assert sorted(got) == sorted(first + ["written to the copy", "written to the new file"])


@pytest.mark.parametrize("release_after", [0, 60], ids=["release_after=0", "release_after=60"])
def test_rename_rotation_then_a_line_appended_to_the_renamed_file_arrives(tmp_path, release_after):
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    f = Follower([str(tmp_path / "app.log*")], release_after=release_after)
    try:
        got = [r.raw.decode() for ch in f.poll() for r in ch.records]
        os.rename(log, tmp_path / "app.log.1")
        log.write_text("new file\n")
        got += [r.raw.decode() for _ in range(2) for ch in f.poll() for r in ch.records]
        with open(tmp_path / "app.log.1", "a") as fh:  # a writer still holding the old file
            fh.write("late line\n")
        got += [r.raw.decode() for _ in range(3) for ch in f.poll() for r in ch.records]
    finally:
        f.close()
    assert sorted(got) == sorted(["one", "two", "new file", "late line"])


def _parse(fmt: str, *lines: bytes, **kw):
    from zpandas.sources.lines import Record, get_format
    return get_format(fmt, **kw).parse([Record(x, i + 1, i * 100) for i, x in enumerate(lines)], "f")


def test_time_and_timestamp_fields_of_any_common_form_become_utc_datetimes():
    import pandas as pd
    table, rejects = _parse(
        "jsonl", b'{"time": "2026-11-28T10:00:00+01:00"}', b'{"time": "Nov 28 2026 10:00"}',
        b'{"time": 1764324000}', b'{"time": 1764324000123}', b'{"time": 1764324000.25}',
        b'{"time": null}', b'{"time": "not a time"}')
    times = table.to_pandas()["time"].tolist()
    assert times[:5] == [pd.Timestamp("2026-11-28 09:00", tz="UTC"), pd.Timestamp("2026-11-28 10:00", tz="UTC"),
                         pd.Timestamp("2025-11-28 10:00", tz="UTC"),
                         pd.Timestamp("2025-11-28 10:00:00.123", tz="UTC"),
                         pd.Timestamp("2025-11-28 10:00:00.25", tz="UTC")]
    assert pd.isna(times[5])
    assert rejects.to_pandas()[["line"]].values.tolist() == [[7]]
    assert "is not a time" in rejects.column("reason")[0].as_py()
    # a regex group named time or timestamp, as for JSON lines
    table, _ = _parse(r"regex:(?P<timestamp>\S+ \S+) (?P<msg>.*)", b"2026-11-28 10:00:00 hello")
    assert str(table.schema.field("timestamp").type) == "timestamp[us, tz=UTC]" or \
        table.schema.field("timestamp").type.tz == "UTC"


def test_time_format_gives_the_format_and_overrides_a_presets():
    import pandas as pd
    table, rejects = _parse(r"regex:(?P<time>\S+) (?P<msg>.*)", b"28.11.2026 hello",
                            b"2026-11-28 not-this-format", time_format="%d.%m.%Y")
    assert table.to_pandas()["time"].tolist() == [pd.Timestamp("2026-11-28", tz="UTC")]
    assert rejects.num_rows == 1
    line = b'1.2.3.4 - - [2026-11-28T10:00:00Z] "GET / HTTP/1.1" 200 5 "-" "x"'
    table, _ = _parse("nginx", line, time_format="ISO8601")
    assert table.to_pandas()["time"].tolist() == [pd.Timestamp("2026-11-28 10:00", tz="UTC")]


def test_time_format_is_refused_for_csv(tmp_path):
    (tmp_path / "a.csv").write_text("a\n1\n")
    with pytest.raises(ValueError, match="time_format= applies to jsonl"):
        zp.publish_files(str(tmp_path / "a.csv"), ">tcp://127.0.0.1:1", time_format="%Y")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [[], ["--parse-threads", "1"]], ids=["default", "one-thread"])
def test_cli_time_format(tmp_path, procs, threads):
    import pandas as pd
    path = tmp_path / "app.log"
    path.write_text("28.11.2026 10:30 started\n")
    with zp.Subscriber(LOCAL) as sub:
        p = procs.start("publish", str(path), "-f", r"regex:(?P<time>\S+ \S+) (?P<msg>.*)",
                        "--time-format", "%d.%m.%Y %H:%M", "-e", sub.endpoints[0], "-q", *threads)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        df = sub.collect(timeout=30)
    assert df["time"].tolist() == [pd.Timestamp("2026-11-28 10:30", tz="UTC")]


@pytest.mark.parametrize("written", [0, 0.5], ids=["copy-still-empty", "copy-half-written"])
def test_a_copy_seen_while_it_is_being_written_is_not_read_as_a_new_file(tmp_path, written):
    """shutil.copy and logrotate create the copy, then write into it: a poll can see it
    empty or part-written."""
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    lines = [f"line {i:04d} " + "x" * 30 for i in range(200)]
    data = "".join(x + "\n" for x in lines).encode()
    log.write_bytes(data)
    f = Follower([str(tmp_path / "app.log*")], release_after=5)
    try:
        got = [r.raw.decode() for ch in f.poll() for r in ch.records]
        cut = int(len(data) * written)
        with open(tmp_path / "app.log.1", "wb") as copy:
            copy.write(data[:cut])
            copy.flush()
            got += [r.raw.decode() for ch in f.poll() for r in ch.records]
            copy.write(data[cut:])
        os.truncate(log, 0)
        with open(log, "a") as fh:
            fh.write("new\n")
        got += [r.raw.decode() for _ in range(3) for ch in f.poll() for r in ch.records]
    finally:
        f.close()
    assert sorted(got) == sorted(lines + ["new"])


@pytest.mark.timeout(60)
def test_rejects_that_leave_before_their_rows_do_not_advance_what_a_checkpoint_may_claim():
    """sent_offsets() is what a checkpoint records: rows still waiting inside the producer
    must not be claimed because the rejects of their chunk already left."""
    import pandas as pd

    from zpandas.sources.lines import REJECT_SCHEMA
    rejects = pd.DataFrame([{"file": "f", "line": 1, "offset": 0, "reason": "r", "text": "t"}])
    with zp.Subscriber(LOCAL) as sub:
        p = zp.Producer(sub.endpoints, wait_for_subscribers=1, flush_interval=60)
        try:
            p.send(pd.DataFrame({"a": [1]}), source="s", offsets=(0, 10))
            p.flush()
            wait_for(lambda: sub.stats()["rows"] == 1, what="the first rows")
            # the next chunk: its rejects go now, its rows wait for flush_interval
            p.send_rejects(pd.DataFrame(rejects).astype({"line": "int64", "offset": "int64"}),
                           source="s", offsets=(10, 30))
            p.send(pd.DataFrame({"a": [2]}), source="s", offsets=(10, 30))
            wait_for(lambda: sub.stats()["rejects"] == 1, what="the rejects")
            assert p.sent_offsets().get("s", 0) <= 10  # not 30: a row of [10, 30) has not left
        finally:
            p.close()  # sends the rows of the second chunk, and waits for ZeroMQ's queues
        assert p.sent_offsets()["s"] == 30
        wait_for(lambda: sub.stats()["rows"] == 2, what="the rows of the second chunk")
        assert REJECT_SCHEMA.names == list(sub.rejects().columns[2:])


def test_rows_are_claimed_once_more_messages_than_zeromq_can_hold_were_sent_after_them():
    """What sent_offsets() claims never counts on time: a message's rows are claimed
    once SNDHWM + 16 messages left after it (they cannot all be queued in this process)."""
    import pandas as pd

    with zp.Subscriber(LOCAL) as sub:
        p = zp.Producer(sub.endpoints, wait_for_subscribers=1, buffer_bytes=1 << 20, frame_bytes=1 << 20)
        held = p._stream.in_flight  # 16 messages of the queue (its minimum) + 16 of a batch
        try:
            for k in range(held + 5):
                p.send(pd.DataFrame({"a": [k]}), source="s", offsets=(10 * k, 10 * k + 10))
                p.flush()
            wait_for(lambda: sub.stats()["rows"] == held + 5, what="every message")
            assert held == 32
            assert p.sent_offsets()["s"] == 10 * 5  # messages 0-4: 32 more left after them
        finally:
            p.close()
        assert p.sent_offsets()["s"] == 10 * (held + 5)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_three_times_through_two_renames_and_two_copytruncates_every_line_once(tmp_path, procs):
    """The issue's soak: 100k lines, rotated by rename and by copytruncate twice each, and
    the producer killed with SIGKILL at three random moments and restarted from its
    checkpoint: every line exactly once, each row naming the file it was read from."""
    import random

    import numpy as np

    from .test_follow import WRITER, ids

    lines = 100_000
    log = tmp_path / "app.log"
    log.touch()
    checkpoint = tmp_path / "checkpoint.db"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    with zp.Subscriber(LOCAL) as sub:
        def producer():
            return procs.start("publish", str(tmp_path / "app.log*"), "-e", ">" + sub.endpoints[0],
                               "--format", "jsonl", "--follow", "--checkpoint", str(checkpoint),
                               "--quiet", "--name", "node")

        writer = subprocess.Popen([sys.executable, WRITER, str(log), "--lines", str(lines),
                                   "--rate", "12000",
                                   "--rotate", "20000:rename,40000:copy,60000:rename,80000:copy"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            p = producer()
            for _ in range(3):  # killed at a random point of the run, restarted at once
                at = sub.stats()["rows"] + rng.randint(3_000, 25_000)
                wait_for(lambda at=at: sub.stats()["rows"] >= min(at, lines - 1_000), timeout=60,
                         what=f"{at} rows (seed {seed})")
                p.send_signal(signal.SIGKILL)
                p.wait()
                p = producer()
            assert writer.stdout.readline().strip() == "done"
            wait_for(lambda: len(ids(sub)) >= lines, timeout=90, what=f"every line (seed {seed})")
            wait_for(lambda: len(sub.stats()["producers"]) == 4, timeout=30, what="the last run")
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == -signal.SIGTERM   # a clean stop, ended by the signal
        finally:
            writer.communicate(timeout=60)
        got = ids(sub)
        df = sub.frame()
    np.testing.assert_array_equal(got, np.arange(lines), err_msg=f"seed {seed}")
    # Lines 0-19,999 were written to app.log, then renamed to app.log.1: whichever name
    # they were read under, each row names one of the rotated files or app.log.
    names = set(df["_file"].astype(str).map(os.path.basename))
    assert names <= {"app.log", *(f"app.log.{k}" for k in range(1, 5))}, names
    last = df[df["i"] >= 80_000]["_file"].astype(str).map(os.path.basename)
    assert set(last) == {"app.log"}  # after the last rotation: only the live file


def test_a_file_truncated_in_place_during_a_large_read_delivers_the_new_line(tmp_path, caplog):
    """40 MiB being read, then ``truncate -s 0`` and one line: the line arrives (the rest
    of the 40 MiB is gone with no copy to read it from: counted and logged, not silent)."""
    from zpandas.sources.follow import Follower

    path = tmp_path / "big.log"
    line = b'{"i": 0, "text": "' + b"x" * 1000 + b'"}\n'
    with open(path, "wb") as f:
        for _ in range(40 * 1024):
            f.write(line)
    f = Follower([str(path)])
    try:
        first = f.poll()
        assert first and first[0].end < path.stat().st_size  # mid-read: one block of ten
        os.truncate(path, 0)
        with open(path, "ab") as out:
            out.write(b'{"new": true}\n')
        got = [r.raw for _ in range(3) for ch in f.poll() for r in ch.records]
    finally:
        f.close()
    assert got == [b'{"new": true}']
    assert f.lost_truncations == 1 and "no copy of it was found" in caplog.text


def test_a_follower_that_caught_up_sends_at_once_not_after_flush_interval(tmp_path):
    """Latency without tuning: once the files are read to their end, the rows leave; they
    do not wait for company (``flush_interval``, here an hour) nor for the next block."""
    from .test_follow import Publishing

    log = tmp_path / "app.log"
    log.write_text('{"i": 0}\n')
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing([str(log)], sub.endpoints, format="jsonl", follow=True,
                         wait_for_subscribers=1, flush_interval=3600)
        try:
            wait_for(lambda: sub.stats()["rows"] == 1, timeout=30, what="the first line")
            with open(log, "a") as f:
                f.write('{"i": 1}\n')
            wait_for(lambda: sub.stats()["rows"] == 2, timeout=30, what="the appended line")
        finally:
            pub.finish()
        assert sub.frame()["i"].tolist() == [0, 1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_while_a_slow_subscriber_holds_the_producer_back_loses_nothing(tmp_path, procs):
    """Under ``block``, rows handed to ZeroMQ can sit in the producer's queues for as long
    as the subscriber is slow. A checkpoint that claimed them - because they were handed
    a while ago - would lose them to a kill -9: the restarted producer would skip them."""
    lines = 800_000
    log = tmp_path / "app.log"
    with open(log, "w") as f:
        for i in range(lines):
            f.write(f'{{"i": {i}, "pad": "{"p" * 80}"}}\n')  # 80 MB
    checkpoint = tmp_path / "checkpoint.db"
    # The Subscriber holds 1 MiB in its queue (batches of 1,000 rows) and 16 messages of
    # 64 KiB in ZeroMQ's; loopback TCP buffers up to 36 MB here (tcp_rmem 32 MiB, tcp_wmem
    # 4 MiB); the rest of the 80 MB waits in the producer.
    with zp.Subscriber(LOCAL, policy="block", buffer_bytes=1 << 20, batch_rows=1000) as sub:
        def producer():
            return procs.start("publish", str(log), "-e", ">" + sub.endpoints[0], "--format", "jsonl",
                               "--follow", "--checkpoint", str(checkpoint), "--quiet", "--name", "node",
                               "--frame-bytes", "65536")

        p = producer()
        first = sub.get(timeout=60)  # consuming: from now on a full queue stops the reading
        # The queue holds 1 MiB; the rest waits in sockets and in the producer's queues.
        wait_for(lambda: checkpoint.exists() and sub.stats()["rows"] > 0, timeout=30, what="rows")
        time.sleep(3)  # not a synchronisation: time passing while held back is the case
        p.send_signal(signal.SIGKILL)
        p.wait()
        got = [first]
        p = producer()
        while sum(len(b) for b in got) < lines:
            got.append(sub.get(timeout=60))  # drains, and the restarted producer goes on
        wait_for(lambda: len(sub.stats()["producers"]) == 2, timeout=30, what="the second run")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == -signal.SIGTERM
        ids_ = sorted(i for b in got for i in b["i"])
    assert ids_ == list(range(lines))


def test_a_file_deleted_past_the_checkpoint_while_stopped_is_counted_as_lost(tmp_path, caplog):
    """A producer behind its files (or stopped) whose rotated copy is deleted before it
    read it: the restart says which file and how many bytes, and counts them."""
    from zpandas.sources.checkpoint import Checkpoint
    from zpandas.sources.follow import Follower
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(10)))
    pattern = [str(tmp_path / "app.log*")]
    with Checkpoint(tmp_path / "ck.db") as ck:
        f = Follower(pattern, release_after=0)
        (chunk,) = f.poll()
        ck.save(f.discovered)
        ck.save([(chunk.key, chunk.path, chunk.dev, chunk.ino, chunk.head, chunk.end, chunk.line,
                  chunk.size)])                     # every line read and claimed
        with open(log, "ab") as out:                # then more, seen but not read
            out.write(b"".join(b"more %d\n" % i for i in range(5)))
        ck.sizes(f.sizes())
        f.close()
        unread = log.stat().st_size - chunk.end
        os.rename(log, tmp_path / "app.log.1")      # rotated away and deleted while stopped
        os.remove(tmp_path / "app.log.1")
        log.write_bytes(b"new file\n")
        again = Follower(pattern, resume=ck.load(), release_after=0)
        try:
            got = [r.raw for ch in again.poll() for r in ch.records]
        finally:
            again.close()
    assert got == [b"new file"] and again.lost_bytes == unread == 35
    assert "app.log was gone when following started again: the 35 bytes" in caplog.text
