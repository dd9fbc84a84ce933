"""CSV source: block cutting, byte ranges, schemas, and awkward files end to end."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zpandas as zp
from zpandas.sources.csv import CsvReader, first_record_end, last_record_end

from .test_pipeline import LOCAL, read_local, sort_rows


@pytest.mark.parametrize("buf,expected", [
    (b"", 0),
    (b"abc", 0),
    (b"a\nb", 2),
    (b'a,"x\ny"\nb', 8),
    (b'a,"x\ny', 0),             # the only newline is inside quotes
    (b'a,"q""q"\n"open', 9),      # doubled quotes keep parity
    (b"a\r\nb\r\n", 6),
])
def test_last_record_end(buf, expected):
    assert last_record_end(buf) == expected


@pytest.mark.parametrize("buf,expected", [
    (b"", 0),
    (b"abc", 0),
    (b"a\nb\n", 2),
    (b'"multi\nline header",x\nrow\n', 22),
    (b'"never closed\nx\n', 0),
    (b'"a""b"\nrow', 7),
])
def test_first_record_end(buf, expected):
    assert first_record_end(buf) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b'"', b"\n", b","]), max_size=40).map(b"".join))
def test_record_ends_agree_with_a_brute_force_scan(buf):
    ends = [i + 1 for i, ch in enumerate(buf) if ch == 10 and buf[:i].count(b'"') % 2 == 0]
    assert last_record_end(buf) == (ends[-1] if ends else 0)
    assert first_record_end(buf) == (ends[0] if ends else 0)


field = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té€😀1')), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(field, field), min_size=1, max_size=30),
       block=st.integers(1, 64), crlf=st.booleans())
def test_blocks_equal_a_whole_file_read_and_ranges_tile_the_file(tmp_path, rows, block, crlf):
    path = tmp_path / "f.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL)
        w.writerow(["x", "y"])
        w.writerows(rows)
    reader = CsvReader(schema={"x": pa.string(), "y": pa.string()}, block_size=block)
    blocks = list(reader.read(path))
    got = pa.concat_tables([b.table for b in blocks]) if blocks else None
    want = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                          convert_options=pacsv.ConvertOptions(
                              column_types={"x": pa.string(), "y": pa.string()},
                              strings_can_be_null=True))
    assert got.to_pylist() == want.to_pylist()
    header = len(b'"x","y"') + (2 if crlf else 1)
    assert blocks[0].start == header
    for a, b in zip(blocks, blocks[1:], strict=False):
        assert a.end == b.start
    assert blocks[-1].end == os.path.getsize(path)


EDGE_FILES = {
    "quoted.csv": 'id,name,note\n1,"Smith, John","said ""hi""\nthen left"\n2,Zoë,\n',
    "empty-values.csv": "id,name,note\n3,,\n4,,x\n",
    "unicode.csv": "id,name,note\n5,日本語,😀 ok\n6,Ærøskøbing,naïve café\n",
    "crlf.csv": "id,name,note\r\n7,crlf,\"a\r\nb\"\r\n8,last,no newline at end",
    "header-only.csv": "id,name,note\n",
    "empty.csv": "",
    "bom.csv": "\ufeffid,name,note\n9,bom,x\n",
}


@pytest.fixture
def edge_files(tmp_path):
    paths = []
    for name, text in EDGE_FILES.items():
        p = tmp_path / name
        p.write_bytes(text.encode("utf-8"))
        paths.append(str(p))
    return paths


def test_awkward_files_arrive_exactly(edge_files):
    with zp.Subscriber(LOCAL) as sub:
        result = zp.publish_files(edge_files, sub.endpoints, wait_for_subscribers=1, block_size=16)
        got = sub.collect(producers=1, timeout=10)
    assert result["files"] == len(EDGE_FILES) and result["rows"] == 9
    assert sorted(got["id"]) == list(range(1, 10))
    want = read_local([p for p in edge_files if os.path.getsize(p) and "header-only" not in p])
    pd.testing.assert_frame_equal(sort_rows(got.drop(columns=["_file", "_offset"])), sort_rows(want))
    # Each row says where it came from: its file, and the byte its record starts at.
    assert str(got["_file"].dtype) == "category"
    for file, offset, id_ in got[["_file", "_offset", "id"]].itertuples(index=False):
        assert Path(file).read_bytes()[offset:].split(b",")[0] == str(id_).encode()
    row = got.set_index("id")
    assert row.loc[1, "name"] == "Smith, John" and row.loc[1, "note"] == 'said "hi"\nthen left'
    assert pd.isna(row.loc[3, "name"]) and row.loc[6, "note"] == "naïve café"
    assert row.loc[7, "note"] == "a\r\nb" and row.loc[8, "note"] == "no newline at end"


def test_rows_carry_their_file_and_byte_range(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("k,v\n" + "".join(f"{i},{i * 2}\n" for i in range(1000)))
    blocks = list(CsvReader(block_size=1000).read(path))
    assert blocks[0].start == 4 and blocks[-1].end == os.path.getsize(path)
    raw = path.read_bytes()
    for b in blocks:  # each range holds exactly its rows, re-parsable on its own
        again = pacsv.read_csv(io.BytesIO(b"k,v\n" + raw[b.start:b.end]))
        assert again.equals(b.table)


@pytest.mark.parametrize("other", ["x,z\n1,2\n", "x,z\n"], ids=["with rows", "header only"])
def test_a_file_with_other_columns_is_named(tmp_path, other):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text(other)
    reader = CsvReader()
    list(reader.read(tmp_path / "a.csv"))
    with pytest.raises(zp.SchemaMismatchError, match=r"b\.csv: columns \['x', 'z'\] do not match"):
        list(reader.read(tmp_path / "b.csv"))


def test_header_names_are_made_unique_as_pandas_does(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text('\n\na,a,,"b"\n1,2,3,4\n')  # empty lines before the header, too
    blocks = list(CsvReader().read(path))
    assert blocks[0].table.column_names == pd.read_csv(path).columns.tolist() \
        == ["a", "a.1", "Unnamed: 2", "b"]
    assert blocks[0].table.to_pylist() == [{"a": 1, "a.1": 2, "Unnamed: 2": 3, "b": 4}]
    assert path.read_bytes()[blocks[0].start:blocks[0].end] == b"1,2,3,4\n"


def test_line_mode_csv_makes_header_names_unique_too(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,a,,b\n1,2,3,4\n")
    with zp.Subscriber(LOCAL) as sub:  # a checkpoint reads CSV record by record
        zp.publish_files(path, sub.endpoints, checkpoint=tmp_path / "ck.db", wait_for_subscribers=1)
        df = sub.collect(producers=1, timeout=10)
    assert df.drop(columns=["_file", "_offset"]).to_dict("records") == [{"a": 1, "a.1": 2, "Unnamed: 2": 3, "b": 4}]


def test_same_columns_in_another_order_are_aligned(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,a\n")
    (tmp_path / "b.csv").write_text("y,x\nb,2\n")
    reader = CsvReader()
    tables = [b.table for p in ("a.csv", "b.csv") for b in reader.read(tmp_path / p)]
    assert pa.concat_tables(tables).to_pydict() == {"x": [1, 2], "y": ["a", "b"]}


def test_a_later_value_that_does_not_fit_is_a_reject_and_a_wider_number_widens(tmp_path, caplog):
    path = tmp_path / "drift.csv"
    # typed by the first block: n int64, f int64, t timestamp; later blocks do not fit
    path.write_text("n,f,t\n" + "1,2,2026-01-01T00:00:00Z\n" * 50
                    + "3,2.5,2026-01-01T00:00:00Z\n" + "oops,4,not a time\n" + "5,6,\n"
                    + "7,8,2026-01-01T00:00:00Z,extra\n" + "9,NA,2026-01-02T00:00:00Z\n")
    reader = CsvReader(block_size=40)
    tables = [b.table for b in reader.read(path)]
    assert reader.widened == ["'f' int64 -> double"]          # 2.5: still a number
    assert any("widened column 'f'" in r.getMessage() for r in caplog.records)
    got = zp._tables.concat(tables).to_pandas()
    assert got["n"].tolist() == [1] * 50 + [3, 5, 9]
    assert got["f"].tolist()[-4:-1] == [2.0, 2.5, 6.0] and pd.isna(got["f"].iloc[-1])
    assert str(got["t"].dtype) == "datetime64[s, UTC]" and pd.isna(got["t"].iloc[-2])
    assert [(r["line"], r["reason"]) for r in reader.rejects] == [
        (53, "n='oops' does not fit int64"), (55, "4 fields, the header has 3")]
    assert [r["text"] for r in reader.rejects] == ["oops,4,not a time", "7,8,2026-01-01T00:00:00Z,extra"]
    with open(path, "rb") as f:
        data = f.read()
    assert [data[r["offset"]:].split(b"\n")[0].decode() for r in reader.rejects] == \
        [r["text"] for r in reader.rejects]
    # a type given up front: a misfit is a reject too, named with that type
    given = CsvReader(schema={"n": pa.int64(), "f": pa.float64()}, block_size=40)
    assert sum(b.table.num_rows for b in given.read(path)) == 53
    assert [r["reason"] for r in given.rejects] == ["n='oops' does not fit int64",
                                                     "4 fields, the header has 3"]


@pytest.mark.parametrize("rows,expected", [
    # "A7" inside the first block (4 MiB), which types the columns: text, as pandas would
    (500_000, (500_001, "str", [])),
    # "A7" after the first block, which typed v as int64: a reject
    (700_000, (700_000, "int64", [[700_002, "v='A7' does not fit int64"]])),
])
def test_one_typing_rule_for_whole_and_followed_csv_files(tmp_path, rows, expected):
    """N int rows then "A7": the same rows, types and rejects with or without a checkpoint
    (the whole-file reader, or the line reader of followed files)."""
    path = tmp_path / "v.csv"
    path.write_text("v\n" + "".join(f"{i}\n" for i in range(rows)) + "A7\n")
    got = {}
    for how in ("whole", "checkpoint"):
        with zp.Subscriber(LOCAL) as sub:
            zp.publish_files(path, sub.endpoints, wait_for_subscribers=1,
                             **({"checkpoint": tmp_path / "ck.db"} if how == "checkpoint" else {}))
            df = sub.collect(producers=1, timeout=60)
            got[how] = (len(df), str(df["v"].dtype), sub.rejects()[["line", "reason"]].values.tolist())
    assert got["whole"] == got["checkpoint"] == expected


def test_concat_unifies_tables_as_pandas_concat_would():
    from zpandas._tables import concat
    a = pa.table({"n": [1, 2], "s": ["x", "y"], "only_a": [True, False]})
    b = pa.table({"n": [2.5], "s": [3]})
    c = pa.table({"n": [4], "s": pa.array([None], pa.string())})
    got = concat([a, b, c])
    assert got.schema.field("n").type == pa.float64()                 # promoted
    assert got.column("s").to_pylist() == ["x", "y", "3", None]       # irreconcilable: text
    assert got.column("only_a").to_pylist() == [True, False, None, None]  # missing: null
    assert concat([a]) is a and concat([]).num_rows == 0


def test_a_misfit_arrives_as_a_reject_at_the_subscriber(tmp_path):
    path = tmp_path / "drift.csv"
    path.write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(2000)) + "2000,unknown\n")
    with zp.Subscriber(LOCAL) as sub:
        result = zp.publish_files(path, sub.endpoints, wait_for_subscribers=1, block_size=1000)
        df = sub.collect(producers=1, timeout=30)
        rejects = sub.rejects()
    assert (result["widened"], result["rejects"], result["rows"]) == ([], 1, 2000)
    assert df["id"].tolist() == df["x"].tolist() == list(range(2000))
    assert rejects[["line", "reason", "text"]].values.tolist() == [
        [2002, "x='unknown' does not fit int64", "2000,unknown"]]


def test_a_column_empty_in_the_first_block_accepts_later_values(tmp_path):
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + "1,\n" * 20 + "2,filled\n")
    tables = [b.table for b in CsvReader(block_size=16).read(path)]
    assert pa.concat_tables(tables).column("b").to_pylist()[-1] == "filled"


def test_paths_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.csv", "b.csv", "sub/c.csv"):
        (tmp_path / name).write_text("x\n1\n")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        zp.publish_files(str(tmp_path / "*.tsv"), ">tcp://127.0.0.1:1")
    with pytest.raises(FileNotFoundError, match="no such file"):
        zp.publish_files(str(tmp_path / "nope.csv"), ">tcp://127.0.0.1:1")
    with pytest.raises(IsADirectoryError, match="give a glob"):
        zp.publish_files(str(tmp_path), ">tcp://127.0.0.1:1")
    from zpandas.sources.publish import expand_paths
    assert [os.path.relpath(p, tmp_path) for p in expand_paths(str(tmp_path / "**/*.csv"))] == [
        "a.csv", "b.csv", os.path.join("sub", "c.csv")]


@pytest.mark.parametrize("header", ["x,y\n", "x,y"], ids=["header line", "no newline"])
def test_a_header_only_file_fixes_the_columns_the_next_files_must_have(tmp_path, header):
    (tmp_path / "a.csv").write_text(header)
    (tmp_path / "b.csv").write_text("y,x\n1,2\n")      # the same columns: fine
    (tmp_path / "c.csv").write_text("x,z\n1,2\n")      # others: named
    reader = CsvReader()
    (empty,) = reader.read(tmp_path / "a.csv")          # no rows, but its columns
    assert empty.table.num_rows == 0 and empty.table.column_names == ["x", "y"]
    assert [b.table.num_rows for b in reader.read(tmp_path / "b.csv")] == [1]
    with pytest.raises(zp.SchemaMismatchError, match=r"c\.csv: columns \['x', 'z'\] do not match"):
        list(reader.read(tmp_path / "c.csv"))
    fresh = CsvReader()
    list(fresh.read(tmp_path / "a.csv"))
    with pytest.raises(zp.SchemaMismatchError, match=r"fixed by .*a\.csv"):
        list(fresh.read(tmp_path / "c.csv"))


def test_header_only_files_keep_their_columns_at_the_subscriber(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n")
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        result = zp.publish_files(tmp_path / "a.csv", ">" + sub.endpoints[0], wait_for_subscribers=1)
        df = sub.collect(producers=1, timeout=30)
        assert result["rows"] == 0 and len(df) == 0
        assert list(df.columns) == ["x", "y", "_file", "_offset"]
        assert list(sub.frame().columns) == list(df.columns)


def test_an_empty_frame_sends_its_columns_once():
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        with zp.Producer(">" + sub.endpoints[0], wait_for_subscribers=1) as p:
            empty = pd.DataFrame({"a": pd.Series([], dtype="int64")})
            p.send(empty)
            p.send(empty)                       # nothing new: not sent again
            p.send(pd.DataFrame())              # no columns at all: nothing to say
        df = sub.collect(producers=1, timeout=30)
        assert list(df.columns) == ["a"] and str(df["a"].dtype) == "int64"
        assert sub.stats()["messages"] == 1 and sub.stats()["rows"] == 0


@pytest.mark.parametrize("text", [
    "a,b,c\n1,2,3\n4,5,ʤ",              # no final newline: typed with the rest, as pandas does
    "a,b,c\r\n1,2,3\r\n4,5,x",
    "a,b\n1,2\n3,4",
    "a,b\n1,2.5\n3,",
])
def test_a_small_whole_file_without_a_final_newline_is_typed_as_one(tmp_path, text):
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode())
    reader = CsvReader()
    table = pa.concat_tables(b.table for b in reader.read(path))
    assert reader.rejects == []
    expected, got = pd.read_csv(path), table.to_pandas()
    kind = [pd.api.types.is_string_dtype, pd.api.types.is_integer_dtype, pd.api.types.is_float_dtype]
    for name in expected.columns:   # the same kind of column as pandas gives
        assert [k(got[name]) for k in kind] == [k(expected[name]) for k in kind], name
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


@pytest.mark.parametrize("what", ["rename", "copytruncate", "restart"])
def test_followed_csv_keeps_its_header_through_rotation_and_restarts(tmp_path, what):
    """A CSV file's header is its first record: the rest of a renamed file, a copy made
    by copytruncate, and a file a restart resumes past its header are still parsed with
    it; a new file's header is its own (and not a row)."""
    import shutil
    import threading

    import zpandas as zp

    from .conftest import wait_for

    log = tmp_path / "app.log"
    writer = open(log, "w")   # noqa: SIM115 - the job writing the log, kept open
    writer.write("a,b\n1,x\n2,y\n")
    writer.flush()
    ckpt = tmp_path / "ckpt.db"
    stop = threading.Event()

    def follow():
        return threading.Thread(target=lambda: zp.publish_files(
            str(tmp_path / "app.log*"), ">" + sub.endpoints[0], follow=True, stop=stop,
            poll_interval=0.05, checkpoint=ckpt))

    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        th = follow()
        th.start()
        try:
            wait_for(lambda: len(sub.frame()) == 2, timeout=30, what="the first rows")
            if what == "rename":
                log.rename(tmp_path / "app.log.1")
                writer.write("3,z\n4,w\n")   # the job finishes the renamed file
                writer.close()
                log.write_text("a,b\n5,v\n")
            elif what == "copytruncate":
                writer.write("3,z\n4,w\n")
                writer.close()
                wait_for(lambda: len(sub.frame()) == 4, timeout=30, what="rows 3 and 4")
                shutil.copyfile(log, tmp_path / "app.log.1")
                with open(log, "r+") as f:
                    f.truncate(0)
                log.write_text("a,b\n5,v\n")
            else:
                stop.set()
                th.join(30)
                writer.write("3,z\n4,w\n5,v\n")
                writer.close()
                stop.clear()
                th = follow()
                th.start()
            wait_for(lambda: len(sub.frame()) == 5, timeout=30, what="every row")
        finally:
            stop.set()
            th.join(30)
            if not writer.closed:
                writer.close()
        df = sub.frame()
        assert list(df.columns[:2]) == ["a", "b"]
        assert df["a"].tolist() == [1, 2, 3, 4, 5] and df["b"].tolist() == list("xyzwv")
        assert sub.stats()["rejects"] == 0


