"""Concatenating Arrow tables whose schemas drifted apart, as ``pandas.concat`` would."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate ``tables``, unifying their schemas.

    Tables from different files or producers may differ: a column missing in some
    (null there), int64 in one and float64 in another (float64), or types no promotion
    reconciles, such as a CSV column that turned from numbers to text mid-file, or two
    producers sending one column name as a number and as a struct. Those become text, as
    pandas would give them object dtype (structs and lists as JSON).
    """
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            types.setdefault(f.name, set()).add(f.type)
    text = {name for name, ts in types.items() if common_type(ts) is None}
    return pa.concat_tables([_as_text(t, text) for t in tables], promote_options="permissive")


def common_type(types) -> pa.DataType | None:
    """The type pyarrow's permissive promotion gives values of all ``types``, or None.

    int64 and float64 give float64, a type and null give that type; int64 and string
    have none.
    """
    try:
        unified = pa.unify_schemas([pa.schema([("c", t)]) for t in types],
                                   promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return None
    return unified.field("c").type


def _as_text(table: pa.Table, names: set[str]) -> pa.Table:
    for i, f in enumerate(table.schema):
        if f.name in names and not pa.types.is_string(f.type):
            table = table.set_column(i, pa.field(f.name, pa.string()), _text(table.column(i)))
    return table


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` as text: Arrow's cast, or JSON for what it cannot cast (structs, lists)."""
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.chunked_array([pa.array([None if v is None else json.dumps(v, default=str)
                                           for v in column.to_pylist()], pa.string())])


def with_source(table: pa.Table, path: str, offsets=None) -> pa.Table:
    """``table`` with ``_file`` (its file's path, dictionary-encoded: one copy of the
    text per table, 4 bytes a row) and, if given, ``_offset`` (each row's byte offset)."""
    if offsets is not None and "_offset" not in table.column_names:
        table = table.append_column("_offset", pa.array(offsets, pa.int64()))
    files = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)),
                                           pa.array([path], pa.string()))
    at = table.column_names.index("_offset") if "_offset" in table.column_names else table.num_columns
    return table.add_column(at, "_file", files)
