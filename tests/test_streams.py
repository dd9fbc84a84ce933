"""The stream protocol without sockets (zpandas.streams), h11-style: a send side numbers
messages, a receive side turns them into events, and the clock is a number the test
sets. Every loss and restart case of the socket tests is here, deterministic."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from zpandas import streams, wire
from zpandas.sources.lines import REJECT_SCHEMA
from zpandas.streams import (Duplicate, EndOfStream, Gap, ReceiveStream, Rows,
                             SendStream)

T0 = 1_700_000_000.0   # the fake clock's start (seconds since the epoch)


class Sender:
    """A producer's send side, writing frames into a list instead of a socket."""

    def __init__(self, pid: int = 1, name: str = "node1", in_flight: int = 2) -> None:
        self.id = pid.to_bytes(16, "big")
        self.stream = SendStream(self.id, name, in_flight)
        self.now = T0

    def _send(self, topic: bytes, header: bytes, body) -> list:
        frames = [topic, bytearray(header), body]
        self.stream.stamp(topic, frames[1], int(self.now * 1e9))
        h = wire.Header.unpack(frames[1])
        self.stream.sent(topic, h.kind, h.rows, h.source, h.end)
        return [bytes(f) if not isinstance(f, pa.Buffer) else f for f in frames]

    def data(self, n: int, *, topic: bytes = b"t", source: str = "", start: int = -1) -> list:
        table = pa.table({"x": list(range(n))})
        end = -1
        if source:
            table = table.append_column("_offset", pa.array(range(start, start + 10 * n, 10), pa.int64()))
            end = start + 10 * n
        topic_, header, body = wire.encode(table, topic=topic, header=wire.Header(
            producer=self.id, name=self.stream.name, source=source, start=start, end=end))
        return self._send(topic_, header, body)

    def rejects(self, n: int, topic: bytes = b"t") -> list:
        table = pa.Table.from_pylist([{"file": "f", "line": i, "offset": 0, "reason": "r", "text": "?"}
                                      for i in range(n)], schema=REJECT_SCHEMA)
        topic_, header, body = wire.encode(table, topic=topic, header=wire.Header(
            kind=wire.Kind.REJECTS, producer=self.id, name=self.stream.name))
        return self._send(topic_, header, body)

    def control(self, kind: wire.Kind) -> list[list]:
        return [self._send(topic, header, b"") for topic, header in self.stream.control(kind)]


class Receiver:
    def __init__(self) -> None:
        self.stream = ReceiveStream()
        self.now = T0

    def feed(self, frames) -> list:
        return self.stream.receive(wire.decode(frames), self.now)

    def state(self, sender: Sender, topic: bytes = b"t"):
        return self.stream.streams[(sender.id, topic)]


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_messages_in_order_make_rows_and_nothing_else():
    s, r = Sender(), Receiver()
    for n in (3, 4, 5):
        events = r.feed(s.data(n))
        assert kinds(events) == ["Rows"] and events[0].table.num_rows == n
    assert r.feed(s.control(wire.Kind.HEARTBEAT)[0]) == []
    st = r.state(s)
    assert (st.messages, st.rows, st.missed, st.next_seq, st.next_total) == (3, 12, 0, 3, 12)
    assert dict(r.stream.counts)["rows"] == 12


def test_a_lost_message_is_a_gap_with_its_rows_at_the_next_one():
    s, r = Sender(), Receiver()
    r.feed(s.data(3))
    s.data(7)                      # lost on the way
    r.now += 1
    events = r.feed(s.data(2))
    assert kinds(events) == ["Gap", "Rows"]
    gap = events[0]
    assert (gap.kind, gap.messages, gap.rows, gap.time, gap.name) == ("gap", 1, 7, T0 + 1, "node1")
    st = r.state(s)
    assert (st.missed, st.missed_rows, st.gaps, st.rows) == (1, 7, 1, 5)


@pytest.mark.parametrize("kind", [wire.Kind.HEARTBEAT, wire.Kind.END_OF_STREAM])
def test_a_lost_last_message_shows_at_the_next_control_message(kind):
    s, r = Sender(), Receiver()
    r.feed(s.data(3))
    s.data(4)
    s.data(5)                      # the last two never arrive
    events = r.feed(s.control(kind)[0])
    assert isinstance(events[0], Gap) and (events[0].messages, events[0].rows) == (2, 9)
    assert kinds(events) == (["Gap", "EndOfStream"] if kind is wire.Kind.END_OF_STREAM else ["Gap"])