def test_times_have_one_unit_whether_a_csv_is_read_whole_or_followed(tmp_path):
    """Nanoseconds, as JSON lines and whole files give them (pandas 3 alone would pick
    microseconds for ISO text without nanoseconds): a notebook concatenating both gets
    one dtype."""
    import zpandas as zp

    from .conftest import wait_for

    path = tmp_path / "a.csv"
    path.write_text("time,v\n2026-12-06T10:00:00Z,1\n2026-12-06T10:00:01.5Z,2\n")
    dtypes = []
    for follow in (False, True):
        with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
            options = {"format": "csv", "duration": 0.5} if follow else {}
            zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, follow=follow, **options)
            if follow:
                wait_for(lambda: len(sub.frame()) == 2, timeout=30, what="both rows")
            df = sub.frame() if follow else sub.collect(timeout=30)
            dtypes.append(str(df["time"].dtype))
    assert dtypes == ["datetime64[ns, UTC]"] * 2


@pytest.mark.parametrize("ends", [b"\r", b"\r\n", b"\n"])
def test_lines_ended_by_cr_crlf_or_lf_give_the_same_rows_at_every_block_size(tmp_path, ends):
    """Where a block ends - between a CR and its LF, right after a header's lone CR - the
    rows and their offsets do not change."""
    lines = [b"a,b,c", b"1,x,3", b'4,"y,z",6', b"7,w,9"]
    data = b"".join(line + ends for line in lines)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    starts = [data.index(line) for line in lines[1:]]
    for block_size in range(1, len(data) + 2):
        reader = CsvReader(block_size=block_size)
        blocks = list(reader.read(path))
        rows = [r for b in blocks for r in b.table.to_pylist()]
        assert rows == [{"a": 1, "b": "x", "c": 3}, {"a": 4, "b": "y,z", "c": 6},
                        {"a": 7, "b": "w", "c": 9}], block_size
        assert [int(o) for b in blocks for o in b.offsets] == starts, block_size
        assert not reader.rejects



