"""Follow files that grow, rotate and restart: complete records, each exactly where it is.

A :class:`Follower` keeps one cursor per file *incarnation*. A file is known by its
content - its first bytes (up to 1 KiB, growing with the file) and the bytes just before
where we are - as well as its inode, so a renamed file is still the same one, a copy is
recognised as the file it copies, and a reused inode with other content is not. Each
:meth:`Follower.poll` reads what was appended, up to the last complete record (a partial
last line waits for its newline), and returns it as records with their line numbers and
byte offsets. A record with no end within ``max_line_bytes`` is returned cut (a format
rejects it) and skipped to its newline: nothing stalls a file.

Rotation:

* **rename** (logrotate's default, with ``create``): the renamed file is read to its end
  through the open handle, and closed once it has stopped growing for ``release_after``
  seconds (while no followed path names it); the new file at the path is a new
  incarnation, read from its start. A released file that grows again goes on from where
  it was.
* **copytruncate**: the file is copied and then truncated in place. The copy - seen
  before or after the truncation, complete or still being written (it is waited for),
  while we run or while we were stopped (checkpoints resume by content) - goes on from
  where we were, and the truncated file starts a new incarnation. Follow a glob that
  matches the copies (``app.log*``); a truncation whose copy is not found is counted in
  ``lost_truncations`` and logged.
* deleted files are read to their end and released (no open handle is kept).

Files with the same content as far as we have read cannot be told from a copy; as with
any content fingerprint, they count as one. So do two files found in the same look, none
read yet, when the later one is named as a rotated copy of the other (``app.log.1`` of
``app.log``) and holds its start (a copy caught in the middle of a copytruncate). Empty
files are not followed until they have bytes (a copy is created empty and then written).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO

from .compressed import HEAD as COMPRESSED_HEAD
from .compressed import compression_of
from .encoding import Transcoder
from .framing import Framer, concat_records
from .records import CR_AS_LF, Holes, Records, first_bytes, lone_cr

__all__ = ["Follower", "Chunk", "HEAD_BYTES"]

log = logging.getLogger("zpandas")

HEAD_BYTES = 1024
_TAIL_BYTES = 64
_READ = 4 << 20


@dataclass
class _Cursor:
    key: str
    path: str
    dev: int
    ino: int
    head: bytes
    offset: int = 0            # next byte to read
    line: int = 1              # line number at ``offset``
    f: BinaryIO | None = None
    tail: bytes = b""          # the bytes just before ``offset``
    pending: Records | None = None  # lines of a multiline record that may still grow
    skipping: bool = False     # inside a record too long to keep: skip to its newline
    open_since: float | None = None  # when the quoted record at ``open_at`` was seen open
    open_at: int = -1
    codec: Transcoder = field(default_factory=Transcoder)   # the file's encoding
    bom: int = 0               # bytes of its byte-order mark
    lone_cr: bool | None = None   # its lines end with a lone CR (None: not known yet)
    nuls: int = 0              # NUL bytes left out of its text so far
    grew: float = field(default_factory=time.monotonic)
    detached: bool = False     # the path no longer names this file
    done: bool = False


@dataclass(frozen=True)
class Chunk:
    """Complete records of one file incarnation, covering bytes ``[start, end)``."""

    key: str
    path: str
    records: Records
    start: int
    end: int
    line: int                  # line number at ``end`` (for a checkpoint)
    head: bytes
    dev: int
    ino: int
    size: int = -1             # the file's size when this was read


class Follower:
    """Read complete records from files matching ``patterns``, now and as they grow.

    Parameters
    ----------
    patterns : list of str
        Paths and globs; re-expanded on every poll, so new files are picked up.
    quoted : bool
        Records are CSV records (a newline inside quotes does not end one).
    multiline : str or re.Pattern, optional
        A line matching this starts a record; other lines continue the one before.
    multiline_timeout : float
        A record that has not grown for this long is complete (the last of a quiet file);
        a CSV record whose quote is still open this long after it was first seen spanning
        a newline is cut there (see ``Framer.cut_open_quote``).
    release_after : float
        A renamed or deleted file at its end is closed after this long without growth.
    resume : dict, optional
        From a checkpoint: ``{key: (dev, ino, head, offset, line)}``.
    encoding : str, default "utf-8"
        The files' encoding (any codec Python knows); a file that starts with a UTF-16
        or UTF-32 byte-order mark is read as such. Records are returned as UTF-8, with
        their offsets in the file (see :mod:`zpandas.sources.encoding`).
    errors : {"reject", "replace"}
        A record with bytes that do not decode stays undecodable, for the format to
        reject; or they become U+FFFD.
    max_line_bytes : int
        A record still unterminated after this many bytes is returned cut to
        ``max_line_bytes + 1`` bytes (which a format rejects as too long) and the rest of
        it, up to its newline, is skipped: no record can stall a file.
    """

    def __init__(self, patterns: list[str], *, quoted: bool = False, multiline=None,
                 multiline_timeout: float = 2.0, release_after: float = 2.0,
                 resume: dict | None = None, max_line_bytes: int = 1 << 20,
                 encoding: str = "utf-8", errors: str = "reject") -> None:
        self.patterns = list(patterns)
        self._codec = Transcoder(encoding, errors)
        self.quoted = quoted
        self.multiline = re.compile(multiline) if isinstance(multiline, str) else multiline
        self.multiline_timeout = multiline_timeout
        self.release_after = release_after
        self.max_line_bytes = max_line_bytes
        self._framer = Framer(quoted=quoted, multiline=self.multiline, max_line_bytes=max_line_bytes)
        # A block always holds a whole record of the longest length allowed, and more.
        self._block = max(_READ, max_line_bytes + 2)
        self._resume = dict(resume or {})
        self._cursors: list[_Cursor] = []
        # Incarnations read to their end and released: a rotated file that still matches
        # the globs is recognized and not read again, and resumed where it was if it
        # grows again. (dev, ino) -> (head, offset, key, line); forgotten once no
        # matched path is that file any more.
        self._finished: dict[tuple[int, int], tuple[bytes, int, str, int]] = {}
        #: Keys of the incarnations the globs matched at the last poll (for a
        #: checkpoint: entries of files not seen for long are pruned).
        self.present: set[str] = set()
        # (dev, ino) -> [size, since]: files that so far are the start of a file we read,
        # perhaps a copy still being written (copytruncate of a large file)
        self._maybe_copies: dict[tuple[int, int], list] = {}
        self.lost_truncations = 0
        #: Compressed files the globs matched (logrotate's ``compress``), by (dev, ino):
        #: path. Not followed: see :mod:`zpandas.sources.compressed`.
        self.compressed: dict[tuple[int, int], str] = {}
        self._compressed_seen = 0
        #: Bytes of files that were gone, unread past our offset, when we started again
        #: (rotated away and deleted while stopped, or while too far behind).
        self.lost_bytes = 0
        #: NUL bytes left out of files' text (holes; see :class:`~.records.Holes`).
        self.nul_bytes = 0
        self._looked = False
        #: The last poll read a whole block of some file: more is there to read now.
        self.behind = False
        #: Incarnations seen for the first time (not resumed), as checkpoint entries
        #: ``(key, path, dev, ino, head, offset, line)``, to register before any of
        #: their rows leave: their keys must survive a crash.
        self.discovered: list[tuple] = []

    def identities(self) -> dict[tuple[int, int], str]:
        """Every file incarnation known, by (device, inode): its key (what rows from it
        are sourced by; a history replay of the same file names them alike)."""
        out = {(dev, ino): key for (dev, ino), (_, _, key, _) in self._finished.items()}
        out.update({(c.dev, c.ino): c.key for c in self._cursors if c.ino >= 0})
        return out

    def sizes(self) -> dict[str, int]:
        """The size of every file being read, by key (one fstat each): for a checkpoint."""
        out = {}
        for c in self._cursors:
            if c.f is not None:
                try:
                    out[c.key] = os.fstat(c.f.fileno()).st_size
                except OSError:
                    pass
        return out

    @property
    def open_files(self) -> int:
        return sum(c.f is not None for c in self._cursors)

    def poll(self, *, final: bool = False) -> list[Chunk]:
        """Read what is new. ``final``: treat every file as finished (flush all records)."""
        self._discover()
        if self._resume and not self._looked:
            self._gone_unread()
        self._looked = True
        self.behind = False
        chunks = []
        for c in self._cursors:
            if not c.done:
                chunk = self._read(c, final)
                if chunk is not None:
                    chunks.append(chunk)
        for c in self._cursors:
            if c.done:
                self._finished[(c.dev, c.ino)] = (c.head, c.offset, c.key, c.line)
        self._cursors = [c for c in self._cursors if not c.done]
        return chunks

    @property
    def active(self) -> bool:
        """Files are still being read (in a one-pass read: not every file is finished)."""
        return bool(self._cursors)

    def close(self) -> None:
        for c in self._cursors:
            if c.f is not None:
                c.f.close()
                c.f = None
        self._cursors.clear()

    # -- discovery ------------------------------------------------------------------------

    def _paths(self) -> list[str]:
        out = []
        for p in self.patterns:
            out += glob.glob(p, recursive=True) if glob.has_magic(p) else [p]
        return sorted({os.path.abspath(p) for p in out if os.path.isfile(p)})

    def _discover(self) -> None:
        named = set()
        seen: set[tuple[int, int]] = set()
        for path in self._paths():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            seen.add((st.st_dev, st.st_ino))
            c = self._match(path, st)
            if c is not None:
                named.add(id(c))
        self._finished = {k: v for k, v in self._finished.items() if k in seen}
        self._maybe_copies = {k: v for k, v in self._maybe_copies.items() if k in seen}
        self.compressed = {k: v for k, v in self.compressed.items() if k in seen}
        self.present = {c.key for c in self._cursors} | {v[2] for v in self._finished.values()}
        for c in self._cursors:
            if id(c) not in named and not c.detached:
                c.detached = True
                c.grew = time.monotonic()

    def _match(self, path: str, st: os.stat_result) -> _Cursor | None:
        """The cursor ``path`` belongs to, creating one for a new file (None for a copy)."""
        for c in self._cursors:
            if (c.dev, c.ino) != (st.st_dev, st.st_ino):
                continue
            # Through our open handle (the same inode) when there is one: no open() per poll.
            head = (os.pread(c.f.fileno(), len(c.head), 0) if c.f is not None
                    else first_bytes(path, len(c.head)))
            if st.st_size < c.offset or head != c.head:
                self._truncated(c, path)
                break  # the path now holds a new incarnation
            c.path, c.detached = path, False
            return c
        else:
            if self._is_copy(path, st) or self._copy_in_progress(path, st):
                return None
            done = self._finished.get((st.st_dev, st.st_ino))
            if done is not None and first_bytes(path, len(done[0])) == done[0]:
                if st.st_size <= done[1]:
                    return None  # read to its end before (rotated away, still matched)
                # It grew again (a line written to a rotated copy): on from where it was.
                head, offset, key, line = done
                del self._finished[(st.st_dev, st.st_ino)]
                c = self._cursor(key=key, path=path, dev=st.st_dev, ino=st.st_ino, head=head,
                            offset=offset, line=line, detached=True,
                            tail=_read_at(path, max(0, offset - _TAIL_BYTES), offset))
                self._cursors.append(c)
                return c
        if st.st_size == 0:
            # Nothing to read yet, and nothing to tell a new file from a copy that is
            # about to be written into it: it is looked at again once it has bytes.
            return None
        known = self.compressed.get((st.st_dev, st.st_ino))
        if known is not None and compression_of(first_bytes(path, COMPRESSED_HEAD)) is not None:
            return None   # (still that file: an inode is used again after a delete)
        head = first_bytes(path, HEAD_BYTES)
        kind = compression_of(head[:COMPRESSED_HEAD])
        if kind is not None:
            self.compressed[(st.st_dev, st.st_ino)] = path
            self._compressed_seen += 1
            # said once, then only in the debug log: a glob may match a week of copies
            log.log(logging.WARNING if self._compressed_seen == 1 else logging.DEBUG,
                    "%s: %s-compressed: not read (a rotated copy holds lines already read "
                    "from the file it was; whole CSV files are read through the decompressor "
                    "without --follow)", path, kind)
            return None
        c = self._cursor(key=uuid.uuid4().hex[:16], path=path, dev=st.st_dev, ino=st.st_ino, head=head)
        for key, entry in list(self._resume.items()):
            h, offset, line = entry[2], entry[3], entry[4]
            # By content, not inode: a file renamed or copied (copytruncate) while we were
            # stopped starts with the head we saw and reaches our offset; the truncated
            # original does neither.
            if h and head[:len(h)] == h and st.st_size >= offset:
                c.key, c.offset, c.line, c.head = key, offset, line, max(c.head, h, key=len)
                c.tail = _read_at(path, max(0, offset - _TAIL_BYTES), offset)
                del self._resume[key]
                break
        else:
            self.discovered.append((c.key, c.path, c.dev, c.ino, c.head, 0, 1, st.st_size))
        self._cursors.append(c)
        return c

    def _gone_unread(self) -> None:
        """Checkpoint entries of files this producer follows that are nowhere now, though
        they held bytes past where we were: those bytes are lost. Said once, counted."""
        for key, entry in self._resume.items():
            offset, size, path = entry[3], entry[5] if len(entry) > 5 else None, \
                entry[6] if len(entry) > 6 else None
            if size is None or path is None or size <= offset or not any(
                    fnmatch.fnmatch(path, os.path.abspath(p)) for p in self.patterns):
                continue
            self.lost_bytes += size - offset
            log.warning("%s was gone when following started again: the %d bytes it held past "
                        "offset %d are lost (rotated away and deleted while this producer was "
                        "stopped or too far behind: keep more rotated copies, or the producer "
                        "up)", path, size - offset, offset)

    def _cursor(self, **fields) -> _Cursor:
        c = _Cursor(**fields)
        c.codec, c.bom = self._codec.for_file(c.head)
        c.head = _written(c, c.head)
        return c

    def _is_copy(self, path: str, st: os.stat_result) -> bool:
        """A rotated copy of a file we follow: its original has the data.

        The copy starts with the original's head (the first 1 KiB, or all of a shorter
        file) and holds the same bytes just before the original's offset.
        """
        return any(self._same_content(path, st.st_size, c) for c in self._cursors)

    def _copy_in_progress(self, path: str, st: os.stat_result) -> bool:
        """A file that so far is exactly the start of one we read, and still growing.

        A copy being written looks like that until it reaches our offset (then
        :meth:`_is_copy` knows it); a new file diverges, or stops growing: it waits at most
        ``release_after`` seconds without growth.
        """
        ident = (st.st_dev, st.st_ino)
        for c in self._cursors:
            if not 0 < st.st_size < c.offset:
                continue
            n = min(len(c.head), st.st_size)
            if n and first_bytes(path, n) == c.head[:n]:
                now = time.monotonic()
                seen = self._maybe_copies.setdefault(ident, [st.st_size, now])
                if st.st_size != seen[0]:
                    seen[:] = [st.st_size, now]
                if now - seen[1] < self.release_after:
                    return True
        self._maybe_copies.pop(ident, None)
        return False

    @staticmethod
    def _same_content(path: str, size: int, c: _Cursor) -> bool:
        """``path`` holds what ``c`` read (or, before it read anything, the start of its
        file): the same head, and the same bytes just before ``c``'s offset (or before
        ``path``'s end). Files whose content is the same as far as we read cannot be told
        from a copy; as with any content fingerprint, they count as one."""
        if c.offset > 0:
            return (size >= c.offset and first_bytes(path, len(c.head)) == c.head
                    and _read_at(path, c.offset - len(c.tail), c.offset) == c.tail)
        # Not read yet (found in the same look as ``path``, perhaps in the middle of a
        # copytruncate): ``path`` is a copy when it is named as a rotated copy of c's file
        # and holds the start of it, else the copy of an unread file is read as a file of
        # its own and its lines come twice. (Not the other way round: any file starts
        # with a few bytes of another.)
        if not _rotated_name(path, c.path):
            return False   # other files with the same start (two equal exports) are each read
        try:
            theirs = os.path.getsize(c.path)
        except OSError:
            return False
        n = min(len(c.head), size)
        return (0 < size <= theirs and first_bytes(path, n) == c.head[:n]
                and first_bytes(c.path, len(c.head)) == c.head
                and _read_at(path, size - _TAIL_BYTES, size) == _read_at(c.path, size - _TAIL_BYTES, size))

    def _truncated(self, c: _Cursor, path: str) -> None:
        """``c``'s file was truncated in place (copytruncate): finish it from its copy."""
        copy = None
        if c.offset == 0:
            # Nothing read from it: nothing to finish. Its copy, if any, is read as a
            # file of its own, and what the path holds now as a new one.
            c.done, c.ino = True, -1
            if c.f is not None:
                c.f.close()
                c.f = None
            return
        for p in self._paths():
            if p == c.path:
                continue
            try:
                size = os.path.getsize(p)
            except OSError:
                continue
            if self._same_content(p, size, c):
                copy = p
                break
        if c.f is not None:
            c.f.close()
            c.f = None
        if copy is not None:
            st = os.stat(copy)
            c.path, c.dev, c.ino, c.detached = copy, st.st_dev, st.st_ino, True
            c.grew = time.monotonic()
        else:
            log.warning("%s was truncated and no copy of it was found: what was written after "
                        "offset %d and not read yet is lost (follow a glob that matches rotated "
                        "copies, e.g. 'app.log*')", c.path, c.offset)
            self.lost_truncations += 1
            c.done = True
            c.ino = -1  # not the file now at the path, which is a new incarnation

    # -- reading --------------------------------------------------------------------------

    def _read(self, c: _Cursor, final: bool) -> Chunk | None:
        if c.f is None:
            try:
                c.f = open(c.path, "rb")  # noqa: SIM115 - kept open across polls
            except FileNotFoundError:
                c.done = True
                return None
            st = os.fstat(c.f.fileno())
            if (st.st_dev, st.st_ino) != (c.dev, c.ino):
                c.f.close()
                c.f = None
                return None  # replaced between discovery and open: next poll
        if c.offset < c.bom:
            c.offset = c.bom   # a byte-order mark: not part of the first record
        c.f.seek(c.offset)
        raw = c.f.read(self._block)
        now = time.monotonic()
        if raw:
            c.grew = now
            if len(c.head) < HEAD_BYTES:
                # The head grows with the file (a file first seen mid-line included), as
                # long as the file still starts with it.
                head = _written(c, os.pread(c.f.fileno(), HEAD_BYTES, 0))
                if head.startswith(c.head):
                    c.head = head
        eof = len(raw) < self._block
        self.behind |= not eof
        text, holes = _text(c, raw)
        # Formats parse UTF-8: another encoding is decoded here, a block at a time.
        block = None if c.codec.utf8 else c.codec.decode(text, final=final and eof)
        data = text if block is None else block.data

        def in_file(positions):
            """Positions in ``data`` -> positions in ``raw``."""
            positions = positions if block is None else block.to_source(positions)
            return positions if holes is None else holes.to_source(positions)

        if c.skipping or (not eof and self._framer.no_record_end(data)):
            records, used = self._framer.skip_long(c, data)
        else:
            records, used = self._framer.records(c, data, final=final and eof)
        if self.quoted and eof and not c.skipping and not final:
            at = c.offset + int(in_file(used))
            cut, n = self._framer.cut_open_quote(c, data[used:], at, now, self.multiline_timeout)
            if n:
                records = concat_records(records, Records(cut.data, cut.bounds, cut.lines,
                                                          cut.offsets + used))
                used += n
        # Offsets in the block -> offsets in the file
        offsets = records.offsets
        if block is not None or holes is not None:
            offsets, used = in_file(offsets), int(in_file(used))
        if holes is not None:
            if eof:   # NULs the file ends with stay unread: a file preallocated with them
                used = min(used, len(raw.rstrip(b"\0")))   # is written over later
            self.nul_bytes += _left_out(c, raw.count(b"\0", 0, used), c.offset + used)
        records = Records(records.data, records.bounds, records.lines, offsets + c.offset,
                          c.codec.name)
        if used:
            c.tail = (c.tail + raw[:used])[-_TAIL_BYTES:]
            c.offset += used
        quiet = now - c.grew
        at_end = eof and not raw[used:].strip(b"\0")   # (NULs it ends with: see above)
        finished = at_end and (final or (quiet >= self.release_after and
                                         (c.detached or os.fstat(c.f.fileno()).st_nlink == 0)))
        end, line = c.offset, c.line
        if self.multiline is not None:
            records = self._framer.group(c, records, flush=finished or quiet >= self.multiline_timeout)
            if c.pending is not None:
                end, line = int(c.pending.offsets[0]), int(c.pending.lines[0])
        size = c.offset + len(raw) - used   # what the file held as far as this read saw
        if finished:
            c.f.close()
            c.f = None
            c.done = True
        if not len(records):
            return None
        return Chunk(c.key, c.path, records, int(records.offsets[0]), end, line, c.head, c.dev, c.ino,
                     size)


