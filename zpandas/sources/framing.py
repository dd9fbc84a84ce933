"""Bytes of a followed file cut into records: lines, CSV records (quotes tracked), or
multiline records (a line matching a start pattern begins one), none longer than allowed.

:class:`Framer` keeps no state of its own: each call reads and advances the state of one
file's cursor, ``c`` (its ``line``, ``skipping``, ``pending`` and open-quote state), so one
Framer serves every file a :class:`~zpandas.sources.follow.Follower` reads. Offsets of the
records it returns are positions in the block it was given (the Follower maps them to
file offsets: a block may be a file's bytes decoded to UTF-8).
"""

from __future__ import annotations

import re

import numpy as np

from .csv import last_record_end
from .records import Records, line_starts_matching, record_ends


class Framer:
    """How a Follower's files are cut into records.

    Parameters
    ----------
    quoted : bool
        Records end at newlines outside double quotes (CSV), not at every newline.
    multiline : compiled pattern, optional
        A line matching it starts a record; other lines continue the one before.
    max_line_bytes : int
        Longer records are cut (and rejected by the format); the rest is skipped.
    """

    def __init__(self, *, quoted: bool, multiline: re.Pattern | None, max_line_bytes: int) -> None:
        self.quoted = quoted
        self.multiline = multiline
        self.max_line_bytes = max_line_bytes

    def no_record_end(self, data: bytes) -> bool:
        """A full block without the end of its first record: that record is too long."""
        if self.quoted:
            return last_record_end(data) == 0
        return data.find(b"\n") < 0

    def skip_long(self, c, data: bytes) -> tuple[Records, int]:
        """Return a too-long record's head (once), and skip the rest of it to its newline."""
        records = Records.empty()
        if not c.skipping:
            cut = self.max_line_bytes + 1
            records = Records(data[:cut], np.array([0, cut], np.int64),
                              np.array([c.line], np.int64), np.array([0], np.int64))
            c.skipping = True
        nl = data.find(b"\n")
        if nl < 0:
            return records, len(data)
        c.skipping = False
        c.line += 1
        return records, nl + 1

    def records(self, c, data: bytes, *, final: bool) -> tuple[Records, int]:
        """The complete records of ``data``, and the bytes they use.

        A last line without a newline is complete only at the end of a one-pass read
        (where an unclosed quote's remainder is a record too, which a format rejects); a
        followed file's partial line waits for its newline.
        """
        ends = record_ends(data, quoted=self.quoted)
        if final and len(data) and (not len(ends) or ends[-1] < len(data)):
            ends = np.append(ends, len(data))
        bounds = np.zeros(len(ends) + 1, np.int64)
        bounds[1:] = ends
        used = int(bounds[-1])
        if self.quoted:  # a record may span lines: number each by the newlines before it
            newlines = np.flatnonzero(np.frombuffer(data, np.uint8)[:used] == 10)
            lines = c.line + np.searchsorted(newlines, bounds[:-1])
            c.line += len(newlines)
        else:
            lines = c.line + np.arange(len(ends), dtype=np.int64)
            c.line += len(ends) - (1 if used and not data[used - 1:used] == b"\n" else 0)
        return Records(data, bounds, lines, bounds[:-1].copy()), used

    def cut_open_quote(self, c, rest: bytes, at: int, now: float, timeout: float) -> tuple[Records, int]:
        """A CSV record whose quote is still open ``timeout`` seconds after it was first
        seen spanning a newline is cut at that newline, as one record (which the format
        rejects: unclosed quote), and the lines after it are framed anew - so a stray
        quote does not hold the rest of a live file back.

        ``rest`` is what follows the complete records; ``at`` is where it starts in the
        file (to know the same open record again). Returns the records and the bytes
        they use; advances ``c.line`` past them.
        """
        nl = rest.find(b"\n")
        if nl < 0:
            c.open_since = None
            return Records.empty(), 0
        if c.open_since is None or c.open_at != at:
            c.open_since, c.open_at = now, at
            return Records.empty(), 0
        if now - c.open_since < timeout:
            return Records.empty(), 0
        c.open_since = None
        cut = Records(rest[:nl + 1], np.array([0, nl + 1], np.int64), np.array([c.line], np.int64),
                      np.array([0], np.int64))
        c.line += 1
        more, used = self.records(c, rest[nl + 1:], final=False)
        more = Records(more.data, more.bounds, more.lines, more.offsets + nl + 1)
        return concat_records(cut, more), nl + 1 + used

    def group(self, c, lines: Records, *, flush: bool) -> Records:
        """Lines -> multiline records; the last record stays pending (it may grow) unless
        ``flush``, or unless it is already longer than ``max_line_bytes``."""
        if c.pending is not None:
            lines = concat_records(c.pending, lines)
            c.pending = None
        if not len(lines):
            return lines
        texts = lines.texts()
        if texts is None:  # not UTF-8: each line on its own, as a format will see it
            starts = np.fromiter((self.multiline.match(r.raw.decode("utf-8", "replace")) is not None
                                  for r in lines), bool, len(lines))
        else:
            starts = line_starts_matching(texts, self.multiline)
        starts[0] = True  # lines before the first start line are a record of their own
        first = np.flatnonzero(starts)
        last = int(first[-1])
        if not flush and lines.bounds[-1] - lines.bounds[last] <= self.max_line_bytes:
            c.pending = lines[last:]
            first = first[:-1]
            end = last
        else:
            end = len(lines)
        bounds = np.append(lines.bounds[first], lines.bounds[end])
        return Records(lines.data, bounds, lines.lines[first], lines.offsets[first], lines.encoding)


def concat_records(a: Records, b: Records) -> Records:
    """Records of ``a`` then ``b`` (consecutive in their file), in one buffer."""
    a0, a1, b0, b1 = (int(x) for x in (a.bounds[0], a.bounds[-1], b.bounds[0], b.bounds[-1]))
    data = a.data[a0:a1] + b.data[b0:b1]
    bounds = np.concatenate([a.bounds - a0, b.bounds[1:] - b0 + (a1 - a0)])
    return Records(data, bounds, np.concatenate([a.lines, b.lines]),
                   np.concatenate([a.offsets, b.offsets]), a.encoding)
