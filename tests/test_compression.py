"""Fewer bytes on the wire: compressed bodies end to end, through the Python API and the CLI,
on a real access log (bench/data/apache_logs.gz, 10,000 lines)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pandas as pd
import pytest

import zpandas as zp

from .conftest import ROOT

LOG = os.path.join(ROOT, "bench", "data", "apache_logs.gz")


@pytest.fixture(scope="module")
def access_log(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("log") / "access.log"
    with gzip.open(LOG) as f:
        path.write_bytes(f.read())
    return str(path)


def publish(path: str, **options) -> tuple[pd.DataFrame, dict]:
    """Publish ``path`` to a Subscriber over loopback; the rows and the subscriber's stats."""
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        zp.publish_files(path, ">" + sub.endpoints[0], format="combined", wait_for_subscribers=1,
                         **options)
        df = sub.collect(producers=1, timeout=60)
        return df, sub.stats()


@pytest.fixture(scope="module")
def plain(access_log):
    """Neither dictionaries nor compression (the default on loopback): the reference."""
    return publish(access_log)


def test_repeated_strings_are_dictionary_encoded_for_the_wire_and_arrive_as_str(access_log, plain):
    ref, ref_stats = plain
    assert len(ref) == 9_999   # every line but line 8,899, which the log itself cuts short
    df, st = publish(access_log, dictionary=True)
    pd.testing.assert_frame_equal(df, ref)           # str columns, not categories
    assert [c for c, t in df.dtypes.items() if isinstance(t, pd.CategoricalDtype)] == ["_file"]
    assert st["bytes"] * 2 < ref_stats["bytes"], (st["bytes"], ref_stats["bytes"])


def test_categories_are_given_where_asked(access_log, plain):
    ref, _ = plain
    with zp.Subscriber("@tcp://127.0.0.1:*", categories=["user_agent", "request"]) as sub:
        zp.publish_files(access_log, ">" + sub.endpoints[0], format="combined", wait_for_subscribers=1,
                         dictionary=True)
        df = sub.collect(producers=1, timeout=60)
    # user_agent repeats (a wire dictionary), request mostly does not (sent plain): both
    # arrive as categories, and equal the strings
    assert df["user_agent"].dtype == "category" and df["request"].dtype == "category"
    assert pd.api.types.is_string_dtype(df["remote_addr"])
    pd.testing.assert_frame_equal(df.astype({"user_agent": "str", "request": "str"}), ref)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_rows_equal_plain_ones_in_far_fewer_bytes(access_log, plain, codec):
    ref, ref_stats = plain
    dictionary, dictionary_stats = publish(access_log, dictionary=True)
    packed, packed_stats = publish(access_log, compression=codec, dictionary=True)
    pd.testing.assert_frame_equal(packed, ref)
    assert packed_stats["bad_frames"] == {} and packed_stats["missed"] == 0
    # fewer bytes than dictionaries alone, and at least 5x fewer than neither
    assert packed_stats["bytes"] * 2 < dictionary_stats["bytes"]
    assert packed_stats["bytes"] * 5 < ref_stats["bytes"], (packed_stats["bytes"], ref_stats["bytes"])


@pytest.mark.parametrize("endpoint,wire", [
    (">tcp://127.0.0.1:5556", (None, False)), ("@tcp://127.0.0.1:*", (None, False)),
    (">tcp://localhost:5556", (None, False)), (">tcp://[::1]:5556", (None, False)),
    ("ipc:///tmp/zp-sock", (None, False)), (">tcp://10.0.0.5:5556", ("lz4", True)),
    ("@tcp://*:5556", ("lz4", True)), (">tcp://127.0.0.1:1,>tcp://node2:5556", ("lz4", True)),
])
def test_auto_compresses_on_a_network_and_not_on_this_machine(endpoint, wire):
    # what bench_link and bench_pipeline measured: LZ4 and dictionaries pay on a link
    # (~10x rows/s at 100 Mbit/s, 1.6-3.6x at 1 Gbit/s) and only cost on loopback
    # (the choice is made from the endpoints alone: nothing is sent to a remote address)
    from zpandas.endpoints import parse_endpoints
    eps = parse_endpoints(endpoint, default="connect")
    local = all(ep.on_this_machine for ep in eps)
    assert ((None, False) if local else ("lz4", True)) == wire


def test_a_producer_takes_auto_or_what_it_is_told():
    p = zp.Producer("@tcp://127.0.0.1:*")
    assert (p.compression, p.dictionary) == (None, False)
    p.close()
    p = zp.Producer("@tcp://127.0.0.1:*", compression="zstd", dictionary=True)
    assert (p.compression, p.dictionary) == ("zstd", True)
    p.close()
    p = zp.Producer("@tcp://*:0")          # peers may be anywhere: listens, sends nothing here
    assert (p.compression, p.dictionary) == ("lz4", True)
    p.close()


def test_small_sends_are_plain_and_a_bad_codec_is_a_clear_error():
    with pytest.raises(ValueError, match=r"compression must be 'auto', one of \('zstd', 'lz4'\)"):
        zp.Producer(">tcp://127.0.0.1:1", compression="gzip")
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        with zp.Producer(sub.endpoints, compression="zstd", wait_for_subscribers=1) as p:
            p.send(pd.DataFrame({"x": [1, 2, 3]}))
        df = sub.collect(producers=1, timeout=30)
        assert df["x"].tolist() == [1, 2, 3]


def test_the_cli_compresses(access_log):
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        run = subprocess.run([sys.executable, "-m", "zpandas", "publish", access_log, "--format", "combined",
                              "--compression", "zstd", "-e", ">" + sub.endpoints[0], "--wait-for", "1",
                              "--quiet"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        df = sub.collect(producers=1, timeout=60)
        st = sub.stats()
    assert len(df) > 9_990 and st["bytes"] < 0.2 * os.path.getsize(access_log)
