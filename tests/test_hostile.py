"""Hostile peers over real sockets: 10,000 malformed messages mixed with a real Producer's.

Afterwards the Subscriber's thread is alive, every valid row arrived exactly once, every
malformed message is accounted for (refused under a reason, or accepted as the valid
message a mutation happened to make), and everything a notebook calls still works.
"""

from __future__ import annotations

import datetime
import random
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import zmq

import zpandas as zp
from zpandas import wire
from zpandas.sources.lines import REJECT_SCHEMA
from zpandas.streams import MAX_STREAMS

from .conftest import wait_for

LOCAL = "@tcp://127.0.0.1:*"
MALFORMED = 10_000
MAX_BYTES = 1 << 20


def _body(table: pa.Table, compression=None) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _message(table: pa.Table | None, *, kind=wire.Kind.DATA, producer: bytes, seq=0,
             source="", start=-1, end=-1, compression=None) -> list[bytes]:
    header = wire.Header(kind=kind, producer=producer, seq=seq, name="mallory", source=source,
                         start=start, end=end,
                         rows=0 if table is None else table.num_rows,
                         fingerprint=wire.NO_FINGERPRINT if table is None else wire.fingerprint(table.schema))
    return [b"fuzz", header.pack(), b"" if table is None else _body(table, compression)]


def _strings(offsets, data: bytes) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1,
                                 [None, pa.py_buffer(np.array(offsets, np.int32).tobytes()),
                                  pa.py_buffer(data)])