def _left_out(c: _Cursor, nuls: int, end: int) -> int:
    """NUL bytes left out of a file's text (bytes ``[c.offset, end)`` held them): said
    once a file, and returned."""
    if nuls and not c.nuls:
        log.warning("%s: %d NUL bytes in bytes %d-%d are not text and were left out (a hole: "
                    "a writer that kept its offset after copytruncate, or a crash); counted in "
                    "publish_files(...)['nul_bytes']", c.path, nuls, c.offset, end)
    c.nuls += nuls
    return nuls


def _text(c: _Cursor, raw: bytes) -> tuple[bytes, Holes | None]:
    """A block of ``c``'s file as text: lone CRs ending its lines as LFs (one byte for
    one: offsets stay the file's), NUL bytes left out (a hole's; ``Holes`` maps back)."""
    if c.lone_cr is None:
        c.lone_cr = _ends_lines_with_cr(c)
    text = raw.translate(CR_AS_LF) if c.lone_cr else raw
    if b"\0" not in text or not c.codec.ascii_compatible:   # (UTF-16/32: bytes of characters)
        return text, None
    holes = Holes(text)
    return holes.text, holes


def _written(c: _Cursor, head: bytes) -> bytes:
    """What of a file's ``head`` tells it from others: without the NULs it ends with - a
    preallocated file (a memory-mapped logger's) is written over them, and that is no
    truncation. (UTF-16/32: NULs are bytes of characters; kept.)"""
    return head.rstrip(b"\0") if c.codec.ascii_compatible else head


def _ends_lines_with_cr(c: _Cursor) -> bool | None:
    """Whether a file's lines end with a lone CR, told by the first line break of its
    head; None until the head has one (a full head without one: no)."""
    if not c.codec.ascii_compatible:
        return False   # decoded before it is cut: its newlines are not single bytes
    found = lone_cr(c.head)
    return False if found is None and len(c.head) >= HEAD_BYTES else found


def _rotated_name(path: str, original: str) -> bool:
    """``path`` is named as a rotated copy of ``original``: ``app.log.1``, ``app.log-2026``,
    ``app.log_old`` in the same folder (``app.log.10`` is not one of ``app.log.1``)."""
    head, name = os.path.split(path)
    base_head, base = os.path.split(original)
    return head == base_head and len(name) > len(base) and name.startswith(base) \
        and name[len(base)] in ".-_"


def _read_at(path: str, start: int, end: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, start))
            return f.read(max(0, end - max(0, start)))
    except OSError:
        return b""
