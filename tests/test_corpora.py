"""Public real-world files end to end: loghub's 16 log samples, csv-spectrum and two of
messytables' horror CSVs.

Each loghub sample (``tests/data/loghub``: real logs, CRLF line ends and no final newline
in most) is published with the ``syslog`` preset or its recipe - the table of recipes
in docs - through a real Producer and Subscriber, and its fields are compared with
loghub's own structured CSV of the same lines.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import zpandas as zp

LOGHUB = Path(__file__).parent / "data" / "loghub"
LOCAL = "@tcp://127.0.0.1:*"

#: The recipes of docs/recipes.md: (format, time_format) per loghub system.
RECIPES = {
    "Android": (r"regex:(?P<time>\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) +(?P<pid>\d+) +(?P<tid>\d+) "
                r"(?P<level>[VDIWEFA]) (?P<component>.*?): (?P<content>.*)", "%m-%d %H:%M:%S.%f"),
    "Apache": (r"regex:\[(?P<time>[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \d{4})\] "
               r"\[(?P<level>\w+)\] (?P<content>.*)", "%a %b %d %H:%M:%S %Y"),
    "BGL": (r"regex:(?P<label>\S+) (?P<epoch>\d+) (?P<date>\d{4}\.\d\d\.\d\d) (?P<node>\S+) "
            r"(?P<time>\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d\.\d+) (?P<node_repeat>\S+) (?P<type>\S+) "
            r"(?P<component>\S+) (?P<level>\S+) (?P<content>.*)", "%Y-%m-%d-%H.%M.%S.%f"),
    "HDFS": (r"regex:(?P<time>\d{6} \d{6}) (?P<pid>\d+) (?P<level>\w+) (?P<component>\S+): "
             r"(?P<content>.*)", "%y%m%d %H%M%S"),
    "HPC": (r"regex:(?P<logid>\d+) (?P<node>\S+) (?P<component>\S+) (?P<state>\S+) (?P<time>\d+) "
            r"(?P<flag>-?\d+) (?P<content>.*)", None),
    "Hadoop": (r"regex:(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>\w+) "
               r"\[(?P<process>[^\]]*)\] (?P<component>\S+): (?P<content>.*)", "%Y-%m-%d %H:%M:%S,%f"),
    "HealthApp": (r"regex:(?P<time>\d{8}-\d{1,2}:\d{1,2}:\d{1,2}:\d{1,3})\|(?P<component>[^|]*)\|"
                  r"(?P<pid>\d+)\|(?P<content>.*)", "%Y%m%d-%H:%M:%S:%f"),
    "Linux": ("syslog", None),
    "Mac": ("syslog", None),
    "OpenSSH": ("syslog", None),
    "OpenStack": (r"regex:(?P<logrecord>\S+) (?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) "
                  r"(?P<pid>\d+) (?P<level>\w+) (?P<component>\S+) \[(?P<addr>[^\]]*)\] (?P<content>.*)", None),
    "Proxifier": (r"regex:\[(?P<time>\d\d\.\d\d \d\d:\d\d:\d\d)\] (?P<program>.*?) - (?P<content>.*)",
                  "%m.%d %H:%M:%S"),
    "Spark": (r"regex:(?P<time>\d\d/\d\d/\d\d \d\d:\d\d:\d\d) (?P<level>\w+) (?P<component>\S+): "
              r"(?P<content>.*)", "%y/%m/%d %H:%M:%S"),
    "Thunderbird": ("syslog", None),   # its syslog part: each line after loghub's 4 fields
    "Windows": (r"regex:(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d), (?P<level>\w+) +(?P<component>\S+) +"
                r"(?P<content>.*)", None),
    "Zookeeper": (r"regex:(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (?P<level>\w+) +"
                  r"\[(?P<node>[^:]*):(?P<component>[^\]]*)@(?P<id>\d+)\] - (?P<content>.*)",
                  "%Y-%m-%d %H:%M:%S,%f"),
}

#: The syslog preset's columns and loghub's names for them, per system.
SYSLOG_FIELDS = {
    "Linux": {"host": "Level", "app": "Component", "pid": "PID", "message": "Content"},
    "Mac": {"host": "User", "app": "Component", "pid": "PID", "message": "Content"},
    "OpenSSH": {"host": "Component", "pid": "Pid", "message": "Content"},
    "Thunderbird": {"host": "Location", "app": "Component", "pid": "PID", "message": "Content"},
}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def publish(path: Path, fmt: str, time_format: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    with zp.Subscriber(LOCAL) as sub:
        result = zp.publish_files(str(path), sub.endpoints, format=fmt, time_format=time_format,
                                  wait_for_subscribers=1)
        df = sub.collect(timeout=60) if result["rows"] else pd.DataFrame()
        assert sub.stats()["rows"] == result["rows"]
        return df, sub.rejects()


def line_numbers(path: Path, offsets: np.ndarray) -> np.ndarray:
    """1-based line numbers of rows starting at ``offsets``."""
    starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(path.read_bytes(), np.uint8) == 10) + 1])
    return np.searchsorted(starts, offsets) + 1


def as_text(values: pd.Series) -> pd.Series:
    """Values as loghub writes them: integers without a decimal point, missing as ''."""
    out = values.astype(object).where(values.notna(), "")
    return out.map(lambda v: str(int(v)) if isinstance(v, float) and v == int(v) else str(v).strip())


@pytest.mark.parametrize("system", sorted(RECIPES))
def test_loghub_sample_parses_and_its_fields_equal_loghubs(system, tmp_path):
    fmt, time_format = RECIPES[system]
    path = LOGHUB / f"{system}_2k.log"
    if system == "Thunderbird":   # the syslog part: after loghub's label, epoch, date, node
        stripped = tmp_path / path.name
        stripped.write_bytes(re.sub(rb"(?m)^\S+ \d+ \d{4}\.\d\d\.\d\d \S+ ", b"", path.read_bytes()))
        path = stripped
    df, rejects = publish(path, fmt, time_format)
    with gzip.open(LOGHUB / f"{system}_2k.log_structured.csv.gz", "rt", encoding="utf-8") as f:
        truth = pd.read_csv(f, dtype=str, keep_default_na=False).set_index("LineId")
    lines = len(truth)
    parsed = len(df) / lines
    assert parsed >= (0.999 if fmt == "syslog" else 0.99), (system, rejects.head())
    assert len(df) + len(rejects) == lines
    assert df["time"].notna().all() and isinstance(df["time"].dtype, pd.DatetimeTZDtype)

    fields = SYSLOG_FIELDS[system] if fmt == "syslog" else {
        col: next((t for t in truth.columns if _key(t) == _key(col)), "Timestamp" if col == "epoch" else None)
        for col in df.columns if col not in ("time", "_file", "_offset")}
    assert None not in fields.values(), fields
    ours = df.set_index(pd.Index(line_numbers(path, df["_offset"].to_numpy()).astype(str)))
    theirs = truth.loc[ours.index]
    for col, name in fields.items():
        got = as_text(ours[col])
        want = theirs[name].str.strip()
        same = (got.to_numpy() == want.to_numpy()).mean()
        # A few Thunderbird kernel lines have no tag ("IA32 emulation $Id: sys_ia32.c,v 1.32"):
        # loghub takes the words before the first colon for one, the preset leaves them in
        # the message after a tag of at most two words (9 lines of 2,000 differ in app,
        # 4 in message).
        assert same >= (0.995 if col in ("app", "message") else 0.999), (system, col, got[got.to_numpy() != want.to_numpy()].head(3).tolist(),
                               want[got.to_numpy() != want.to_numpy()].head(3).tolist())
    if fmt == "syslog":   # the time of day, as written
        assert (ours["time"].dt.strftime("%H:%M:%S").to_numpy() == theirs["Time"].to_numpy()).all()


SPECTRUM = Path(__file__).parent / "data" / "csv-spectrum"


@pytest.mark.parametrize("case", sorted(p.stem for p in (SPECTRUM / "csvs").glob("*.csv")))
@pytest.mark.parametrize("mode", ["whole file", "record by record"])
def test_csv_spectrum_case_reads_as_pythons_csv_module_does(case, mode, tmp_path):
    path = SPECTRUM / "csvs" / f"{case}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        header, *records = list(csv.reader(f))
    if case != "location_coordinates":   # its JSON has another phone number than its CSV
        with open(SPECTRUM / "json" / f"{case}.json", encoding="utf-8") as f:
            # the csv module agrees with the suite's own answer
            assert [dict(zip(header, r)) for r in records] == json.load(f)
    extra = {"checkpoint": tmp_path / "ck.db"} if mode == "record by record" else {}
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, **extra)
        df = sub.collect(timeout=30).drop(columns=["_file", "_offset"])
        assert len(sub.rejects()) == 0
    # the csv module's text, typed as pandas types a column of it
    expected = pd.DataFrame(records, columns=header).replace("", None)
    expected = expected.apply(lambda col: pd.to_numeric(col) if pd.to_numeric(col, errors="coerce")
                              .notna().sum() == col.notna().sum() else col)
    pd.testing.assert_frame_equal(df, expected, check_dtype=False)
    for name in header:
        assert pd.api.types.is_numeric_dtype(df[name]) == pd.api.types.is_numeric_dtype(expected[name])


MESSY = Path(__file__).parent / "data" / "messytables"


@pytest.mark.parametrize("mode", ["whole file", "record by record"])
def test_a_csv_whose_lines_end_with_a_lone_cr_reads_as_pandas_reads_it(mode, tmp_path):
    """Lines ended by a lone CR (an old Mac spreadsheet's): every row, as pandas reads
    them, with offsets in the file. It gave no rows and no rejects: one header line."""
    path = MESSY / "mixedGLB.csv"
    data = path.read_bytes()
    assert b"\n" not in data and data.count(b"\r") > 100
    extra = {"checkpoint": tmp_path / "ck.db"} if mode == "record by record" else {}
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, **extra)
        df = sub.collect(timeout=30)
        assert len(sub.rejects()) == 0
    pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), pd.read_csv(path),
                                  check_dtype=False)
    assert df["Combined Land--Ocean Temperature Anomaly (C) CR 1200km 1880 to 2012."].tolist()[-1] == "2012"
    assert all(data[o - 1:o] == b"\r" for o in df["_offset"])   # each row starts a line


def _published(path, mode: str, tmp_path, **options) -> pd.DataFrame:
    """``path``'s rows as a subscriber gets them: a whole file, record by record (a
    checkpoint), or as the past a producer serves (its replay, run here)."""
    if mode == "the past":
        import threading
        from zpandas import history, wire
        from zpandas.history import Request
        from zpandas.sources import replay
        fh = replay.FileHistory([str(path)], dict(fmt="csv", delimiter=",", max_line_bytes=1 << 20,
                                                  time_format=None, flatten=True, **options))
        parts, ends = [], []

        def send(table, kind=wire.Kind.DATA, **_):
            if kind is wire.Kind.DATA:
                parts.append(table)
            elif kind is wire.Kind.HISTORY_END:
                ends.append(history.read_end(table))
            return True

        replay.Answer(fh, Request.new(topic=""), send, threading.Event()).run()
        assert ends[0]["status"] == "done", ends
        return zp._tables.concat(parts).to_pandas()
    extra = {"checkpoint": tmp_path / "ck.db"} if mode == "record by record" else {}
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, **extra, **options)
        df = sub.collect(timeout=30)
        assert len(sub.rejects()) == 0
    return df


MODES = ["whole file", "record by record", "the past"]


@pytest.mark.parametrize("mode", MODES)
def test_a_csv_with_empty_lines_before_its_header_and_short_rows_reads_as_pandas_reads_it(
        mode, tmp_path):
    """German statistics as an export left them: two empty lines, then a title line that
    pandas takes for the header (5 names, it has commas), then rows of one field. pandas
    skips the empty lines and fills the missing fields with NaN. Followed, the first empty
    line was the header (every row a reject: "1 fields, the header has 0"); whole, every
    short row was a reject."""
    path = MESSY / "weird_head_padding.csv"
    assert path.read_bytes().startswith(b"\n\n")
    want = pd.read_csv(path)
    assert want.shape == (84, 5) and want.iloc[:, 1:].isna().all().all()
    df = _published(path, mode, tmp_path)
    pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), want, check_dtype=False)


@pytest.mark.parametrize("mode", [*MODES, "command line"])
def test_skiprows_skips_a_preamble_as_pandas_does(mode, tmp_path):
    """NASA's temperatures start with a title, a blank line and a note before the header
    (`Year,Jan,...`): with skiprows=3, pandas' frame - whole, followed, in the past and
    from `zpandas publish --skiprows 3`."""
    import subprocess
    import sys
    path = MESSY / "mixedGLB.csv"
    want = pd.read_csv(path, skiprows=3)
    assert list(want.columns[:3]) == ["Year", "Jan", "Feb"] and len(want) == 133
    if mode == "command line":
        with zp.Subscriber(LOCAL) as sub:
            run = subprocess.run([sys.executable, "-m", "zpandas", "publish", str(path),
                                  "--skiprows", "3", "-e", ">" + sub.endpoints[0],
                                  "--wait-for", "1", "--quiet"],
                                 capture_output=True, text=True, timeout=120, check=False)
            assert run.returncode == 0, run.stderr
            df = sub.collect(timeout=30)
    else:
        df = _published(path, mode, tmp_path, skiprows=3)
    pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), want, check_dtype=False)

def test_a_csv_header_in_another_encoding_is_refused_clearly_then_read_when_named():
    """A latin-1 header read as UTF-8: an error that says what to do (it was a
    UnicodeDecodeError from inside pyarrow); with encoding="latin-1", pandas' rows."""
    path = MESSY / "spanish_chars.csv"
    with zp.Subscriber(LOCAL) as sub:
        with pytest.raises(zp.SourceError, match=r"header .* is not utf-8.*encoding="):
            zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1)
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, wait_for_subscribers=1, encoding="latin-1")
        df = sub.collect(timeout=30)
        assert len(sub.rejects()) == 0
    want = pd.read_csv(path, encoding="latin-1")
    assert "Descripción" in want.columns
    pd.testing.assert_frame_equal(df.drop(columns=["_file", "_offset"]), want, check_dtype=False)


def test_the_recipes_in_the_docs_are_the_ones_tested():
    docs = (Path(__file__).parent.parent / "docs" / "files.md").read_text()
    for system, (fmt, time_format) in RECIPES.items():
        if fmt != "syslog":
            cmd = f"--format '{fmt}'" + (f" --time-format '{time_format}'" if time_format else "")
            assert f"zpandas publish {system.lower()}.log {cmd}" in docs, system
        assert f"| {system} |" in docs, system
