"""Incremental aggregation: equal to pandas' groupby, windows that close, late rows kept."""

from __future__ import annotations

import threading

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import zpandas as zp

from .conftest import Streamers, wait_for

STATS = ["count", "size", "sum", "mean", "min", "max", "first", "last"]


def frame(n: int, seed: int = 0, start="2026-11-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "timestamp": pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 3600, n)), unit="s"),
        "host": rng.choice(["a", "b", "c"], n),
        "metric": rng.choice(["cpu", "mem"], n),
        "value": rng.normal(size=n),
    })
    df.loc[::7, "value"] = np.nan  # nulls: count != size, first/last skip them
    return df


def check_equal(result: pd.DataFrame, expected: pd.DataFrame, stats=STATS, col="value") -> None:
    assert len(result) == len(expected)
    for s in stats:
        np.testing.assert_allclose(result[f"{col}_{s}"].astype(float).to_numpy(),
                                   expected[s].astype(float).to_numpy(), rtol=1e-9, err_msg=s)


def test_over_1m_rows_from_several_producers_equals_pandas(streamers):
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        plain = sub.aggregate(by="producer", values={"value": STATS, "id": ["min", "max"]})
        windowed = sub.aggregate(by="producer", values={"value": ["count", "sum", "mean", "max"]},
                                 window="10s", every="5s", on="ts", lateness="1h")
        ps = [streamers.start(">" + sub.endpoints[0], "--rows", "20000", "--sends", "20",
                              "--name", f"p{i}", "--wait-for", "1") for i in range(3)]
        for p in ps:
            assert Streamers.result(p)["rows"] == 400_000
        df = sub.collect(producers=3, timeout=60)
    assert len(df) == 1_200_000
    got = plain.result()
    want = df.groupby("producer")["value"].agg(STATS).reset_index()
    assert got["producer"].tolist() == want["producer"].tolist()
    check_equal(got, want)
    assert (got["id_max"] == 399_999).all()

    # hopping windows: every row in the two 10 s windows that contain it
    hops = pd.concat([df.assign(window_start=df["ts"].dt.floor("5s") - pd.Timedelta(seconds=5 * k))
                      for k in range(2)])
    want = (hops.groupby(["window_start", "producer"])["value"].agg(["count", "sum", "mean", "max"])
            .reset_index())
    got = windowed.result()
    assert got[["window_start", "producer"]].values.tolist() == want[["window_start", "producer"]].values.tolist()
    check_equal(got, want, ["count", "sum", "mean", "max"])
    assert windowed.stats()["late_rows"] == 0


def test_tumbling_windows_equal_pandas_and_close_behind_the_watermark():
    df = frame(100_000)
    # idle=0: no wall-clock patience, a window is final once the watermark passes it
    agg = zp.Aggregation(by=["host", "metric"], values={"value": STATS}, window="5min", idle=0)
    for i in range(0, len(df), 7_000):
        agg.update(df.iloc[i:i + 7_000])
    want = (df.groupby([pd.Grouper(key="timestamp", freq="5min"), "host", "metric"])["value"]
            .agg(STATS).reset_index())
    got = agg.result()
    assert (got["window_start"].to_numpy() == want["timestamp"].to_numpy()).all()
    check_equal(got, want)
    # 12 windows: the watermark passed the first 11 (the 12th may close too, by the wall
    # clock: with idle=0 the stream is quiet at once)
    assert got.groupby("window_start")["final"].first().tolist()[:11] == [True] * 11
    assert agg.stats()["windows_closed"] >= 11
    assert (got["window_end"] - got["window_start"] == pd.Timedelta("5min")).all()


def test_an_idle_streams_last_window_closes_by_the_wall_clock():
    agg = zp.Aggregation(by="host", values={"value": "sum"}, window="1s", idle=0.2)
    now = pd.Timestamp.now(tz="UTC")
    agg.update(pd.DataFrame({"timestamp": [now, now], "host": ["a", "b"], "value": [1.0, 2.0]}))
    assert agg.stats()["windows_open"] == 1
    wait_for(lambda: agg.stats()["windows_open"] == 0, timeout=10, what="the idle window to close")
    got = agg.result()
    assert got["final"].all() and got["value_sum"].tolist() == [1.0, 2.0]


def test_rows_given_as_final_close_every_window_at_once():
    # Data that ended a month ago, given whole: its windows are final now, not after the
    # watermark (a month behind the wall clock) catches up.
    t = pd.Timestamp("2026-11-01T10:00:00Z") + pd.to_timedelta(np.arange(600), unit="s")
    df = pd.DataFrame({"timestamp": t, "host": np.where(np.arange(600) % 2, "a", "b"), "value": 1.0})
    agg = zp.Aggregation(by="host", values={"value": "sum"}, window="1min")
    agg.update(df.iloc[:300])
    assert not agg.result()["final"].any()          # more may come: idle is 5 s
    agg.update(df.iloc[300:], final=True)
    got = agg.result()
    assert got["final"].all() and len(got) == 20 and got["value_sum"].sum() == 600
    assert agg.stats()["windows_open"] == 0
    # a row for a final window, given later, is late: counted and kept aside
    agg.update(df.iloc[:1])
    assert agg.stats()["late_rows"] == 1 and agg.result()["value_sum"].sum() == 600
    # without windows there is nothing to close
    plain = zp.Aggregation(by="host", values={"value": "sum"})
    plain.update(df, final=True)
    assert plain.result()["value_sum"].tolist() == [300.0, 300.0]


