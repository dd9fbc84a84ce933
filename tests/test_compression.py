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
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        zp.publish_files(path, ">" + sub.endpoints[0], format="combined", wait_for_subscribers=1,
                         **options)
        df = sub.collect(producers=1, timeout=60)
        return df, sub.stats()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_rows_equal_plain_ones_in_far_fewer_bytes(access_log, codec):
    plain, plain_stats = publish(access_log)
    packed, packed_stats = publish(access_log, compression=codec)
    assert len(plain) == 9_999   # every line but line 8,899, which the log itself cuts short
    pd.testing.assert_frame_equal(packed, plain)
    assert packed_stats["bad_frames"] == {} and packed_stats["missed"] == 0
    # at least 3x fewer bytes received for the same rows (zstd ~10x, lz4 ~5x)
    assert packed_stats["bytes"] * 3 < plain_stats["bytes"], (packed_stats["bytes"], plain_stats["bytes"])


def test_small_sends_are_plain_and_a_bad_codec_is_a_clear_error():
    with pytest.raises(ValueError, match=r"compression must be one of \('zstd', 'lz4'\)"):
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
