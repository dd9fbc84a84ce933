"""The public API is small and deliberate: changing it should be a decision."""

import subprocess
import sys

import zpandas


def test_all_is_pinned():
    assert sorted(zpandas.__all__) == sorted([
        "Producer", "Subscriber", "Proxy", "Curve", "Aggregation", "LivePlot", "to_parquet",
        "ParquetSink", "publish_files", "spawn",
        "ZpandasError", "EndpointError", "ClosedError", "WireError", "SchemaMismatchError",
        "SourceError", "SubscriberBrokenError", "ProducerBrokenError", "DataLossWarning",
        "MemoryBudgetWarning", "SecurityWarning", "ColumnWarning", "__version__",
    ])
    for name in zpandas.__all__:
        assert getattr(zpandas, name) is not None


def test_import_has_no_side_effects():
    code = ("import sys, threading, zpandas; "
            "assert threading.active_count() == 1, threading.enumerate(); "
            "assert 'matplotlib' not in sys.modules and 'ipywidgets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_names_have_docstrings():
    for name in ("Producer", "Subscriber", "Proxy", "Curve", "Aggregation", "LivePlot",
                 "to_parquet", "ParquetSink", "publish_files", "spawn"):
        obj = getattr(zpandas, name)
        assert obj.__doc__ and "Parameters" in obj.__doc__, name
