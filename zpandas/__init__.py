"""zpandas: rows from CSV and log files on many machines, live in pandas.

Producers publish Arrow IPC frames on ZeroMQ PUB sockets; a Subscriber drains them on
a background thread into micro-batched pandas DataFrames.
"""

from .errors import (
    ClosedError,
    DataLossWarning,
    MemoryBudgetWarning,
    SecurityWarning,
    ColumnWarning,
    EndpointError,
    ProducerBrokenError,
    SchemaMismatchError,
    SourceError,
    SubscriberBrokenError,
    WireError,
    ZpandasError,
)
from .aggregate import Aggregation
from .endpoints import Curve
from .parquet import ParquetSink, to_parquet
from .plot import LivePlot
from .producer import Producer
from .sources.publish import publish_files
from .proxy import Proxy
from .subscriber import Subscriber

__version__ = "0.1.0"

from .cli import spawn  # noqa: E402 - the command module needs __version__

__all__ = [
    "Producer",
    "Subscriber",
    "Proxy",
    "Curve",
    "Aggregation",
    "LivePlot",
    "to_parquet",
    "ParquetSink",
    "publish_files",
    "spawn",
    "ZpandasError",
    "EndpointError",
    "ClosedError",
    "WireError",
    "SchemaMismatchError",
    "SourceError",
    "SubscriberBrokenError",
    "ProducerBrokenError",
    "DataLossWarning",
    "MemoryBudgetWarning",
    "SecurityWarning",
    "ColumnWarning",
    "__version__",
]
