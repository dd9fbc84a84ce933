"""A Follower against a logrotate-like writer, polled at random points: every line once.

The writer appends lines (written in pieces that cut lines anywhere), and rotates as
logrotate does with ``rotate 3``: the oldest copy is deleted, the others shift
(``.1`` -> ``.2`` ...), then the file is renamed to ``.1`` (``create``) or copied to ``.1``
and truncated in place (``copytruncate``). The follower is polled at random moments:
between any two of those steps, and sometimes not at all for a whole rotation - so it
may first see a file and its copy together, neither read yet. The only rule the writer
keeps is the one every log shipper needs: a copy is not deleted before the follower
had a look after it was made (a poll at least every ``keep - 1`` rotations).
"""

from __future__ import annotations

import collections
import os
import random
import shutil

import pytest

from zpandas.sources.follow import Follower

KEEP = 3


def line(i: int) -> bytes:
    return b'{"i": %d, "text": "payload payload payload payload"}\n' % i


def run(tmp_path, seed: int, steps: int = 300) -> tuple[int, collections.Counter, int]:
    rnd = random.Random(seed)
    d = tmp_path / f"s{seed}"
    d.mkdir()
    path = str(d / "app.log")
    f = open(path, "ab", buffering=0)  # noqa: SIM115
    follower = Follower([path + "*"], release_after=0.0)
    got: collections.Counter = collections.Counter()
    state = {"i": 0, "unseen_rotations": 0}
    pending = bytearray()

    def poll(**kw) -> None:
        state["unseen_rotations"] = 0
        for ch in follower.poll(**kw):
            for r in ch.records:
                got[r.raw] += 1

    def maybe_poll(p: float) -> None:
        if rnd.random() < p:
            poll()

    def rotate() -> None:
        nonlocal f
        f.write(bytes(pending))
        pending.clear()
        if state["unseen_rotations"] >= KEEP - 1:
            poll()   # else the copy made KEEP - 1 rotations ago is deleted unseen
        state["unseen_rotations"] += 1
        if os.path.exists(f"{path}.{KEEP}"):
            os.unlink(f"{path}.{KEEP}")
        for k in range(KEEP - 1, 0, -1):
            if os.path.exists(f"{path}.{k}"):
                os.rename(f"{path}.{k}", f"{path}.{k + 1}")
                maybe_poll(0.2)
        if rnd.random() < 0.5:
            f.close()
            os.rename(path, path + ".1")
            maybe_poll(0.5)
            f = open(path, "ab", buffering=0)  # noqa: SIM115
        else:
            shutil.copyfile(path, path + ".1")
            maybe_poll(0.5)
            os.truncate(path, 0)

    try:
        for _ in range(steps):
            op = rnd.random()
            if op < 0.6:
                n = rnd.choice([1, 1, 2, 5, 20])
                pending += b"".join(line(state["i"] + k) for k in range(n))
                state["i"] += n
                cut = rnd.randint(0, len(pending))   # a write may end mid-line
                f.write(bytes(pending[:cut]))
                del pending[:cut]
            elif op < 0.85:
                poll()
            else:
                rotate()
        f.write(bytes(pending))
    finally:
        f.close()
    poll()
    poll(final=True)
    follower.close()
    return state["i"], got, follower.lost_truncations


@pytest.mark.parametrize("seeds", [range(0, 60), range(60, 120)])
def test_every_line_once_whatever_the_moments_the_follower_looks(tmp_path, seeds):
    for seed in seeds:
        n, got, lost = run(tmp_path, seed)
        repeated = sorted(int(raw[6:raw.index(b",")]) for raw, k in got.items() if k > 1)
        missing = [i for i in range(n) if got[line(i)[:-1]] == 0]
        assert (repeated, missing, lost) == ([], [], 0), f"seed {seed}"
        assert sum(got.values()) == n