def test_rejects_are_not_numbered_but_reveal_a_gap_before_them():
    s, r = Sender(), Receiver()
    r.feed(s.data(2))
    events = r.feed(s.rejects(3))
    assert kinds(events) == ["Rejects"] and events[0].table.num_rows == 3
    assert kinds(r.feed(s.data(2))) == ["Rows"]            # no gap: rejects take no number
    s.data(6)
    events = r.feed(s.rejects(1))
    assert kinds(events) == ["Gap", "Rejects"] and (events[0].messages, events[0].rows) == (1, 6)
    assert kinds(r.feed(s.data(1))) == ["Rows"]            # counted once, not again
    assert r.state(s).missed == 1 and r.stream.counts["rejects"] == 4


def test_a_receiver_that_joins_late_says_so_and_counts_what_it_skipped():
    s, r = Sender(), Receiver()
    for n in (10, 20):
        s.data(n)
    events = r.feed(s.data(1))
    assert kinds(events) == ["Gap", "Rows"]
    assert (events[0].kind, events[0].messages, events[0].rows) == ("joined late", 2, 30)
    st = r.state(s)
    assert (st.skipped_rows, st.missed, st.missed_rows) == (30, 0, 0)   # skipped, not lost


def test_a_receiver_that_joins_at_a_heartbeat_counts_rows_before_it_as_skipped():
    s, r = Sender(), Receiver()
    s.data(10)
    assert kinds(r.feed(s.control(wire.Kind.HEARTBEAT)[0])) == ["Gap"]
    assert kinds(r.feed(s.data(1))) == ["Rows"]
    assert r.state(s).skipped_rows == 10 and r.state(s).missed == 0


def test_end_of_stream_repeated_is_one_event():
    s, r = Sender(), Receiver()
    r.feed(s.data(1))
    eos = s.control(wire.Kind.END_OF_STREAM)[0]
    assert kinds(r.feed(eos)) == ["EndOfStream"]
    assert r.feed(s.control(wire.Kind.END_OF_STREAM)[0]) == []
    assert r.stream.finished() == {s.id}


def test_an_old_message_does_not_rewind_the_sequence():
    s, r = Sender(), Receiver()
    first = s.data(1)
    r.feed(s.data(1))    # seq 1 first: joined late
    r.feed(first)        # then seq 0, late
    assert kinds(r.feed(s.data(1))) == ["Rows"]
    assert r.state(s).next_seq == 3 and r.state(s).missed == 0


def test_a_restarted_producer_resending_a_source_has_its_old_rows_dropped():
    before, r = Sender(pid=1), Receiver()
    r.feed(before.data(5, source="/var/log/a", start=0))       # offsets 0..40, end 50
    after = Sender(pid=2)                                        # a new id after the restart
    events = r.feed(after.data(8, source="/var/log/a", start=20))  # offsets 20..90
    assert kinds(events) == ["Duplicate", "Rows"]
    assert isinstance(events[0], Duplicate) and events[0].rows == 3
    assert events[1].table.column("_offset").to_pylist() == [50, 60, 70, 80, 90]
    assert r.stream.counts["duplicate_rows"] == 3 and r.stream.counts["rows"] == 10
    # a message that is all duplicate makes no Rows event
    assert kinds(r.feed(Sender(pid=3).data(2, source="/var/log/a", start=0))) == ["Duplicate"]
    # ...and does not make the source's end go back: a later resend is still dropped
    assert kinds(r.feed(Sender(pid=4).data(3, source="/var/log/a", start=50))) == ["Duplicate"]


def test_a_forgotten_source_is_taken_again(monkeypatch):
    monkeypatch.setattr(streams, "MAX_SOURCES", 2)
    s, r = Sender(), Receiver()
    for name in ("a", "b", "c"):
        r.feed(s.data(1, source=name, start=0))
    assert [source for _, source in r.stream.done] == ["b", "c"]
    assert kinds(r.feed(Sender(pid=9).data(1, source="a", start=0))) == ["Rows"]
    assert kinds(r.feed(Sender(pid=9).data(1, source="c", start=0))) == ["Duplicate"]


def test_streams_are_per_producer_and_topic():
    a, b, r = Sender(pid=1), Sender(pid=2), Receiver()
    r.feed(a.data(1, topic=b"x"))
    r.feed(a.data(1, topic=b"y"))
    a.data(1, topic=b"x")                          # lost on x only
    r.feed(b.data(1, topic=b"x"))
    events = [e for frames in a.control(wire.Kind.END_OF_STREAM) for e in r.feed(frames)]
    assert kinds(events) == ["Gap", "EndOfStream", "EndOfStream"]
    assert events[0].key == (a.id, b"x")
    assert r.stream.total("missed") == 1 and r.stream.finished() == {a.id}


