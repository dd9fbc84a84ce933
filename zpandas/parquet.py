"""Parquet export, written atomically: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_parquet"]


def write_parquet(data: pd.DataFrame | pa.Table, path: str | os.PathLike, *,
                  provenance: dict | None = None) -> str:
    """Write ``data`` to ``path`` as Parquet, atomically.

    The file is written under a temporary name in the same folder and renamed into
    place, so readers see either the old file or the complete new one.

    Parameters
    ----------
    data : pandas.DataFrame or pyarrow.Table
    path : str or path
    provenance : dict, optional
        JSON-serializable facts stored in the file's metadata under ``b"zpandas"``.

    Returns
    -------
    str
        The path written.
    """
    from . import __version__

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data)
    meta = dict(table.schema.metadata or {})
    meta[b"zpandas"] = json.dumps({"version": __version__, **(provenance or {})},
                                  default=str).encode()
    table = table.replace_schema_metadata(meta)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zpandas-", suffix=".parquet.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
