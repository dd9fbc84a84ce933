"""Files in other encodings: decoded a block at a time, offsets kept in the file's bytes."""

from __future__ import annotations

import codecs

import numpy as np
import pytest

import zpandas as zp
from zpandas.sources.encoding import Transcoder
from zpandas.sources.follow import Follower

from .conftest import wait_for
from .test_follow import Publishing

LOCAL = "@tcp://127.0.0.1:*"

TEXT = {"latin-1": ["Zürich", "São Paulo", "Øslo", "naïve café"],
        "cp1252": ["Zürich", "São Paulo", "Øslo €5", "“quoted”"],
        "utf-16-le": ["Zürich", "Kraków", "東京 🚀", "Øslo €"],
        "utf-16-be": ["Zürich", "Kraków", "東京 🚀", "Øslo €"],
        "utf-32-le": ["Zürich", "Kraków", "東京 🚀", "Øslo €"],
        "shift_jis": ["東京", "大阪", "京都", "札幌"],
        "gbk": ["北京", "上海", "广州", "深圳"]}
BOM = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
       "utf-32-le": codecs.BOM_UTF32_LE}


def write(path, encoding: str, lines: list[str]) -> list[int]:
    """Write ``lines`` (CRLF-free) in ``encoding`` with its BOM if it has one; return
    each line's byte offset in the file."""
    data, offsets = bytearray(BOM.get(encoding, b"")), []
    for line in lines:
        offsets.append(len(data))
        data += (line + "\n").encode(encoding)
    path.write_bytes(bytes(data))
    return offsets


def rows(cities: list[str]) -> list[str]:
    return ["city,n"] + [f'"{c}",{i}' for i, c in enumerate(cities)]


@pytest.mark.parametrize("encoding", sorted(TEXT))
@pytest.mark.parametrize("mode", ["whole csv", "csv record by record", "jsonl"])
def test_every_encoding_reads_the_same_rows_with_offsets_in_the_file(tmp_path, encoding, mode):
    cities = TEXT[encoding]
    path = tmp_path / "f.txt"
    if mode == "jsonl":
        offsets = write(path, encoding, [f'{{"city": "{c}", "n": {i}}}' for i, c in enumerate(cities)])
    else:
        offsets = write(path, encoding, rows(cities))[1:]
    # the BOM names UTF-16/32 whatever is asked; other files need their encoding given
    asked = "utf-8" if encoding in BOM else encoding
    extra = {"checkpoint": tmp_path / "ck.db"} if mode == "csv record by record" else {}
    with zp.Subscriber(LOCAL) as sub:
        zp.publish_files(str(path), sub.endpoints, format="jsonl" if mode == "jsonl" else "csv",
                         encoding=asked, wait_for_subscribers=1, **extra)
        df = sub.collect(timeout=30)
        assert len(sub.rejects()) == 0
    assert df["city"].tolist() == cities and df["n"].tolist() == list(range(len(cities)))
    assert df["_offset"].tolist() == offsets


def test_undecodable_bytes_make_a_reject_or_a_replacement_character(tmp_path):
    path = tmp_path / "f.csv"
    # 0x81 is not a cp1252 character
    path.write_bytes(b"city,n\nZ\xfcrich,1\nbad \x81 byte,2\nS\xe3o Paulo,3\n")
    for errors, expected in (("reject", ["Zürich", "São Paulo"]),
                             ("replace", ["Zürich", "bad \ufffd byte", "São Paulo"])):
        for extra in ({}, {"checkpoint": tmp_path / f"ck-{errors}.db"}):
            with zp.Subscriber(LOCAL) as sub:
                zp.publish_files(str(path), sub.endpoints, encoding="cp1252", errors=errors,
                                 wait_for_subscribers=1, **extra)
                assert sub.collect(timeout=30)["city"].tolist() == expected
                rejects = sub.rejects()
            if errors == "reject":
                (r,) = rejects.itertuples()
                assert (r.line, r.reason) == (3, "bytes that are not cp1252")
                assert r.offset == path.read_bytes().index(b"bad")
            else:
                assert len(rejects) == 0


def test_a_followed_utf16_file_written_in_pieces_that_cut_characters(tmp_path):
    """A writer flushing at any byte (half a UTF-16 code unit, half a surrogate pair):
    every line once, at its offset; a Follower resumed from a checkpoint's offsets goes
    on where the first one stopped."""
    path = tmp_path / "app.log"
    lines = [f'{{"i": {i}, "text": "Kraków 東京 🚀 {i}"}}' for i in range(200)]
    data = codecs.BOM_UTF16_LE + "".join(x + "\n" for x in lines).encode("utf-16-le")
    starts = np.cumsum([len(codecs.BOM_UTF16_LE)] + [len((x + "\n").encode("utf-16-le")) for x in lines])
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), 60, replace=False))
    got: list = []
    f = Follower([str(path)], encoding="utf-8")   # the BOM says UTF-16
    with open(path, "wb", buffering=0) as out:
        prev = 0
        for k, cut in enumerate(cuts):
            out.write(data[prev:cut])
            prev = cut
            for ch in f.poll():
                got += [(r.raw.decode(), r.offset) for r in ch.records]
            if k == 30:   # a restart: a new Follower resumed from the first one's cursor
                (c,) = f._cursors
                resume = {c.key: (c.dev, c.ino, c.head, c.offset, c.line)}
                f.close()
                f = Follower([str(path)], resume=resume)
        out.write(data[prev:])
    for ch in f.poll(final=True):
        got += [(r.raw.decode(), r.offset) for r in ch.records]
    f.close()
    assert got == list(zip(lines, starts[:-1].tolist()))


def test_a_followed_latin1_log_arrives_as_it_grows(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes("Jun 14 15:16:01 combo café[1]: démarré\n".encode("latin-1"))
    with zp.Subscriber(LOCAL) as sub:
        pub = Publishing([str(path)], sub.endpoints, format="syslog", follow=True,
                         encoding="latin-1", wait_for_subscribers=1)
        try:
            wait_for(lambda: sub.stats()["rows"] >= 1, timeout=20, what="the first line")
            with open(path, "ab") as f:
                f.write("Jun 14 15:16:02 combo café[1]: arrêté\n".encode("latin-1"))
            wait_for(lambda: sub.stats()["rows"] >= 2, timeout=20, what="the second line")
        finally:
            pub.finish()
        df = sub.frame()
    assert df["app"].tolist() == ["café", "café"] and df["message"].tolist() == ["démarré", "arrêté"]
    assert df["_offset"].tolist() == [0, 39]


def test_bad_encoding_options_are_clear():
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        Transcoder("klingon")
    with pytest.raises(ValueError, match="errors must be one of"):
        Transcoder("latin-1", errors="ignore")
    assert Transcoder("UTF-16").name == "utf-16-le" and Transcoder("cp1252").ascii_compatible
    assert not Transcoder("utf-16").ascii_compatible