def test_forgotten_streams_keep_their_losses_in_the_totals(monkeypatch):
    monkeypatch.setattr(streams, "MAX_STREAMS", 5)
    r = Receiver()
    for i in range(20):
        s = Sender(pid=i + 1)
        s.data(4)                                  # joined late: 4 skipped
        r.feed(s.data(1))
        s.data(2)                                  # lost: 2 missed
        r.feed(s.data(1))
    assert len(r.stream.streams) == 5
    assert [k[0] for k in r.stream.streams] == [(i + 1).to_bytes(16, "big") for i in range(15, 20)]
    assert (r.stream.total("skipped_rows"), r.stream.total("missed"),
            r.stream.total("missed_rows")) == (80, 20, 40)


def test_a_refused_message_counts_on_a_known_stream_only():
    s, r = Sender(), Receiver()
    r.stream.refused((s.id, b"t"))
    assert not r.stream.streams                    # its numbers are not trusted to start one
    r.feed(s.data(1))
    r.stream.refused((s.id, b"t"))
    assert r.state(s).bad_frames == 1


def test_lag_rate_and_last_seen_follow_the_clock():
    s, r = Sender(), Receiver()
    for i in range(10):
        s.now = T0 + i
        r.now = T0 + i + 0.25                      # 250 ms on the way
        r.feed(s.data(100))
    st = r.state(s)
    assert st.lag == pytest.approx(0.25, abs=1e-6)
    assert st.last_seen == T0 + 9.25 and st.first_seen == T0 + 0.25
    assert st.rate(r.now) == pytest.approx(100, rel=0.25)
    assert st.rate(r.now + 60) == 0               # a minute of silence: no rate


def test_plain_rows_are_counted_without_numbers():
    r = Receiver()
    key = (b"text".ljust(16, b"\0"), b"logs")
    table = pa.table({"x": [1, 2]})
    bad = pa.Table.from_pylist([{"file": "", "line": 1, "offset": -1, "reason": "r", "text": "?"}],
                               schema=REJECT_SCHEMA)
    events = r.stream.receive_rows(key, "text", table, bad, 10, T0)
    assert kinds(events) == ["Rejects", "Rows"]
    events = r.stream.receive_rows(key, "text", None, REJECT_SCHEMA.empty_table(), 3, T0)
    assert events == []
    st = r.stream.streams[key]
    assert (st.messages, st.rows, st.bytes, st.missed) == (2, 2, 10, 0)


def test_the_report_has_a_row_per_stream_and_alive_follows_the_clock():
    a, b, r = Sender(pid=1, name="a"), Sender(pid=2, name="b"), Receiver()
    r.feed(a.data(3))
    r.feed(b.data(4, topic=b"u"))
    r.now = T0 + 5
    r.feed(b.control(wire.Kind.HEARTBEAT)[0])
    report = {row["name"]: row for row in r.stream.report(r.now, dead_after=2)}
    assert (report["a"]["rows"], report["a"]["topic"], report["a"]["alive"]) == (3, "t", False)
    assert (report["b"]["rows"], report["b"]["topic"], report["b"]["alive"]) == (4, "u", True)
    assert report["b"]["last_seen"] == T0 + 5 and report["a"]["producer"] == a.id.hex()[:12]
    r.feed(b.control(wire.Kind.END_OF_STREAM)[0])
    (row,) = [x for x in r.stream.report(r.now, dead_after=2) if x["name"] == "b"]
    assert row["finished"] and not row["alive"]   # heard from just now, but finished


def test_random_losses_are_counted_exactly():
    """Whatever is lost, received + missed = sent, in messages and rows, once the stream ends."""
    rng = random.Random(7)
    for trial in range(50):
        s, r = Sender(pid=trial + 1), Receiver()
        rows_sent = got_rows = 0
        for _ in range(rng.randint(1, 40)):
            n = rng.randint(1, 50)
            frames = s.data(n)
            rows_sent += n
            if rng.random() < 0.7:
                got_rows += sum(e.table.num_rows for e in r.feed(frames) if isinstance(e, Rows))
            if rng.random() < 0.2:
                hb = s.control(wire.Kind.HEARTBEAT)[0]
                if rng.random() < 0.5:
                    r.feed(hb)
        events = r.feed(s.control(wire.Kind.END_OF_STREAM)[0])
        assert isinstance(events[-1], EndOfStream)
        st = r.state(s)
        assert got_rows + st.missed_rows + st.skipped_rows == rows_sent
        assert st.messages + st.missed + (st.next_seq - st.messages - st.missed) == st.next_seq
        assert st.next_total == rows_sent