RAGGED = (b"\r\n\r\n"               # empty lines before the header: skipped, as by pandas
          b"id,host,bytes,note\r\n"
          b"1,a,10,first\r\n"
          b"2,b,20\r\n"               # a spreadsheet's export leaves out empty fields at the end
          b"3,c\r\n"
          b'4,"d,e",40,"x"\r\n'
          b"5,f,50,too,many\r\n"      # more fields than the header: a reject
          b"6,g,60,last")             # and no final newline


def test_rows_with_fewer_fields_than_the_header_get_nulls_as_pandas_gives_them(tmp_path):
    """Whole, at every block size, and record by record (a checkpoint): pandas' rows and
    types - the missing fields are nulls - and the row with too many fields a reject."""
    path = tmp_path / "ragged.csv"
    path.write_bytes(RAGGED)
    with pytest.raises(pd.errors.ParserError):   # pandas refuses the whole file for that row
        pd.read_csv(path)
    too_many = RAGGED.index(b"5,f")
    want = pd.read_csv(io.BytesIO(RAGGED[:too_many] + RAGGED[too_many + 17:]))
    assert want["bytes"].isna().sum() == 1 and want["note"].isna().sum() == 2
    for block_size in range(1, len(RAGGED) + 2):
        reader = CsvReader(block_size=block_size)
        got = pa.concat_tables([b.table for b in reader.read(path)]).to_pandas()
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=f"block_size={block_size}")
        assert [(r["line"], r["reason"]) for r in reader.rejects] == [(8, "5 fields, the header has 4")]
    for extra in ({}, {"checkpoint": tmp_path / "ck.db"}):
        with zp.Subscriber(LOCAL) as sub:
            zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, **extra)
            df = sub.collect(timeout=30)
            assert sub.rejects()["reason"].tolist() == ["5 fields, the header has 4"]
        pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), want, check_dtype=False)
        assert str(df["bytes"].dtype) == "float64" and df["id"].tolist() == [1, 2, 3, 4, 6]


