"""Exception and warning classes.

Three families, so a caller can tell whose fault an error is:

* misuse of the API by the caller: ``ValueError``/``TypeError`` subclasses and
  :class:`ClosedError`;
* bad data from a peer or a file: :class:`WireError`, :class:`SchemaMismatchError`,
  :class:`SourceError`;
* a broken background worker: :class:`SubscriberBrokenError`, :class:`ProducerBrokenError`.
"""

from __future__ import annotations

__all__ = [
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
]


class ZpandasError(Exception):
    """Base class of every error zpandas raises on purpose."""


class EndpointError(ZpandasError, ValueError):
    """An endpoint string is malformed or names an unsupported transport."""


class ClosedError(ZpandasError, RuntimeError):
    """The object was used after ``close()``."""


class WireError(ZpandasError, ValueError):
    """A message on the wire is malformed.

    Attributes
    ----------
    reason : str
        A short, stable name for the failure (``"magic"``, ``"version"``,
        ``"body"``, ...), used as the key of ``Subscriber.stats()["bad_frames"]``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SchemaMismatchError(ZpandasError, ValueError):
    """Data does not match the schema fixed for its stream (e.g. a CSV file's columns)."""


class SourceError(ZpandasError):
    """A source file could not be read or parsed; the message names the file."""


class SubscriberBrokenError(ZpandasError, RuntimeError):
    """The subscriber's worker thread failed; the original error is ``__cause__``."""


class ProducerBrokenError(ZpandasError, RuntimeError):
    """The producer's socket thread failed; the original error is ``__cause__``."""


class DataLossWarning(UserWarning):
    """Messages were lost on the way (sequence gaps) or evicted before they were read."""


class MemoryBudgetWarning(UserWarning):
    """Rows kept without a limit passed the memory budget (``Subscriber(memory_budget=...)``)."""


class SecurityWarning(UserWarning):
    """A setting that leaves data unprotected (e.g. CURVE asked for on multicast)."""


class ColumnWarning(UserWarning):
    """A column that an aggregation or a plot names is not in the rows (a typo?): the
    message lists the columns there are."""
