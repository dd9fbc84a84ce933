"""Checkpoints: where each file incarnation was read up to, kept in SQLite (WAL mode).

Entries of files that no followed path has been for :data:`RETENTION` (7 days) are
deleted, so the table holds the files that exist plus a week of rotated-away ones.

The registry also holds this producer's *source id*, made once and kept, so the keys of
the rows it sends (source id, file incarnation, byte offset) are the same after a restart
and a subscriber can drop what a restarted producer sends again. Offsets are advanced
only for rows already handed to the socket; after ``kill -9`` the producer resumes from
there, resending at most what was in flight.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid

__all__ = ["Checkpoint"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    key TEXT PRIMARY KEY,          -- the incarnation's id
    path TEXT NOT NULL,            -- last path seen (for people; identity is dev, ino, head)
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    head BLOB NOT NULL,            -- first bytes (up to 1 KiB) when last seen
    offset INTEGER NOT NULL,       -- rows before this byte were handed to the socket
    line INTEGER NOT NULL,         -- line number at offset
    updated REAL NOT NULL,
    seen REAL,                     -- when a followed path last was this file
    size INTEGER                   -- its size when last read (NULL: not known)
);
CREATE TABLE IF NOT EXISTS times (  -- zpandas.sources.timeindex: event time by file span
    key TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    tmin INTEGER,                  -- ns; NULL: no timed rows in the span
    tmax INTEGER,
    crc INTEGER NOT NULL,          -- CRC-32 of the n bytes at start
    n INTEGER NOT NULL,
    PRIMARY KEY (key, start)
);
"""

#: Entries of files that no followed path has been for this long are pruned (seconds).
RETENTION = 7 * 24 * 3600


class Checkpoint:
    """A producer's registry of file incarnation -> offset, in one SQLite file.

    Parameters
    ----------
    path : str or path
        The database file; created with its folder if missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # One connection, used under a lock from whichever thread commits.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(files)")}
            if "seen" not in columns:  # a checkpoint written before entries expired
                self._db.execute("ALTER TABLE files ADD COLUMN seen REAL")
            if "size" not in columns:  # written before sizes were kept
                self._db.execute("ALTER TABLE files ADD COLUMN size INTEGER")
            row = self._db.execute("SELECT value FROM meta WHERE name='source_id'").fetchone()
            if row is None:
                self.source_id = uuid.uuid4().hex[:12]
                self._db.execute("INSERT INTO meta VALUES ('source_id', ?)", (self.source_id,))
            else:
                self.source_id = row[0]

    def load(self) -> dict[str, tuple]:
        """``{key: (dev, ino, head, offset, line, size, path)}`` for every incarnation
        recorded (``size``: the file's size when last read, or None)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, dev, ino, head, offset, line, size, path FROM files").fetchall()
        return {k: (dev, ino, bytes(head), off, line, size, path)
                for k, dev, ino, head, off, line, size, path in rows}

    def save(self, entries: list[tuple]) -> None:
        """Record ``(key, path, dev, ino, head, offset, line[, size])`` for each, in one
        transaction."""
        if not entries:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO files (key, path, dev, ino, head, offset, line, updated, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "path=excluded.path, dev=excluded.dev, ino=excluded.ino, head=excluded.head, "
                "offset=MAX(offset, excluded.offset), line=excluded.line, updated=excluded.updated, "
                "size=MAX(COALESCE(size, 0), COALESCE(excluded.size, 0))",
                [(*e[:7], now, e[7] if len(e) > 7 else None) for e in entries])
            self._db.execute("COMMIT")

    def load_times(self) -> dict[str, list[tuple]]:
        """The time index's spans by key, in file order (:mod:`.timeindex`)."""
        with self._lock:
            rows = self._db.execute('SELECT key, start, "end", tmin, tmax, crc, n FROM times '
                                    "ORDER BY key, start").fetchall()
        out: dict[str, list[tuple]] = {}
        for key, *span in rows:
            out.setdefault(key, []).append(tuple(span))
        return out

    def save_times(self, changed: dict[str, list[tuple]], last: dict[str, int]) -> None:
        """Record the spans in ``changed``; and for each key in ``last``, forget spans
        starting after that offset (the file was read again from an earlier place)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM times WHERE key=? AND start>?", list(last.items()))
            self._db.executemany("INSERT OR REPLACE INTO times VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(k, *span) for k, spans in changed.items() for span in spans])
            self._db.execute("COMMIT")

    def sizes(self, sizes: dict[str, int]) -> None:
        """Record how large each followed file (by key) is now, read or not: what a restart
        finds gone past its offset is then known to be lost, and how much."""
        if not sizes:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE files SET size=MAX(COALESCE(size, 0), ?) WHERE key=?",
                                 [(n, k) for k, n in sizes.items()])
            self._db.execute("COMMIT")

    def expire(self, present, *, now: float | None = None, retention: float = RETENTION) -> int:
        """Mark the entries in ``present`` as seen now; delete those unseen for ``retention``.

        Returns the number of entries deleted. An entry never marked counts as seen when
        it was last updated.
        """
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE files SET seen=? WHERE key=?", [(now, k) for k in present])
            gone = self._db.execute("DELETE FROM files WHERE COALESCE(seen, updated) < ?",
                                    (now - retention,)).rowcount
            if gone:
                self._db.execute("DELETE FROM times WHERE key NOT IN (SELECT key FROM files)")
            self._db.execute("COMMIT")
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
