"""A reader in another language: Node.js with apache-arrow decodes zpandas frames exactly,
plain, dictionary-encoded and compressed, from docs/wire.md alone (tests/node/read_frames.mjs).

Needs node and the packages of tests/node/package.json (``make node`` installs them; CI
does); skips with the reason otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from zpandas import wire

from .conftest import ROOT

NODE_DIR = os.path.join(ROOT, "tests", "node")
pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="no node on PATH (make node)"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "apache-arrow")),
                       reason="tests/node has no node_modules: run `make node` (npm install)"),
]


def frames(table: pa.Table, seq: int, **options) -> list[bytes]:
    if options.pop("dictionary", False):
        table = wire.dictionary_encode(table)
    header = wire.Header(producer=bytes(range(16)), seq=seq, total=seq * table.num_rows, name="node1")
    return [bytes(f) for f in wire.encode(table, topic=b"metrics", header=header, **options)]


def test_node_reads_plain_dictionary_and_compressed_frames(tmp_path):
    n = 5_000
    rng = np.random.default_rng(3)
    table = pa.table({"host": pa.array([f"web{i % 7}" for i in range(n)]),
                      "value": rng.normal(50, 10, n), "status": rng.integers(200, 600, n),
                      "path": pa.array([f"/item/{i}" for i in range(n)])})
    variants = [{}, {"dictionary": True}, {"compression": "lz4"},
                {"compression": "zstd", "dictionary": True}]
    messages = [frames(table, i, **v) for i, v in enumerate(variants)]
    assert len(messages[3][2]) < len(messages[0][2]) / 3          # they do differ on the wire
    eos = wire.encode(None, topic=b"metrics", header=wire.Header(
        kind=wire.Kind.END_OF_STREAM, producer=bytes(range(16)), seq=4, total=4 * n, name="node1"))
    messages.append([bytes(f) for f in eos])
    path = tmp_path / "messages.json"
    path.write_text(json.dumps([[base64.b64encode(f).decode() for f in m] for m in messages]))
    run = subprocess.run(["node", os.path.join(NODE_DIR, "read_frames.mjs"), str(path)],
                         capture_output=True, text=True, timeout=120, cwd=NODE_DIR)
    assert run.returncode == 0, run.stderr
    seen = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(seen) == 5
    want = table.to_pandas()
    for i, got in enumerate(seen[:4]):
        assert (got["magic"], got["version"], got["kind"], got["seq"], got["rows"], got["name"]) == \
            ("ZP", 2, 0, i, n, "node1")
        df = pd.DataFrame(got["columns"])
        pd.testing.assert_frame_equal(df, want, check_dtype=False, obj=f"message {i}: {variants[i]}")
    assert (seen[4]["kind"], seen[4]["seq"], seen[4]["total"], seen[4].get("columns")) == (1, 4, 4 * n, None)