def test_late_rows_are_kept_aside_and_counted_never_merged():
    agg = zp.Aggregation(by="host", values={"value": ["sum", "count"]}, window="1min", lateness="30s",
                         idle=0)
    t = pd.Timestamp("2026-11-01T10:00:00Z")
    agg.update(pd.DataFrame({"timestamp": [t, t + pd.Timedelta("3min")], "host": "a", "value": [1.0, 2.0]}))
    # 10:00 closed (watermark 10:02:30); 10:02:10 is within lateness: it still counts
    late = pd.DataFrame({"timestamp": [t + pd.Timedelta("10s"), t + pd.Timedelta("130s")],
                         "host": "a", "value": [100.0, 5.0]})
    agg.update(late)
    got = agg.result()
    assert agg.stats()["late_rows"] == 1
    assert agg.late()["value"].tolist() == [100.0]
    assert got.set_index("window_start")["value_sum"].to_dict() == {
        t: 1.0, t + pd.Timedelta("2min"): 5.0, t + pd.Timedelta("3min"): 2.0}


def test_a_bad_batch_is_rejected_with_its_reason_and_the_aggregation_goes_on():
    agg = zp.Aggregation(by="host", values={"value": "sum"})
    agg.update(pd.DataFrame({"host": ["a"], "value": [1.0]}))
    agg.update(pd.DataFrame({"hostname": ["a"], "value": [1.0]}))      # no 'host'
    agg.update(pd.DataFrame({"host": ["a"], "value": [2.0]}))
    stats = agg.stats()
    assert stats["rejected_batches"] == 1 and "host" in stats["errors"][0]
    with pytest.warns(zp.ColumnWarning, match="'hostname'"):
        assert agg.result()["value_sum"].tolist() == [3.0]


def test_memory_follows_groups_times_windows_not_rows():
    agg = zp.Aggregation(by="host", values={"value": ["mean", "max"]}, window="1h", lateness="2h")
    for seed in range(5):
        agg.update(frame(50_000, seed))  # 250k rows, the same hour, 3 hosts
    assert len(agg._state) == 3 and agg.stats()["rows"] == 250_000


def test_bad_parameters_are_clear():
    with pytest.raises(ValueError, match="unknown reduction"):
        zp.Aggregation(values={"v": "median"})
    with pytest.raises(ValueError, match="divide"):
        zp.Aggregation(values={"v": "sum"}, window="10s", every="3s")
    with pytest.raises(ValueError, match="at least one"):
        zp.Aggregation(values={})


def test_a_subscribers_aggregation_folds_on_its_own_thread_and_never_holds_up_receiving(monkeypatch):
    """The socket thread only hands tables over: with folding stuck, every row still
    arrives; once it goes on, the result equals pandas over all of them."""
    threads, go = set(), threading.Event()
    fold = zp.Aggregation._fold

    def slow_fold(self, *args):
        threads.add(threading.current_thread().name)
        go.wait(30)
        fold(self, *args)

    monkeypatch.setattr(zp.Aggregation, "_fold", slow_fold)
    df = frame(20_000, seed=3)
    with zp.Subscriber("@tcp://127.0.0.1:*") as sub:
        with zp.Producer(sub.endpoints, wait_for_subscribers=1) as p:
            p.send(df.iloc[:1000])
            wait_for(lambda: sub.stats()["rows"] == 1000, what="the first rows")
            agg = sub.aggregate(by="host", values={"value": ["count", "sum", "max"]})  # returns at once
            wait_for(lambda: threads, what="the fold to start")
            for i in range(1000, 20_000, 1000):
                p.send(df.iloc[i:i + 1000])
                p.flush()
            wait_for(lambda: sub.stats()["rows"] == 20_000, what="every row, the fold stuck")
            go.set()
        result = agg.result()
    expected = df.groupby("host")["value"].agg(["count", "sum", "max"]).reset_index()
    check_equal(result, expected, ["count", "sum", "max"])
    assert threads and all(t.startswith("zpandas-aggregate-") or t == "MainThread" for t in threads), threads
    assert not any(t.name.startswith("zpandas-aggregate-") for t in threading.enumerate())


