"""Pre-encoded wire messages in a file, replayed: how the consumer benchmarks feed a
Subscriber with no producer work in the measured process.

    python bench/_replay.py ADDRESS[,ADDRESS...] PATH

connects an XPUB to each ADDRESS, waits for a subscription to the topic of PATH's first
message, prints ``ready``, and on a line from stdin sends every message of PATH as fast as
ZeroMQ takes them.
"""

from __future__ import annotations

import sys


def write_blob(path: str, messages) -> None:
    """Messages of three frames each, every frame preceded by the three frame sizes."""
    with open(path, "wb") as f:
        for m in messages:
            f.write(b"".join(len(x).to_bytes(8, "little") for x in m))
            f.write(b"".join(m))


def read_blob(path: str) -> list[list[bytes]]:
    with open(path, "rb") as f:
        blob = f.read()
    out, pos = [], 0
    while pos < len(blob):
        sizes = [int.from_bytes(blob[pos + 8 * i:pos + 8 * i + 8], "little") for i in range(3)]
        pos += 24
        parts = []
        for n in sizes:
            parts.append(blob[pos:pos + n])
            pos += n
        out.append(parts)
    return out


def main(address: str, path: str) -> None:
    import zmq
    messages = read_blob(path)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = 0
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    for a in address.split(","):
        pub.connect(a)
    topic = messages[0][0]
    while True:   # a subscription that takes this topic (b"\x01" + prefix)
        sub = pub.recv()
        if sub[:1] == b"\x01" and topic.startswith(sub[1:]):
            break
    print("ready", flush=True)
    sys.stdin.readline()
    for m in messages:
        pub.send_multipart(m, copy=len(m[2]) < 65536)
    pub.close(linger=-1)
    ctx.term()


if __name__ == "__main__":
    main(*sys.argv[1:])
