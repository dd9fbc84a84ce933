"""Parquet export, written atomically: a reader never sees a half-written file.

:func:`to_parquet` writes one file, or a Hive-partitioned folder (``host=node1/...``), in
one go. :class:`ParquetSink` is the long-running form: rows stream in, and it rolls to a
new file by size or time. Every file carries provenance (zpandas version, producers,
sources and byte ranges) in its metadata under ``b"zpandas"``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._tables import concat

__all__ = ["to_parquet", "ParquetSink", "provenance_of"]


def to_parquet(data: pd.DataFrame | pa.Table, path: str | os.PathLike, *,
               partition_by: str | list[str] | None = None,
               provenance: dict | None = None) -> str:
    """Write ``data`` to Parquet at ``path``, atomically.

    Everything is written under a temporary name beside ``path`` and renamed into place,
    so readers see either what was there before or the complete new data - never a
    half-written file.

    Parameters
    ----------
    data : pandas.DataFrame or pyarrow.Table
    path : str or path
        A file, or with ``partition_by`` a folder, replaced whole if it exists. Every
        file is complete the moment it is visible. A file is replaced atomically; a
        folder by two renames, so a reader listing it at that very moment may get a
        ``FileNotFoundError`` (retry) or files of both versions (each complete).
    partition_by : str or list of str, optional
        Columns to partition by, Hive style (``host=node1/part-0.parquet``). ``"date"``,
        when there is no such column, is the date of the first datetime column.
    provenance : dict, optional
        JSON-serializable facts stored in every file's metadata under ``b"zpandas"``
        (with the zpandas version).

    Returns
    -------
    str
        The path written.
    """
    table = _with_metadata(_table(data, partition_by), provenance)
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if not partition_by:
        # Not mkstemp: its files are private (0600); this one gets the mode any new file
        # would (0666 less the umask), like pandas' to_parquet.
        tmp = os.path.join(folder, f".zpandas-{uuid.uuid4().hex}.parquet.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    cols = [partition_by] if isinstance(partition_by, str) else list(partition_by)
    tmp = os.path.join(folder, f".zpandas-{uuid.uuid4().hex}.tmp")
    os.mkdir(tmp)  # 0777 less the umask (mkdtemp's would be private)
    try:
        # File names unique to this write: a reader that listed the old folder and
        # opens a file after the swap gets "not found" rather than another version.
        pq.write_to_dataset(table, tmp, partition_cols=cols,
                            basename_template=f"part-{uuid.uuid4().hex[:12]}-{{i}}.parquet")
        _fsync_tree(tmp)
        if os.path.exists(path):
            # Two renames: the old folder goes aside whole, the new one comes in whole.
            old = f"{path}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class ParquetSink:
    """Stream rows into a folder of Parquet files, rolling by size or time.

    Each file is written atomically under the name ``part-<UTC time>-<n>.parquet``, so a
    reader (``pyarrow.dataset``, ``pandas.read_parquet(folder)``, DuckDB) only ever sees
    complete files.

    Parameters
    ----------
    folder : str or path
    roll_bytes : int, default 64 MiB
        Start a new file once this much Arrow data is buffered...
    roll_seconds : float, default 60
        ...or once the oldest buffered rows are this old (checked on each write and
        by :meth:`poll`).
    provenance : callable returning dict, optional
        Called at each roll; stored in the file's metadata.
    """

    def __init__(self, folder: str | os.PathLike, *, roll_bytes: int = 64 << 20,
                 roll_seconds: float = 60.0, provenance=None) -> None:
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self._provenance = provenance
        self._tables: list[pa.Table] = []
        self._bytes = 0
        self._since: float | None = None
        self.files: list[str] = []
        self.rows = 0

    def write(self, data: pd.DataFrame | pa.Table) -> None:
        """Buffer rows; roll to a file if the buffer is big or old enough."""
        table = _table(data, None)
        if table.num_rows:
            self._tables.append(table)
            self._bytes += table.nbytes
            self._since = self._since or time.monotonic()
        self.poll()

    def poll(self) -> str | None:
        """Roll if due; return the file written, if any."""
        if self._tables and (self._bytes >= self.roll_bytes
                             or time.monotonic() - self._since >= self.roll_seconds):
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Write whatever is buffered to a new file now."""
        if not self._tables:
            return None
        table = concat(self._tables)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = os.path.join(self.folder, f"part-{stamp}-{len(self.files):05d}.parquet")
        to_parquet(table, path, provenance=self._provenance() if self._provenance else None)
        self._tables, self._bytes, self._since = [], 0, None
        self.files.append(path)
        self.rows += table.num_rows
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def provenance_of(stats: dict) -> dict:
    """Who sent what, from ``Subscriber.stats()``, for a file's metadata."""
    cols = ["name", "producer", "topic", "rows", "missed_rows", "sources"]
    df = stats["producers"]
    return {"producers": df[[c for c in cols if c in df.columns]].to_dict("records")}


def _table(data, partition_by) -> pa.Table:
    if isinstance(data, pa.Table):
        table = data
    else:
        df = data
        wanted = [partition_by] if isinstance(partition_by, str) else list(partition_by or [])
        if "date" in wanted and "date" not in df.columns:
            stamps = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
            if not stamps:
                raise ValueError("partition_by='date' needs a 'date' column or a datetime column")
            df = df.assign(date=df[stamps[0]].dt.strftime("%Y-%m-%d"))
        table = pa.Table.from_pandas(df, preserve_index=False)
    missing = [c for c in ([partition_by] if isinstance(partition_by, str) else partition_by or [])
               if c not in table.column_names]
    if missing:
        raise ValueError(f"cannot partition by {missing}: no such column(s)")
    return table


def _with_metadata(table: pa.Table, provenance: dict | None) -> pa.Table:
    from . import __version__

    meta = dict(table.schema.metadata or {})
    meta[b"zpandas"] = json.dumps({"version": __version__, **(provenance or {})},
                                  default=str).encode()
    return table.replace_schema_metadata(meta)


def _fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
