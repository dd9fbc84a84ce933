"""Compressed files, such as the rotated copies logrotate's ``compress`` leaves
(``app.log.2.gz``): told by their first bytes, never by their names.

A followed glob such as ``app.log*`` matches them too. They are not followed: a copy
compressed by a rotation holds lines already read from the file it was (and a file that
changes while it is compressed has no place to resume from). Whole files are read
through the decompressor (``_offset`` then counts bytes of the decompressed text), and
history replays read them from their start, since they cannot be searched by offset.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re

import pyarrow as pa

__all__ = ["compression_of", "open_decompressed", "HEAD"]

#: Bytes enough to tell every format below.
HEAD = 10

_MAGIC = [
    (re.compile(rb"\x1f\x8b\x08"), "gzip"),
    (re.compile(rb"BZh[1-9]\x31\x41\x59\x26\x53\x59"), "bzip2"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd"),
    (re.compile(rb"\x04\x22\x4d\x18"), "lz4"),
]


def compression_of(head: bytes) -> str | None:
    """The compression a file starting with ``head`` (its first :data:`HEAD` bytes) is in,
    or None for anything else (text, in any encoding)."""
    for magic, name in _MAGIC:
        if magic.match(head):
            return name
    return None


def open_decompressed(path: str, kind: str):
    """A binary file object of ``path``'s decompressed bytes (``read``, ``readinto``)."""
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "bzip2":
        return bz2.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    # zstd and lz4 frames: Arrow's codecs (no extra package)
    return pa.CompressedInputStream(pa.OSFile(path), "zstd" if kind == "zstd" else "lz4")
