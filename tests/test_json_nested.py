"""Nested JSON lines: objects as dotted columns (as pandas.json_normalize), lists as
JSON text, on the vectorised path; keys that come and go are schema changes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import zpandas as zp
from zpandas.sources.lines import get_format
from zpandas.sources.records import Records

from . import nginx_status

LOCAL = "@tcp://127.0.0.1:*"


def expected(docs: list[dict]) -> pd.DataFrame:
    """pandas.json_normalize's columns, lists as compact JSON text."""
    df = pd.json_normalize(docs)
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, list)).any():
            df[col] = df[col].map(lambda v: None if not isinstance(v, list)
                                  else json.dumps(v, separators=(",", ":")))
    return df


def test_nested_status_lines_become_dotted_columns_equal_to_json_normalize(tmp_path):
    path = tmp_path / "status.jsonl"
    docs = nginx_status.write(path, 300, zones_from=200)   # a server zone appears at line 200
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, format="jsonl", wait_for_subscribers=1)
        df = sub.collect(timeout=30)
        assert len(sub.rejects()) == 0
    want = expected(docs)
    assert "connections.accepted" in df and "caches.http_cache.miss.bytes_written" in df
    assert "server_zones.new.nginx.org.requests" in df   # the zone that came later
    assert df["server_zones.new.nginx.org.requests"].isna().sum() == 200
    got = df.drop(columns=["_file", "_offset", "timestamp"])
    pd.testing.assert_frame_equal(got[sorted(got.columns)],
                                  want.drop(columns="timestamp")[sorted(got.columns)],
                                  check_dtype=False)
    assert sorted(got.columns) == sorted(c for c in want.columns if c != "timestamp")
    # the time field is a time, from epoch milliseconds
    assert (df["timestamp"] == pd.to_datetime(want["timestamp"], unit="ms", utc=True)).all()


def test_nested_lines_take_the_vectorised_path_flattened_or_not(tmp_path):
    path = tmp_path / "status.jsonl"
    nginx_status.write(path, 50)
    data = path.read_bytes()
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    records = Records(data, np.concatenate([[0], ends]), np.arange(1, 51),
                      np.concatenate([[0], ends[:-1]]))
    for flatten in (True, False):
        fmt = get_format("jsonl", flatten=flatten)
        fast = fmt._columns(fmt.begin(records, "f"))
        assert fast is not None   # not record by record
        slow, _ = fmt._parse_each(fmt.begin(records, "f"), "f")
        table, _ = fmt.parse(records, "f")
        # both paths give the same rows: the fast one's JSON text is what json gives
        pd.testing.assert_frame_equal(table.to_pandas(), slow.to_pandas(), check_dtype=False)


def test_flatten_false_keeps_objects_as_json_text(tmp_path):
    path = tmp_path / "status.jsonl"
    docs = nginx_status.write(path, 20)
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, format="jsonl", flatten=False,
                         wait_for_subscribers=1)
        df = sub.collect(timeout=30)
    assert [json.loads(v) for v in df["connections"]] == [d["connections"] for d in docs]
    assert [json.loads(v) for v in df["upstreams"]] == [d["upstreams"] for d in docs]
