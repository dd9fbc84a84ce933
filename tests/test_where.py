"""where=: the filter language equals pandas' query on what it accepts, and refuses the rest
with a message - nothing in it can call, import or read an attribute."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from zpandas.where import MAX_CHARS, WhereError, parse


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(5)
    n = 2_000
    status = rng.choice([200, 201, 301, 404, 500, 503], n)
    path = rng.choice(["/", "/health", "/api/v1/items", "/api/v2/users", "/static/app.js"], n)
    df = pd.DataFrame({
        "timestamp": pd.Timestamp("2026-12-06T10:00Z") + pd.to_timedelta(np.arange(n), unit="s"),
        "status": status,
        "method": rng.choice(["GET", "POST", "PUT"], n),
        "path": path,
        "latency_ms": rng.gamma(2, 80, n),
        "ok": status < 400,
        "user agent": rng.choice(["curl/8.1", "Mozilla/5.0", None], n),
        "bytes": np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 10_000, n)),
    })
    t = pa.Table.from_pandas(df, preserve_index=False)
    # a wire dictionary column, as a producer sends hosts
    return t.append_column("host", pa.array(rng.choice(["web1", "web2", "web3"], n)).dictionary_encode())


@pytest.mark.parametrize("expr,query", [
    ("status >= 500", None),
    ("status >= 500 and method == 'GET'", None),
    ("500 <= status", None),
    ("200 <= status < 400", None),
    ("status != 200 or not ok", None),
    ("(status == 404) | (latency_ms > 300) & ~ok", None),
    ("method.isin(['GET', 'PUT'])", None),
    ("status.isin([500, 503]) and not method.isin(('POST',))", None),
    ("latency_ms.between(100, 250.5)", None),
    ("path.str.startswith('/api')", None),
    ("path.str.endswith('.js') or path.str.contains('v2')", None),
    ("`user agent`.str.contains('curl')", "`user agent`.str.contains('curl', regex=False, na=False)"),
    ("`user agent`.isna()", None),
    ("bytes.notna() and bytes > 5000", None),
    ("bytes.isna()", None),
    ("host == 'web2'", None),
    ("host.isin(['web1', 'web3']) and status == 200", None),
    ("timestamp >= '2026-12-06T10:20Z'", "timestamp >= '2026-12-06T10:20Z'"),
    ("timestamp.between('2026-12-06 10:05', '2026-12-06 10:06')",
     "timestamp.between('2026-12-06 10:05Z', '2026-12-06 10:06Z')"),
    ("ok", None),
    ("latency_ms > -1 and status == 404", None),
    ("status == 200.0", None),
])
def test_it_selects_the_rows_pandas_query_does(table, expr, query):
    want = table.to_pandas().query(query or expr, engine="python")
    where = parse(expr)
    got = where.filter(table).to_pandas()
    assert len(got) == len(want) and 0 < len(got) < table.num_rows, (expr, len(got), len(want))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_it_names_the_columns_it_reads():
    assert parse("status >= 500 and `user agent`.str.contains('x') or status < 100").columns == \
        ("status", "user agent")
    assert str(parse("a == 1")) == "a == 1"


@pytest.mark.parametrize("expr,says", [
    ("__import__('os').system('id')", "a call of something other than a column method"),
    ("status.__class__", "attribute"),
    ("open('/etc/passwd')", "a call of something other than a column method"),
    ("(lambda: 1)()", "a call of something other than a column method"),
    ("[x for x in status]", "listcomp"),
    ("status + 1 > 2", "a value that is not a number"),
    ("status == other.attr", "the attribute .attr at character 11"),
    ("status.isin(list(range(10)))", "isin() of something other than one list"),
    ("status.isin([1], x=2)", "keyword arguments"),
    ("path.str.startswith(1)", "startswith() of a int, not a string"),
    ("status.between(1)", "between() without exactly two bounds"),
    ("status is None", "the operator Is"),
    ("status in [1, 2]", "the operator In"),
    ("1 < 2", "a comparison without a column"),
    ("status >= ", "not an expression"),
    ("status = 5", "not an expression"),
    ("'a' * 10**9 == status", "a value that is not a number"),
    ("f'{status}' == 'x'", "a value that is not a number"),
    ("None.x == 1", "attribute"),
])
def test_anything_outside_the_language_is_refused_with_what_and_where(expr, says):
    with pytest.raises(WhereError, match="where: ") as e:
        parse(expr)
    assert says in str(e.value), str(e.value)


def test_sizes_are_bounded():
    with pytest.raises(WhereError, match=f"more than {MAX_CHARS:,}"):
        parse("a == 1 or " * 500 + "a == 2")
    with pytest.raises(WhereError, match="more than 512 terms"):
        parse(" or ".join(f"a == {i}" for i in range(200)))
    with pytest.raises(WhereError, match="more than 512 terms"):
        parse(f"a.isin([{','.join(['1'] * 600)}])")
    with pytest.raises(WhereError, match="a string expression"):
        parse(["status > 1"])


def test_columns_and_types_are_checked_against_the_schema(table):
    with pytest.raises(WhereError, match=r"no column 'stauts'; the columns are timestamp, status"):
        parse("stauts >= 500").filter(table)
    with pytest.raises(WhereError, match=r"'abc' cannot be compared with status \(int64\)"):
        parse("status == 'abc'").filter(table)
    with pytest.raises(WhereError, match="on a column of int64, not text"):
        parse("status.str.startswith('5')").filter(table)
    with pytest.raises(WhereError, match="alone is a condition only if it is true/false"):
        parse("status").filter(table)
    with pytest.raises(WhereError, match="compares nothing"):
        parse("status > None").filter(table)
    assert parse("status == None").filter(table).num_rows == 0
    assert parse("status > 1").filter(table.slice(0, 0)).num_rows == 0