class Fuzzer:
    """Makes malformed messages of every kind the issue lists, from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = [bytes([0xF0 + i]) * 16 for i in range(4)]
        self.seq = 0
        base = pa.table({"k": pa.array([1, 2], pa.int64()), "src": ["fuzz", "fuzz"],
                         "d": [datetime.date(2020, 1, 1), None],
                         "cat": pa.array(["x", "y"]).dictionary_encode(),
                         "l": [[1], [2, 3]], "ts": pa.array([0, 1], pa.timestamp("ns", "UTC"))})
        self.base = base
        self.offsets = pa.table({"src": ["fuzz", "fuzz"], "_offset": pa.array([0, 10], pa.int64())})
        # k is an 8,000-byte buffer
        self.packed = pa.table({"k": np.arange(1000, dtype=np.int64), "src": ["fuzz"] * 1000})
        self.rejects = pa.Table.from_pylist(
            [{"file": "f", "line": 1, "offset": 0, "reason": "r", "text": "t"}], schema=REJECT_SCHEMA)
        bad_dict = pa.DictionaryArray.from_buffers(
            pa.dictionary(pa.int8(), pa.string()), 2,
            [None, pa.py_buffer(np.array([0, 7], np.int8).tobytes())], pa.array(["a"]))
        # bodies that pass Arrow's reader but not full validation
        self.bad_tables = [
            pa.table({"src": _strings([0, 4096, 4], b"fuzz")}),           # offsets out of bounds
            pa.table({"src": _strings([0, 3, 1], b"fuzz")}),              # offsets descending
            pa.table({"src": _strings([0, 2, 4], b"fu\xff\xfe")}),        # invalid UTF-8
            pa.table({"cat": bad_dict}),                                   # dictionary index
            pa.table({"n": pa.Array.from_buffers(pa.null(), 2**31 - 1, [None])}),  # size
            pa.table({"d": pa.array([2**31 - 1], pa.int32()).view(pa.date32())}),   # value
            pa.table({"_offset": ["1", "2"], "src": ["fuzz", "fuzz"]}),   # zpandas column type
            pa.table({"v": pa.array(["a"], pa.string_view())}),           # type
        ]
        self.kinds = [self.frame_count, self.magic, self.version, self.truncated_header,
                      self.oversized_header, self.wrong_kind, self.fingerprint, self.bad_body,
                      self.compressed, self.compressed_ok, self.offsets_outside, self.rejects_schema, self.oversize,
                      self.flip, self.flip, self.flip, self.flip]

    def _id(self) -> bytes:
        return self.rng.choice(self.ids)

    def valid(self) -> list[bytes]:
        self.seq += 1
        return _message(self.base, producer=self._id(), seq=self.seq)

    def frame_count(self):
        n = self.rng.choice([1, 2, 4, 5])
        return [self.rng.randbytes(self.rng.randint(0, 100)) for _ in range(n)]

    def magic(self):
        f = self.valid()
        f[1] = b"XX" + f[1][2:]
        return f

    def version(self):
        f = self.valid()
        f[1] = f[1][:2] + bytes([self.rng.choice([0, 1, 3, 255])]) + f[1][3:]
        return f

    def truncated_header(self):
        f = self.valid()
        f[1] = f[1][:self.rng.randint(0, len(f[1]) - 1)]
        return f

    def oversized_header(self):
        f = self.valid()
        f[1] = f[1] + self.rng.randbytes(self.rng.randint(1, 50))
        return f

    def wrong_kind(self):
        f = self.valid()
        kind = self.rng.choice([1, 2, 4, 9, 255])  # control kinds with a body, unknown kinds
        f[1] = f[1][:3] + bytes([kind]) + f[1][4:]
        return f

    def fingerprint(self):
        f = self.valid()
        other = _message(self.offsets, producer=self._id())
        f[2] = other[2]
        return f

    def bad_body(self):
        t = self.rng.choice(self.bad_tables)
        return _message(t, producer=self._id(), seq=self.seq)

    def compressed(self):
        """A compressed body that lies: a bomb's declaration, or a size that is not the
        buffer's (compressed bodies that tell the truth are valid traffic)."""
        f = _message(self.packed, producer=self._id(), compression=self.rng.choice(["lz4", "zstd"]))
        claim = self.rng.choice([4 << 30, MAX_BYTES * 2, 4000, 8001, -5])
        f[2] = f[2].replace(struct.pack("<q", 8000), struct.pack("<q", claim))
        return f

    def compressed_ok(self):
        """A compressed body that tells the truth: accepted, like any valid message."""
        self.seq += 1
        return _message(self.packed, producer=self._id(), seq=self.seq,
                        compression=self.rng.choice(["lz4", "zstd"]))

    def offsets_outside(self):
        return _message(self.offsets, producer=self._id(), source="s", start=50, end=60)

    def rejects_schema(self):
        return _message(self.base, kind=wire.Kind.REJECTS, producer=self._id())

    def oversize(self):
        # every frame under MAXMSGSIZE (a larger one would cost the connection), the
        # message over max_message_bytes
        f = self.valid()
        return [b"fuzz" + bytes(MAX_BYTES // 2), f[1], f[2] + bytes(MAX_BYTES // 2)]

    def flip(self):
        f = [bytearray(x) for x in self.rng.choice([self.valid(), self.valid(),
                                                    _message(self.rejects, kind=wire.Kind.REJECTS,
                                                             producer=self._id()),
                                                    _message(None, kind=wire.Kind.HEARTBEAT,
                                                             producer=self._id(), seq=self.seq)])]
        which = self.rng.choice([1, 2, 2])
        if not f[which]:
            which = 1
        for _ in range(self.rng.randint(1, 3)):
            f[which][self.rng.randrange(len(f[which]))] ^= self.rng.randint(1, 255)
        return [bytes(x) for x in f]

    def next(self) -> list[bytes]:
        return self.rng.choice(self.kinds)()


def _raw_publisher(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """An XPUB that never drops and knows when the subscription arrived."""
    pub = ctx.socket(zmq.XPUB)
    pub.linger = 5000
    pub.sndhwm = 0
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.connect(endpoint)
    assert pub.poll(10_000), "no subscription reached the fuzzer"
    pub.recv()
    return pub


@pytest.mark.timeout(180)
@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "via-proxy"])
def test_fuzz_malformed_messages_mixed_with_valid_traffic(tmp_path, via_proxy, caplog):
    proxy = zp.Proxy("@tcp://127.0.0.1:*", "@tcp://127.0.0.1:*") if via_proxy else None
    sub_ep = [ep.replace("tcp://", ">tcp://") for ep in proxy.backend] if via_proxy else LOCAL
    ctx = zmq.Context()
    fuzz = None
    try:
        with zp.Subscriber(sub_ep, max_message_bytes=MAX_BYTES) as sub:
            agg = sub.aggregate(by="src", values={"k": ["count", "sum"]})
            into = proxy.frontend if via_proxy else sub.endpoints
            real = zp.Producer(into, name="real", wait_for_subscribers=1, heartbeat=0.05)
            fuzz = _raw_publisher(ctx, into[0])
            fuzzer = Fuzzer(seed=11)
            n_valid = 0
            for i in range(MALFORMED):
                fuzz.send_multipart(fuzzer.next())
                if i % 40 == 0:
                    real.send(pd.DataFrame({"k": np.arange(n_valid, n_valid + 25), "src": "real"}))
                    n_valid += 25
            real.close()
            real_id = real.id.hex()[:12]

            def accounted() -> int:
                st = sub.stats()
                others = st["producers"][st["producers"]["producer"] != real_id]
                return sum(st["bad_frames"].values()) + int(others["received"].sum())

            wait_for(lambda: accounted() >= MALFORMED, timeout=60,
                     what=f"{MALFORMED} malformed messages accounted for")
            df = sub.collect(producers=1, timeout=30)  # the real producer's rows
            st = sub.stats()

            assert sub._thread.is_alive()
            assert accounted() == MALFORMED, st["bad_frames"]
            assert len(st["producers"]) < MAX_STREAMS  # no stream was forgotten: complete counts
            # every reason the generator aims at was seen
            for reason in ("frames", "magic", "version", "header", "kind", "body", "fingerprint",
                           "compressed", "invalid", "size", "value", "columns", "type", "oversize"):
                assert st["bad_frames"].get(reason, 0) > 0, (reason, st["bad_frames"])
            assert set(st["bad_frames"]) <= set(wire.REASONS), st["bad_frames"]
            # one log line per reason per 10 s, not one per refused message
            refusals = [r for r in caplog.records if "refused a message" in r.getMessage()]
            assert len(st["bad_frames"]) <= len(refusals) <= len(st["bad_frames"]) * 3
            # every valid row exactly once
            ks = sorted(df.loc[df["src"] == "real", "k"])
            assert ks == list(range(n_valid))
            mine = st["producers"][st["producers"]["producer"] == real_id].iloc[0]
            assert (mine["missed"], mine["bad_frames"], mine["finished"]) == (0, 0, True)
            # everything a notebook calls still works on what was accepted
            everything = sub.frame()
            assert (everything["src"] == "real").sum() == n_valid
            while True:
                try:
                    sub.get(timeout=0)
                except TimeoutError:
                    break
            sub.rejects()
            sub.gaps()
            assert agg.result().set_index("src").loc["real", "k_count"] == n_valid
            sub.to_parquet(tmp_path / "all.parquet")
            assert len(pd.read_parquet(tmp_path / "all.parquet")) == len(everything)
            if proxy is not None:  # it forwarded everything and still answers
                assert proxy.stats()["frontend"]["messages_received"] >= MALFORMED
    finally:
        if fuzz is not None:
            fuzz.close(linger=0)
        ctx.term()
        if proxy is not None:
            proxy.close()


@pytest.mark.timeout(60)
def test_fuzz_plain_text_ingestion():
    """Random payloads for a text_format subscriber: rows, rejects or a refusal - never a crash."""
    rng = random.Random(5)
    ctx = zmq.Context()
    try:
        with zp.Subscriber(LOCAL, text_format="jsonl") as sub:
            pub = _raw_publisher(ctx, sub.endpoints[0])
            payloads = ([b'logs {"a": 1, "b": "x"}'] * 500
                        + [b"logs " + rng.randbytes(rng.randint(0, 200)) for _ in range(1500)]
                        + [b'logs {"a": "text now", "b": {"nested": [1, 2]}}'] * 100
                        + [b"logs " + b"[" * 5000 + b"]" * 5000] * 10
                        + [b'logs {"a": 1e999999, "b": null}'] * 10)
            rng.shuffle(payloads)
            for p in payloads:
                pub.send(p)
            pub.close(linger=5000)

            def accounted() -> int:
                st = sub.stats()
                return int(st["producers"]["received"].sum()) + st["bad_frames"].get("text", 0)

            wait_for(lambda: accounted() == len(payloads), timeout=30, what="every payload")
            assert sub._thread.is_alive()
            st = sub.stats()
            assert st["rows"] >= 500
            assert st["bad_frames"].get("text", 0) == 0  # every payload parsed or was rejected
            assert len(sub.rejects()) == st["rejects"] >= 1500 - 10  # random bytes are rejects
            assert (sub.rejects()["reason"] == "nested too deeply to parse").sum() == 10
            sub.frame()
            sub.rejects()
    finally:
        ctx.term()


@pytest.mark.timeout(60)
def test_producers_disagreeing_on_a_column_type_do_not_break_frame():
    """One peer sends ``x`` as numbers, another as structs, a third as lists: frame() still
    works, the column as text (JSON for structs and lists), as pandas would hold it."""
    ctx = zmq.Context()
    try:
        with zp.Subscriber(LOCAL) as sub:
            pub = _raw_publisher(ctx, sub.endpoints[0])
            for i, table in enumerate([pa.table({"x": [1, 2]}), pa.table({"x": [{"a": 1}]}),
                                       pa.table({"x": [[1, 2]]})]):
                header = wire.Header(producer=bytes([i]) * 16, name=f"p{i}")
                pub.send_multipart(wire.encode(table, topic=b"t", header=header))
            wait_for(lambda: sub.stats()["rows"] == 4, what="every row")
            pub.close(linger=0)
            assert sub.frame()["x"].tolist() == ["1", "2", '{"a": 1}', "[1, 2]"]
    finally:
        ctx.term()