# -- send side ------------------------------------------------------------------------

def test_data_messages_are_numbered_per_topic_and_carry_rows_before_them():
    s = Sender()
    headers = [wire.Header.unpack(s.data(n, topic=t)[1]) for n, t in
               [(3, b"a"), (4, b"a"), (5, b"b"), (1, b"a")]]
    assert [(h.seq, h.total) for h in headers] == [(0, 0), (1, 3), (0, 0), (2, 7)]
    assert headers[0].send_ns == int(T0 * 1e9)


def test_control_messages_carry_the_counts_so_far_on_every_topic():
    s = Sender()
    s.stream.add_topic(b"idle")                  # named, nothing sent: end-of-stream too
    s.data(3, topic=b"a")
    s.rejects(5, topic=b"a")                      # not numbered, adds no rows
    s.data(4, topic=b"a")
    got = {bytes(f[0]): wire.Header.unpack(f[1]) for f in s.control(wire.Kind.END_OF_STREAM)}
    assert {t: (h.kind, h.seq, h.total) for t, h in got.items()} == {
        b"idle": (wire.Kind.END_OF_STREAM, 0, 0), b"a": (wire.Kind.END_OF_STREAM, 2, 7)}


def test_rows_are_claimed_once_in_flight_more_messages_were_sent_after_them():
    s = SendStream(bytes(16), "p", in_flight=2)
    for i in range(1, 4):
        s.sent(b"t", wire.Kind.DATA, 1, "a", i * 10)
    assert s.claimed == {"a": 10}                # 20 and 30 may still be in ZeroMQ's queues
    s.sent(b"t", wire.Kind.REJECTS, 1, "a", 99)  # rejects claim nothing, move nothing
    s.sent(b"t", wire.Kind.HEARTBEAT, 0)
    # a live view's copies go to other queues: numbered, they claim and push nothing
    s.sent(b"\xffzp-view/1/{}", wire.Kind.DATA, 1, "a", 30, claims=False)
    s.sent(b"\xffzp-view/1/{}", wire.Kind.DATA, 1, "a", 30, claims=False)
    assert s.claimed == {"a": 10} and s.topics[b"\xffzp-view/1/{}"] == [2, 2]
    s.sent(b"t", wire.Kind.DATA, 1, "b", 5)
    assert s.claimed == {"a": 20}
    s.sent(b"t", wire.Kind.DATA, 1)              # unsourced rows push the others out too
    assert s.claimed == {"a": 30}
    s.all_sent()                                 # a normal close: everything has left
    assert s.claimed == {"a": 30, "b": 5}


def test_a_block_split_into_buckets_is_claimed_once_each_of_its_parts_left():
    """Key sharding sends a block as one part per bucket topic, each with the block's
    byte range: a claim must wait for the slowest bucket, not the first to leave."""
    s = SendStream(b"p" * 16, "node", in_flight=0)
    for start, end in ((0, 100), (100, 200)):
        for topic in (b"t#0", b"t#1"):
            s.accepted(topic, "a", start, end)
    s.sent(b"t#0", wire.Kind.DATA, 2, "a", 200)   # both blocks' t#0 rows, coalesced
    assert s.claimed == {"a": 0}                  # t#1's rows of the first block still wait
    s.sent(b"t#1", wire.Kind.DATA, 1, "a", 100)
    assert s.claimed == {"a": 100}
    s.sent(b"t#1", wire.Kind.DATA, 1, "a", 200)
    assert s.claimed == {"a": 200}
    s.accepted(b"t#1", "a", 200, 300)             # accepted later: claims stay where they are
    assert s.claimed == {"a": 200}


def test_deduplication_is_per_bucket_topic():
    """A block sharded by key arrives as one message per bucket, all with the block's
    byte range: the second bucket's rows are new, not duplicates of the first's."""
    s, r = Sender(), Receiver()
    assert kinds(r.feed(s.data(2, topic=b"t#0", source="f", start=0))) == ["Rows"]
    assert kinds(r.feed(s.data(2, topic=b"t#1", source="f", start=0))) == ["Rows"]
    assert r.stream.counts["duplicate_rows"] == 0
    # a restarted producer's resend of bucket 1 is still dropped
    assert kinds(r.feed(Sender(pid=9).data(2, topic=b"t#1", source="f", start=0))) == ["Duplicate"]