PREAMBLE = (b'"Sales, by day",,\n'        # a title (with a comma, quoted)
            b"source: the shop\n"
            b"\n"                          # pandas counts it among skiprows too
            b"\n"                          # empty lines after the preamble: skipped
            b"day,shop,sales\n"
            b"1,a,10\n2,b,20\n3,c,30\n")


def test_skiprows_skips_the_lines_before_the_header_at_every_block_size(tmp_path):
    """pandas' skiprows: whole files at every block size (the preamble cut anywhere), the
    same rows record by record, and bad values refused by name."""
    path = tmp_path / "sales.csv"
    path.write_bytes(PREAMBLE)
    want = pd.read_csv(path, skiprows=3)
    assert want["sales"].tolist() == [10, 20, 30]
    starts = [PREAMBLE.index(b"1,a"), PREAMBLE.index(b"2,b"), PREAMBLE.index(b"3,c")]
    for block_size in range(1, len(PREAMBLE) + 2):
        reader = CsvReader(block_size=block_size, skiprows=3)
        blocks = list(reader.read(path))
        got = pa.concat_tables([b.table for b in blocks]).to_pandas()
        pd.testing.assert_frame_equal(got, want, obj=f"block_size={block_size}")
        assert [int(o) for b in blocks for o in b.offsets] == starts and not reader.rejects
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(path, sub.endpoints, checkpoint=tmp_path / "ck.db", skiprows=3,
                         wait_for_subscribers=1)
        df = sub.collect(timeout=30)
    pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), want, check_dtype=False)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="skiprows"):
            CsvReader(skiprows=bad)
    with pytest.raises(ValueError, match="skiprows.*jsonl"):
        zp.publish_files(path, ">tcp://127.0.0.1:1", format="jsonl", skiprows=2, follow=True)


