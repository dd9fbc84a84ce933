"""Files in other encodings than UTF-8, decoded a block at a time at vector speed.

Formats parse UTF-8. A block of a latin-1, cp1252, UTF-16... file is decoded in one C
pass, encoded again as UTF-8, and where each character starts - in the file and in the
UTF-8 text - is kept as two numpy arrays, so records keep their byte offsets *in the
file* (checkpoints and the ``_offset`` of rows stay file offsets) while formats see UTF-8.

Bytes that do not decode make their record a reject (``errors="reject"``, the default:
they are carried into the UTF-8 text as bytes that are not UTF-8, which the formats
refuse record by record) or become U+FFFD (``errors="replace"``).

A file that starts with a UTF-16 or UTF-32 byte-order mark is read as such whatever the
encoding asked for; a UTF-8 one is skipped.
"""

from __future__ import annotations

import codecs
import re

import numpy as np

__all__ = ["Transcoder", "Transcoded", "ERRORS"]

ERRORS = ("reject", "replace")

_BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
         (codecs.BOM_UTF8, "utf-8")]
_WIDE = {"utf-16-le": 2, "utf-16-be": 2, "utf-32-le": 4, "utf-32-be": 4}
_LONE = re.compile("[\ud800-\udfff]")


class Transcoded:
    """A block decoded to UTF-8 (``data``), and a way back to positions in the bytes read.

    The map is computed when first asked for, from ``data`` alone: the characters before
    a UTF-8 position are its bytes less the continuation bytes among them, and each
    character took a known number of bytes in the file (1 in latin-1; 2, or 4 for one
    above U+FFFF, in UTF-16; 4 in UTF-32). Bytes that did not decode are one character
    each (a lone surrogate, 3 bytes in ``data``), as they took one byte (or code unit).
    """

    def __init__(self, data: bytes, width: int, per_char: np.ndarray | None = None,
                 chars: int = -1) -> None:
        self.data = data
        self._ascii = chars == len(data)
        self._width = width          # source bytes per character, 0: per_char says
        self._per_char = per_char    # source bytes of each character (multi-byte codecs)
        self._chars: np.ndarray | None = None

    def to_source(self, positions):
        """Positions in ``data`` (at characters' starts) -> positions in the bytes read."""
        positions = np.asarray(positions, np.int64)
        if self._ascii and self._per_char is None:   # one byte a character in the text
            return self._width * positions
        if self._chars is None:
            arr = np.frombuffer(self.data, np.uint8)
            # [chars before each position, astral characters before it]
            self._chars = np.zeros((2, len(arr) + 1), np.int32)   # blocks are < 2 GiB
            np.cumsum((arr & 0xC0) != 0x80, out=self._chars[0, 1:])
            if self._width == 2:
                np.cumsum(arr >= 0xF0, out=self._chars[1, 1:])
            if self._per_char is not None:
                self._per_char = np.concatenate([[0], np.cumsum(self._per_char)])
        chars = self._chars[0][positions].astype(np.int64)
        if self._per_char is not None:
            return self._per_char[chars]
        astral = self._chars[1][positions].astype(np.int64) if self._width == 2 else 0
        return self._width * chars + 2 * astral


class Transcoder:
    """Decodes blocks of files in ``encoding`` to UTF-8.

    Parameters
    ----------
    encoding : str
        Any codec Python knows (``"latin-1"``, ``"cp1252"``, ``"utf-16"``, ``"shift_jis"``).
        ``"utf-16"`` and ``"utf-32"`` without a byte-order mark are little-endian.
    errors : {"reject", "replace"}
        What a byte that does not decode does to its record.
    """

    def __init__(self, encoding: str = "utf-8", errors: str = "reject") -> None:
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, not {errors!r}")
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}") from None
        self.name = {"utf-16": "utf-16-le", "utf-32": "utf-32-le", "utf-8-sig": "utf-8"}.get(name, name)
        self.errors = errors
        self._width = _WIDE.get(self.name)
        self._single = self._width is None and _single_byte(self.name)
        # Undecodable bytes become lone surrogates, one per byte (surrogateescape), or
        # per code unit in UTF-16/32 (surrogatepass): what each takes in the file is known.
        self._handler = "surrogatepass" if self._width else "surrogateescape"

    @property
    def ascii_compatible(self) -> bool:
        """Newlines, quotes and delimiters are their ASCII bytes and no byte of another
        character is one: blocks can be cut at newline bytes before decoding."""
        return not self._width and "\n\r\",;\t|".encode(self.name) == b"\n\r\",;\t|"

    @property
    def utf8(self) -> bool:
        """Blocks are UTF-8 already: nothing to do."""
        return self.name == "utf-8"

    def for_file(self, head: bytes) -> tuple[Transcoder, int]:
        """The transcoder for a file starting with ``head``, and the length of its
        byte-order mark (to skip): a BOM names the encoding."""
        for bom, name in _BOMS:
            if head.startswith(bom):
                return (self if name == self.name else Transcoder(name, self.errors)), len(bom)
        return self, 0

    def decode(self, raw: bytes, *, final: bool) -> Transcoded:
        """``raw`` (starting at a character boundary) as UTF-8. A character cut by the
        end of ``raw`` is left out, unless ``final``."""
        text = codecs.getincrementaldecoder(self.name)(self._handler).decode(raw, final)
        per_char = None
        if not self._width and not self._single:   # shift_jis, gbk...: character by character
            per_char = np.fromiter((1 if 0xDC80 <= ord(c) <= 0xDCFF else len(c.encode(self.name))
                                    for c in text), np.int64, len(text))
        if self.errors == "replace":
            text = _LONE.sub("\ufffd", text)   # 3 bytes in UTF-8, as a lone surrogate
        return Transcoded(text.encode("utf-8", "surrogatepass"), self._width or (1 if self._single else 0),
                          per_char, len(text))


def _single_byte(name: str) -> bool:
    """Every byte is one character (or undecodable): latin-1, cp1252, koi8-r..."""
    try:
        decoded = bytes(range(256)).decode(name, "surrogateescape")
    except (UnicodeDecodeError, LookupError):
        return False
    return len(decoded) == 256