def test_rows_a_drop_subscriber_could_not_hand_over_in_time_are_counted():
    """Past the backlog's bound, policy="drop" leaves a table out of the aggregation and
    counts its rows in stats()["dropped_rows"]; the socket thread does not wait."""
    agg = zp.Aggregation(by="host", values={"value": "sum"})
    df = frame(1000, seed=5)
    table = pa.Table.from_pandas(df, preserve_index=False)
    with agg._lock:  # a fold in progress: nothing is taken from the backlog
        agg._start_feed([], table.nbytes, {}, set())
        agg._feed(b"p", table, block=False)
        agg._feed(b"p", table, block=False)     # over the bound: left out, at once
    agg._stop_feed(10)
    stats = agg.stats()
    assert (stats["rows"], stats["dropped_rows"]) == (1000, 1000)
    expected = df.groupby("host")["value"].agg(["sum"]).reset_index()
    check_equal(agg.result(), expected, ["sum"])


def test_where_aggregates_only_the_rows_it_matches():
    df = frame(20_000, seed=4)
    want = (df[df["metric"] == "cpu"].groupby([pd.Grouper(key="timestamp", freq="10min"), "host"])["value"]
            .agg(["count", "mean"]).reset_index())
    by_query = zp.Aggregation(by="host", values={"value": ["count", "mean"]}, window="10min",
                              where="metric == 'cpu'")
    by_function = zp.Aggregation(by="host", values={"value": ["count", "mean"]}, window="10min",
                                 where=lambda d: d["metric"] == "cpu")
    for i in range(0, len(df), 3000):
        by_query.update(df.iloc[i:i + 3000])
        by_function.update(df.iloc[i:i + 3000])
    for agg in (by_query, by_function):
        check_equal(agg.result(), want, ["count", "mean"])
        assert agg.stats()["rows"] == (df["metric"] == "cpu").sum()
    bad = zp.Aggregation(by="host", values={"value": "sum"}, where="no_such_column > 1")
    bad.update(df)
    assert bad.stats()["rejected_batches"] == 1 and "no_such_column" in bad.stats()["errors"][0]
    with pytest.raises(TypeError, match="where"):
        zp.Aggregation(values={"value": "sum"}, where=3)


@pytest.mark.parametrize("window", [None, "5min"])
def test_partial_results_of_disjoint_parts_combine_to_pandas_over_all_rows(window):
    """What zpandas.dask does with one aggregation per worker: merged exactly."""
    from zpandas.aggregate import combine
    df = frame(30_000, seed=9)
    parts = [df.iloc[:7000], df.iloc[7000:19000], df.iloc[19000:]]     # the workers' rows, in order
    spec = dict(by=["host", "metric"], values={"value": STATS}, window=window, idle=0)
    aggs = [zp.Aggregation(**spec) for _ in parts]
    for agg, part in zip(aggs, parts):
        for i in range(0, len(part), 2500):
            agg.update(part.iloc[i:i + 2500])
    got = combine(zp.Aggregation(**spec), [a._partials() for a in aggs])
    keys = ([pd.Grouper(key="timestamp", freq=window)] if window else []) + ["host", "metric"]
    want = df.groupby(keys)["value"].agg(STATS).reset_index()
    check_equal(got, want)
    if window:
        assert got["final"].any()
    assert combine(zp.Aggregation(**spec), [(None, None, 0)]).empty


def test_a_typo_in_a_column_name_is_said_once_with_the_columns_there_are():
    """by="hots" gave an empty result and no word; now the first result() after such
    rows warns, naming the columns the rows have (and the log said it at once)."""
    agg = zp.Aggregation(by="hots", values={"value": "mean"})
    agg.update(pd.DataFrame({"host": ["a", "b"], "value": [1.0, 2.0]}))
    with pytest.warns(zp.ColumnWarning, match=r"no column\(s\) \['hots'\].*'host', 'value'"):
        assert agg.result().empty
    agg.update(pd.DataFrame({"host": ["a"], "value": [3.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # said once, not at every result()
        agg.result()
    assert agg.stats()["rejected_batches"] == 2


def test_a_producer_waiting_for_another_topic_says_what_the_subscribers_asked_for():
    with zp.Subscriber("@tcp://127.0.0.1:*", topics="metrics") as sub:
        with zp.Producer(">" + sub.endpoints[0], topic="xmetrics") as p:
            with pytest.raises(TimeoutError, match=r"0 of 1 subscribers to topic 'xmetrics'.*"
                                                   r"asked for 'metrics'"):
                p.wait_for_subscribers(1, timeout=2)


def test_late_rows_kept_are_bounded_and_all_are_counted(monkeypatch):
    from zpandas import aggregate
    monkeypatch.setattr(aggregate, "_LATE_KEPT", 10)
    agg = zp.Aggregation(by="host", values={"value": "sum"}, window="1min", idle=0)
    t = pd.Timestamp("2026-11-01T10:00:00Z")
    agg.update(pd.DataFrame({"timestamp": [t, t + pd.Timedelta("10min")], "host": "a", "value": 1.0}))
    for _ in range(20):   # 20 batches of 4 rows, all for the closed 10:00 window
        agg.update(pd.DataFrame({"timestamp": [t] * 4, "host": "a", "value": 1.0}))
    assert agg.stats()["late_rows"] == 80
    assert 10 - 4 < len(agg.late()) <= 10     # the last ones, whole batches, within the bound
