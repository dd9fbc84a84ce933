"""``where=``: a small filter language over columns, parsed with :mod:`ast`, never evaluated.

What a pandas user writes in ``DataFrame.query``, the part that can be checked before it
runs and pushed to a producer::

    status >= 500 and method == "GET"
    host.isin(["web1", "web2"]) or not path.str.startswith("/health")
    latency_ms.between(100, 2000) and `user agent`.str.contains("curl")
    timestamp >= "2026-12-06T10:40Z"

Comparisons (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, chained ``a < x < b``), ``and``,
``or``, ``not`` (also ``&``, ``|``, ``~``), ``col.isin([...])``, ``col.between(low, high)``
(both ends included, as pandas), ``col.str.startswith(s)``, ``col.str.endswith(s)``,
``col.str.contains(s)`` (a plain substring, not a pattern), ``col.isna()``,
``col.notna()``; literals: numbers, strings, ``True``, ``False``, ``None`` and lists of
them. A column name that is not an identifier is written in backticks, as in pandas.

An expression is parsed once (:func:`parse`) into a :class:`Where`, which names the
columns it needs and compiles, against a table's schema, to a ``pyarrow.compute``
expression: no Python runs per row, and nothing a peer sends can call a function, read an
attribute or import a module - anything outside the language is a :class:`WhereError`
that says what and where. Rows where the expression is null (a missing value compared)
are left out, as pandas' ``query`` does.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ZpandasError

__all__ = ["Where", "WhereError", "parse"]

#: Bounds on what a request may ask: a peer sends these.
MAX_CHARS = 4096
MAX_NODES = 512     # also bounds an isin() list

_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_METHODS = {"isin", "between", "isna", "notna", "startswith", "endswith", "contains"}
_STR_METHODS = {"startswith", "endswith", "contains"}
_BACKTICK = re.compile(r"`([^`]*)`")


class WhereError(ZpandasError, ValueError):
    """An expression outside the ``where=`` language, or one that does not fit the columns."""


@dataclass(frozen=True)
class Where:
    """A parsed ``where=`` expression.

    Attributes
    ----------
    text : str
        The expression as written.
    columns : tuple of str
        The columns it reads, in order of appearance.
    """

    text: str
    columns: tuple[str, ...]
    _tree: tuple

    def expression(self, schema: pa.Schema) -> pc.Expression:
        """The ``pyarrow.compute`` expression for tables of ``schema``.

        Raises
        ------
        WhereError
            A column the schema lacks (the message lists those it has), or a literal
            that cannot be compared with its column (``status == "abc"`` on integers).
        """
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise WhereError(f"where: no column {', '.join(map(repr, missing))}; the columns are "
                             f"{', '.join(schema.names)}")
        return _compile(self._tree, schema)

    def filter(self, table: pa.Table) -> pa.Table:
        """The rows of ``table`` that match (null counts as no match)."""
        if not table.num_rows:
            return table
        return table.filter(self.expression(table.schema))

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> Where:
    """Parse a ``where=`` expression.

    Raises
    ------
    WhereError
        Anything outside the language, with what was found and where (column of the text).
    """
    if not isinstance(text, str):
        raise WhereError(f"where must be a string expression, not {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise WhereError(f"where: {len(text):,} characters, more than {MAX_CHARS:,}")
    names: list[str] = []

    def hide(m: re.Match) -> str:
        names.append(m.group(1))
        return f"__zp_col_{len(names) - 1}"

    source = _BACKTICK.sub(hide, text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise WhereError(f"where: not an expression ({e.msg}, at character {e.offset or 0}): "
                         f"{text!r}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise WhereError(f"where: more than {MAX_NODES} terms")
    columns: list[str] = []
    node = _Reader(text, names, columns).read(tree.body)
    return Where(text, tuple(dict.fromkeys(columns)), node)


# -- reading the tree: only what the language has ----------------------------------------
# The result is a small tree of tuples: ("and", a, b), ("or", a, b), ("not", a),
# ("cmp", op, left, right) with left/right ("col", name) or ("lit", value),
# ("isin", col, values), ("between", col, low, high), ("isna"|"notna", col),
# ("startswith"|"endswith"|"contains", col, text), ("lit", bool).

class _Reader:
    def __init__(self, text: str, hidden: list[str], columns: list[str]) -> None:
        self.text, self.hidden, self.columns = text, hidden, columns

    def fail(self, node: ast.AST, what: str):
        at = getattr(node, "col_offset", None)
        where = f" at character {at + 1}" if at is not None else ""
        raise WhereError(f"where: {what}{where} in {self.text!r}; the language has comparisons, "
                         "and/or/not, isin, between, isna/notna, str.startswith/endswith/contains")

    def read(self, node: ast.AST) -> tuple:
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            out = self.read(node.values[0])
            for v in node.values[1:]:
                out = (op, out, self.read(v))
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return ("not", self.read(node.operand))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            return ("and" if isinstance(node.op, ast.BitAnd) else "or",
                    self.read(node.left), self.read(node.right))
        if isinstance(node, ast.Compare):
            terms = [node.left, *node.comparators]
            parts = []
            for op, a, b in zip(node.ops, terms, terms[1:]):
                if type(op) not in _COMPARE:
                    self.fail(node, f"the operator {type(op).__name__}")
                parts.append(("cmp", _COMPARE[type(op)], self.operand(a), self.operand(b)))
            out = parts[0]
            for p in parts[1:]:
                out = ("and", out, p)
            if all(t[0] == "lit" for p in parts for t in p[2:]):
                self.fail(node, "a comparison without a column")
            return out
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return ("lit", node.value)
        if isinstance(node, ast.Name):
            return ("truthy", self.column(node))
        self.fail(node, f"{type(node).__name__.lower()} {ast.get_source_segment(self.text, node) or ''}"
                  .rstrip())

    def call(self, node: ast.Call) -> tuple:
        f = node.func
        if not isinstance(f, ast.Attribute) or f.attr not in _METHODS:
            self.fail(node, "a call of something other than a column method")
        if node.keywords:
            self.fail(node, "keyword arguments")
        target = f.value
        if f.attr in _STR_METHODS and isinstance(target, ast.Attribute) and target.attr == "str":
            target = target.value
        col = self.column(target)
        args = node.args
        if f.attr in ("isna", "notna"):
            if args:
                self.fail(node, f"{f.attr}() with arguments")
            return (f.attr, col)
        if f.attr == "isin":
            if len(args) != 1 or not isinstance(args[0], (ast.List, ast.Tuple, ast.Set)):
                self.fail(node, "isin() of something other than one list of values")
            return ("isin", col, tuple(self.literal(e) for e in args[0].elts))
        if f.attr == "between":
            if len(args) != 2:
                self.fail(node, "between() without exactly two bounds")
            return ("between", col, self.literal(args[0]), self.literal(args[1]))
        if len(args) != 1:
            self.fail(node, f"{f.attr}() without exactly one string")
        text = self.literal(args[0])
        if not isinstance(text, str):
            self.fail(node, f"{f.attr}() of a {type(text).__name__}, not a string")
        return (f.attr, col, text)

    def operand(self, node: ast.AST) -> tuple:
        if isinstance(node, ast.Name):
            return ("col", self.column(node))
        return ("lit", self.literal(node))

    def column(self, node: ast.AST) -> str:
        if not isinstance(node, ast.Name):
            self.fail(node, "a column that is not a plain name (backticks for other names)")
        name = node.id
        if name.startswith("__zp_col_"):
            name = self.hidden[int(name[9:])]
        elif name in ("True", "False", "None"):
            self.fail(node, f"{name} where a column belongs")
        self.columns.append(name)
        return name

    def literal(self, node: ast.AST):
        if isinstance(node, ast.Attribute):
            self.fail(node, f"the attribute .{node.attr}")
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(
                node.value, (bool, int, float, str))):
            return node.value
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
                and isinstance(node.operand, ast.Constant)
                and isinstance(node.operand.value, (int, float))
                and not isinstance(node.operand.value, bool)):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        self.fail(node, "a value that is not a number, a string, True, False or None")


# -- compiling to pyarrow.compute ------------------------------------------------------------

def _compile(node: tuple, schema: pa.Schema) -> pc.Expression:
    kind = node[0]
    if kind == "and":
        return _compile(node[1], schema) & _compile(node[2], schema)
    if kind == "or":
        return _compile(node[1], schema) | _compile(node[2], schema)
    if kind == "not":
        return ~_compile(node[1], schema)
    if kind == "lit":
        return pc.scalar(bool(node[1]))
    if kind == "truthy":
        if not pa.types.is_boolean(_plain(schema.field(node[1]).type)):
            raise WhereError(f"where: {node[1]} alone is a condition only if it is true/false, "
                             f"not {schema.field(node[1]).type}: compare it (== ...)")
        return pc.field(node[1]) == pc.scalar(True)
    if kind == "cmp":
        _, op, a, b = node
        if a[0] == "lit":   # 500 <= status: the column on the left
            a, b, op = b, a, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        left = pc.field(a[1])
        if b[0] == "col":
            right = pc.field(b[1])
        else:
            if b[1] is None:
                if op not in ("==", "!="):
                    raise WhereError(f"where: {a[1]} {op} None compares nothing")
                return left.is_null() if op == "==" else ~left.is_null()
            right = pc.scalar(_value(b[1], schema.field(a[1]).type, a[1]))
        return {"==": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
                ">": left > right, ">=": left >= right}[op]
    col = node[1]
    field = pc.field(col)
    typ = schema.field(col).type
    if kind == "isna":
        return field.is_null(nan_is_null=True)
    if kind == "notna":
        return ~field.is_null(nan_is_null=True)
    if kind == "isin":
        values = pa.array([_value(v, typ, col) for v in node[2] if v is not None], type=_plain(typ))
        out = pc.is_in(field, value_set=values)
        return out | field.is_null() if None in node[2] else out
    if kind == "between":
        low, high = (pc.scalar(_value(v, typ, col)) for v in node[2:])
        return (field >= low) & (field <= high)
    if not (pa.types.is_string(_plain(typ)) or pa.types.is_large_string(_plain(typ))):
        raise WhereError(f"where: {col}.str.{kind}() on a column of {typ}, not text")
    fn = {"startswith": pc.starts_with, "endswith": pc.ends_with, "contains": pc.match_substring}[kind]
    return fn(field, pattern=node[2])


def _plain(typ: pa.DataType) -> pa.DataType:
    return typ.value_type if pa.types.is_dictionary(typ) else typ


def _value(value, typ: pa.DataType, col: str):
    """``value`` as a scalar of the column's type: a timestamp column compares with a time
    written as text, a float column with an int."""
    typ = _plain(typ)
    try:
        if pa.types.is_timestamp(typ) and isinstance(value, str):
            import pandas as pd
            ts = pd.Timestamp(value)
            if typ.tz is not None:
                ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
            elif ts.tz is not None:
                ts = ts.tz_convert("UTC").tz_localize(None)
            return pa.scalar(ts, type=typ)
        if pa.types.is_date(typ) and isinstance(value, str):
            import datetime
            return pa.scalar(datetime.date.fromisoformat(value), type=typ)
        if isinstance(value, bool) != pa.types.is_boolean(typ):
            raise TypeError
        return pa.scalar(value, type=typ)
    except (TypeError, ValueError, pa.ArrowException):
        raise WhereError(f"where: {value!r} cannot be compared with {col} ({typ})") from None
