"""Compressed files a glob matches (logrotate's `compress`): whole CSV files are read
through the decompressor; followed globs, line formats and history replays leave them,
and say so - never garbage rows, never a crash."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import pathlib
import shutil

import pandas as pd
import pyarrow as pa
import pytest

import zpandas as zp
from zpandas.sources.compressed import compression_of

from .conftest import ROOT, wait_for
from .test_history import Publishing, T0, expected, write_log

LOCAL = "@tcp://127.0.0.1:*"
APACHE = os.path.join(ROOT, "bench", "data", "apache_logs.gz")   # real, gzip-compressed


def compress(src, dst, kind: str) -> None:
    data = pathlib.Path(src).read_bytes()
    if kind == "gzip":
        out = gzip.compress(data)
    elif kind == "bzip2":
        out = bz2.compress(data)
    elif kind == "xz":
        out = lzma.compress(data)
    else:
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, kind) as o:
            o.write(data)
        out = sink.getvalue().to_pybytes()
    pathlib.Path(dst).write_bytes(out)


def test_compressed_files_are_told_by_their_first_bytes(tmp_path):
    text = tmp_path / "t.csv"
    text.write_text("BZh9,a\n1,2\n")                 # text that starts like bzip2's name
    assert compression_of(text.read_bytes()[:10]) is None
    for kind in ("gzip", "bzip2", "xz", "zstd", "lz4"):
        compress(text, tmp_path / f"t.{kind}", kind)
        assert compression_of((tmp_path / f"t.{kind}").read_bytes()[:10]) == kind
    assert compression_of(pathlib.Path(APACHE).read_bytes()[:10]) == "gzip"
    assert compression_of("ÿþa,b".encode("utf-16")[:10]) is None


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zstd", "lz4"])
def test_whole_csv_files_are_read_through_the_decompressor(tmp_path, kind):
    plain = tmp_path / "rotated.csv"
    # CRLF, a quoted field with a comma and a newline, no final newline
    plain.write_bytes(b'id,name,price\r\n' + b"".join(
        f'{i},"item {i}, big\nbox",{i * 1.5}\r\n'.encode() for i in range(20_000)) + b"20000,last,0.5")
    compress(plain, tmp_path / "rotated.csv.1", kind)
    with zp.Subscriber(LOCAL) as sub:
        result = zp.publish_files(str(tmp_path / "rotated.csv.1"), ">" + sub.endpoints[0],
                                  block_size=1 << 16)
        got = sub.collect(timeout=60)
    want = pd.read_csv(plain)
    assert result["rows"] == len(want) == 20_001 and result["rejects"] == 0
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_dtype=False)


def test_a_followed_glob_leaves_compressed_rotated_copies_and_says_so(tmp_path, caplog):
    log = tmp_path / "app.log"
    write_log(log, 0, 100)
    write_log(tmp_path / "app.log.1", 1000, 100)
    compress(tmp_path / "app.log.1", tmp_path / "app.log.2.gz", "gzip")
    compress(tmp_path / "app.log.1", tmp_path / "app.log.3.xz", "xz")
    shutil.copy(APACHE, tmp_path / "app.log.4.gz")
    caplog.set_level(logging.DEBUG, logger="zpandas")
    with zp.Subscriber(LOCAL, topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == 200, timeout=60, what="the plain files")
            write_log(log, 100, 50, mode="a")
            wait_for(lambda: sub.stats()["rows"] == 250, timeout=60, what="new lines")
            assert sub.stats()["rejects"] == 0          # no garbage from compressed bytes
        finally:
            pub.close()
    assert pub.result["compressed"] == sorted(str(tmp_path / n) for n in
                                              ("app.log.2.gz", "app.log.3.xz", "app.log.4.gz"))
    said = [r for r in caplog.records if "compressed: not read" in r.getMessage()]
    assert len(said) == 3 and [r.levelno for r in said].count(logging.WARNING) == 1


def test_line_formats_of_whole_files_leave_compressed_files_and_the_cli_says_so(tmp_path, procs):
    from .test_cli import free_port
    shutil.copy(APACHE, tmp_path / "access.log.2.gz")
    text = gzip.decompress(pathlib.Path(APACHE).read_bytes())[:20_000]
    (tmp_path / "access.log").write_bytes(text[:text.rindex(b"\n") + 1])   # whole lines
    port = free_port()
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "--producers", "1")
    assert sub.stdout.readline().startswith("listening on")
    procs.start("publish", str(tmp_path / "access.log*"), "--format", "combined",
                "-e", f">tcp://127.0.0.1:{port}")
    results = procs.wait_all(timeout=60)
    assert [code for code, _ in results] == [0, 0], results
    said = results[1][1]
    assert "1 compressed files not read (" in said and "access.log.2.gz" in said
    assert "rejected" not in said, said


def test_a_replay_leaves_compressed_copies_and_its_end_says_so(tmp_path):
    write_log(tmp_path / "app.log.1", 0, 1800)
    write_log(tmp_path / "app.log", 1800, 1800)
    compress(tmp_path / "app.log.1", tmp_path / "app.log.2.gz", "gzip")
    with zp.Subscriber(LOCAL, topics="m") as sub:
        pub = Publishing(str(tmp_path / "app.log*"), ">" + sub.endpoints[0])
        try:
            wait_for(lambda: sub.stats()["rows"] == 3600, timeout=60, what="the live stream")
            got = sub.history(since=T0 + pd.Timedelta("10min"), timeout=60, progress=False)
            want = expected([tmp_path / "app.log.1", tmp_path / "app.log"], T0 + pd.Timedelta("10min"))
            pd.testing.assert_frame_equal(got[list(want.columns)].sort_values("timestamp")
                                          .reset_index(drop=True), want, check_dtype=False)
            end = sub.stats()["history"].iloc[-1]
            assert end["status"] == "done" and "not read: 1 compressed file(s) (app.log.2.gz)" in end["reason"]
        finally:
            pub.close()
