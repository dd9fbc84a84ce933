"""CURVE (ironhouse) and message size limits: nobody unauthorized gets in or out."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zmq

import zpandas as zp
from zpandas import wire

from .conftest import ROOT, wait_for
from .test_cli import free_port

LOCAL = "@tcp://127.0.0.1:*"


@pytest.fixture
def keys(tmp_path):
    """Key pairs made by ``zpandas keygen``; ``allowed/`` holds the good clients' public keys."""
    folder = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "zpandas", "keygen", str(folder), "--name", "server",
                    "--name", "good", "--name", "intruder"], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(folder / "good.key", allowed / "good.key")
    return folder, allowed


def test_keygen_writes_public_and_owner_only_secret_files(keys):
    folder, _ = keys
    assert sorted(os.listdir(folder)) == sorted(f"{n}.key{s}" for n in ("server", "good", "intruder")
                                                for s in ("", "_secret"))
    for name in ("server", "good", "intruder"):
        assert stat.S_IMODE(os.stat(folder / f"{name}.key_secret").st_mode) == 0o600


def curve(folder, name, **kw) -> zp.Curve:
    return zp.Curve(folder / f"{name}.key_secret", **kw)


def table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"i": np.arange(start, start + n)})


def test_authorized_peers_exchange_rows_and_an_unknown_producer_injects_nothing(keys, caplog):
    folder, allowed = keys
    caplog.set_level(logging.INFO, logger="zpandas")
    with zp.Subscriber(LOCAL, curve=curve(folder, "server", allowed=allowed)) as sub:
        address = ">" + sub.endpoints[0]
        with zp.Producer(address, curve=curve(folder, "intruder", server_key=folder / "server.key"),
                         heartbeat=0.05) as intruder:
            intruder.send(table(5, 1000))
            intruder.flush()
            wait_for(lambda: sub.stats()["auth_failures"] >= 1, what="the intruder refused")
            with zp.Producer(address, curve=curve(folder, "good", server_key=folder / "server.key"),
                             wait_for_subscribers=1, wait_timeout=10) as good:
                good.send(table(10))
            df = sub.collect(producers=1, timeout=10)
            assert intruder.stats()["auth_failures"] >= 1  # the client sees its refusal too
        stats = sub.stats()
    assert df["i"].tolist() == list(range(10))  # not one row of the intruder's
    assert stats["producers"]["rows"].sum() == 10
    assert any("authentication" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_subscriber_with_an_unknown_key_or_no_curve_receives_nothing(keys):
    folder, allowed = keys
    with zp.Producer("@tcp://127.0.0.1:*", curve=curve(folder, "server", allowed=allowed),
                     heartbeat=0.05) as producer:
        address = ">" + producer.endpoints[0]
        ctx = zmq.Context()
        plain = ctx.socket(zmq.SUB)  # a plaintext peer at a CURVE endpoint
        plain.subscribe(b"")
        plain.connect(producer.endpoints[0])
        try:
            with zp.Subscriber(address, curve=curve(folder, "intruder", server_key=folder / "server.key")) as bad, \
                 zp.Subscriber(address, curve=curve(folder, "good", server_key=folder / "server.key")) as good:
                producer.wait_for_subscribers(1, timeout=10)
                wait_for(lambda: producer.stats()["auth_failures"] >= 2, what="two refusals")
                producer.send(table(10))
                producer.flush()
                wait_for(lambda: good.stats()["rows"] == 10, what="the good subscriber's rows")
                # a heartbeat later, the traffic has passed them by: nothing for these two
                seen = good.stats()["producers"]["last_seen"].max()
                wait_for(lambda: good.stats()["producers"]["last_seen"].max() > seen, what="a heartbeat")
                assert bad.stats()["rows"] == 0 and bad.stats()["messages"] == 0
                assert not plain.poll(0)
                assert producer.stats()["subscriptions"] == 1  # only the good one's
        finally:
            plain.close(linger=0)
            ctx.term()


def test_curve_configuration_errors_are_clear(keys):
    folder, allowed = keys
    with pytest.raises(ValueError, match="needs allowed="):
        zp.Subscriber(LOCAL, curve=curve(folder, "server"))
    with pytest.raises(ValueError, match="needs server_key="):
        zp.Producer(">tcp://127.0.0.1:5", curve=curve(folder, "good"))
    with pytest.raises(ValueError, match="public certificate"):
        zp.Subscriber(LOCAL, curve=zp.Curve(folder / "server.key", allowed=allowed))
    with pytest.raises(ValueError, match="not both"):
        zp.Subscriber([LOCAL, ">tcp://127.0.0.1:5"], curve=curve(folder, "server", allowed=allowed))


@pytest.mark.skipif(not zmq.has("pgm"), reason="this pyzmq's libzmq has no pgm: run `make multicast`")
def test_curve_on_multicast_warns_that_libzmq_ignores_it(keys):
    folder, allowed = keys
    with pytest.warns(zp.SecurityWarning, match="does not apply CURVE to multicast"):
        try:
            zp.Subscriber("epgm://127.0.0.1;239.192.1.1:5555", curve=curve(folder, "server", allowed=allowed)).close()
        except zp.EndpointError:
            pass  # loopback may not take multicast; the warning came first


def test_proxy_with_curve_admits_only_known_producers_and_subscribers(keys):
    folder, allowed = keys
    server = curve(folder, "server", allowed=allowed)
    client = curve(folder, "good", server_key=folder / "server.key")
    with zp.Proxy(LOCAL, LOCAL, curve=server) as proxy:
        with zp.Subscriber(">" + proxy.backend[0], curve=client) as sub:
            with zp.Producer(">" + proxy.frontend[0], curve=client, wait_for_subscribers=1,
                             wait_timeout=10) as p:
                p.send(table(7))
                # the proxy sees its peers too (its own socket monitor)
                wait_for(lambda: proxy.stats()["frontend"]["peers"] == 1, what="the producer at the proxy")
                assert proxy.stats()["backend"]["peers"] == 1
            assert len(sub.collect(producers=1, timeout=10)) == 7
            wait_for(lambda: proxy.stats()["frontend"]["peers"] == 0, what="the producer gone")
        with zp.Subscriber(">" + proxy.backend[0], curve=curve(folder, "intruder", server_key=folder / "server.key")) as bad:
            wait_for(lambda: bad.stats()["auth_failures"] >= 1, what="the intruder refused by the proxy")
            # ... and the refusal is counted where it happened
            wait_for(lambda: proxy.stats()["backend"]["auth_failures"] >= 1, what="the refusal at the proxy")
        assert proxy.stats()["frontend"]["auth_failures"] == 0


def test_max_message_bytes_is_enforced_by_libzmq_per_frame_and_by_us_per_message(caplog):
    caplog.set_level(logging.INFO, logger="zpandas")
    with zp.Subscriber(LOCAL, max_message_bytes=100_000) as sub:
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        try:
            pub.connect(sub.endpoints[0])
            good = wire.encode(table(3), topic=b"t", header=wire.Header(producer=b"p" * 16))
            wait_for(lambda: (pub.send_multipart(good), sub.stats()["rows"])[1] > 0, what="a first row")
            # one 1 MB frame: libzmq drops the connection before it is buffered
            pub.send_multipart([b"t", good[1], b"\0" * 1_000_000])
            wait_for(lambda: any("disconnected" in r.getMessage() for r in caplog.records),
                     what="the connection dropped")
            # frames each under the limit, the message over it: counted as oversize (sent
            # until the reconnected PUB delivers it)
            over = [b"t" * 20_000, good[1], b"\0" * 90_000]
            wait_for(lambda: (pub.send_multipart(over), sub.stats()["bad_frames"].get("oversize", 0))[1] >= 1,
                     what="oversize counted")
            assert sub.stats()["rows"] == 3 * sub.stats()["messages"]  # only good messages became rows
        finally:
            pub.close()
            ctx.term()


def test_the_cli_speaks_curve_too(keys, procs, tmp_path):
    folder, allowed = keys
    port = free_port()
    out = tmp_path / "rows"
    sub = procs.start("subscribe", "-e", f"@tcp://127.0.0.1:{port}", "--producers", "1",
                      "--parquet", str(out), "--certificate", str(folder / "server.key_secret"),
                      "--allowed", str(allowed))
    assert sub.stdout.readline().startswith("listening on")
    data = os.path.join(ROOT, "data", "node1", "metrics-1.csv")
    procs.start("publish", data, "-e", f">tcp://127.0.0.1:{port}", "-q",
                "--certificate", str(folder / "good.key_secret"), "--server-key", str(folder / "server.key"))
    assert [code for code, _ in procs.wait_all(timeout=60)] == [0, 0]
    assert len(pd.read_parquet(out)) == 5000


def test_with_curve_only_admitted_keys_can_ask_for_the_past(keys, tmp_path):
    """The README's promise: with CURVE only admitted keys connect, so only they can ask
    for history (or views); a peer with another key hears nothing, not even a refusal."""
    from .test_history import T0, Publishing, write_log
    folder, allowed = keys
    write_log(tmp_path / "app.log", 0, 100)
    port = free_port()
    pub = Publishing(str(tmp_path / "app.log"), f"@tcp://127.0.0.1:{port}",
                     curve=curve(folder, "server", allowed=allowed), wait_for_subscribers=1)
    try:
        address = f">tcp://127.0.0.1:{port}"
        with zp.Subscriber(address, topics="m", curve=curve(folder, "good", server_key=folder / "server.key")) as good, \
             zp.Subscriber(address, topics="m", curve=curve(folder, "intruder", server_key=folder / "server.key")) as bad:
            wait_for(lambda: good.stats()["rows"] == 100, timeout=60, what="the live stream")
            assert len(good.history(since=T0, timeout=60, progress=False)) == 100
            assert good.stats()["history"]["status"].tolist() == ["done"]
            assert bad.history(since=T0, timeout=3, progress=False).empty
            assert bad.stats()["history"].empty and bad.stats()["rows"] == 0
    finally:
        pub.close()