def test_skiprows_on_a_file_that_grows_a_line_at_a_time_and_a_restart(tmp_path):
    """Followed while it is written - the preamble arrives over several reads - and read
    on by a restarted follower: each row once, the preamble and header never a row."""
    from zpandas.sources.checkpoint import Checkpoint
    from zpandas.sources.follow import Follower
    from zpandas.sources.lines import get_format
    path = tmp_path / "sales.csv"
    lines = PREAMBLE.splitlines(keepends=True) + [b"4,d,40\n", b"5,e,50\n"]
    got = []
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        for restart in (False, True):
            fmt = get_format("csv", skiprows=3)   # a restarted producer's: nothing known yet
            f = Follower([str(path)], resume=ck.load() if restart else None, release_after=0)
            try:
                for line in lines[6:] if restart else lines[:6]:
                    with open(path, "ab") as out:
                        out.write(line)
                    for ch in f.poll():
                        table, rejects = fmt.parse_body(fmt.begin(ch.records, ch.path, key=ch.key,
                                                                  head=ch.head), ch.path, key=ch.key)
                        assert rejects.num_rows == 0
                        got += [] if table is None else table.column("sales").to_pylist()
                        ck.save([(ch.key, ch.path, ch.dev, ch.ino, ch.head, ch.end, ch.line)])
                    ck.save(f.discovered)
            finally:
                f.close()
    assert got == [10, 20, 30, 40, 50]


def test_a_wide_header_is_found_again_after_a_restart(tmp_path):
    """A header longer than the 1 KiB a follower keeps of a file's start (100 columns;
    messytables' 211.csv has a 1,570-byte one): a restarted follower, resumed past it, took
    its first row for the header - every row after it under wrong names, that row lost."""
    from zpandas.sources.checkpoint import Checkpoint
    from zpandas.sources.follow import Follower
    from zpandas.sources.lines import get_format
    path = tmp_path / "wide.csv"
    names = [f"column_number_{i:03d}" for i in range(100)]
    header = (",".join(names) + "\n").encode()
    assert len(header) > 1024

    def row(k):
        return (",".join(str(k * 1000 + i) for i in range(100)) + "\n").encode()

    path.write_bytes(header + row(0) + row(1))
    got = []
    with Checkpoint(tmp_path / "ck.sqlite") as ck:
        for restart in (False, True):
            fmt = get_format("csv")   # a restarted producer's: nothing known yet
            f = Follower([str(path)], resume=ck.load() if restart else None, release_after=0)
            try:
                if restart:
                    with open(path, "ab") as out:
                        out.write(row(2) + row(3))
                for ch in f.poll():
                    table, rejects = fmt.parse_body(fmt.begin(ch.records, ch.path, key=ch.key,
                                                              head=ch.head), ch.path, key=ch.key)
                    assert rejects.num_rows == 0 and table.column_names[:100] == names
                    got += table.column("column_number_099").to_pylist()
                    ck.save([(ch.key, ch.path, ch.dev, ch.ino, ch.head, ch.end, ch.line)])
                ck.save(f.discovered)
            finally:
                f.close()
    assert got == [99, 1099, 2099, 3099]
