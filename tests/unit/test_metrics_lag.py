"""Lag metrics (issue 19, item 1): the source-lag event of each batch becomes the Kafka consumer lag per
partition and the CDC lag in seconds; a Debezium run measures its CDC lag from the newest change it landed.
The Kafka side against a real broker: tests/integration/test_kafka_lag.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.unit.test_debezium_source import PIPE, event, write

from icefield.observe.events import BatchCommitted, Event, SourceLag
from icefield.observe.metrics import MetricsObserver, samples

LAG = "icefield_kafka_consumer_lag_messages"
CDC = "icefield_cdc_lag_seconds"


def _lag(**values: Any) -> SourceLag:
    return SourceLag(run_id="r1", pipeline="orders", table="raw.orders", batch_id="b1", **values)


def _series(obs: MetricsObserver, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in samples(obs.registry, name)}


def test_the_latest_lag_of_each_partition_is_its_gauge() -> None:
    obs = MetricsObserver()
    obs(_lag(messages={"orders": {0: 120, 1: 0}, "refunds": {0: 7}}))
    assert _series(obs, LAG) == {
        (("partition", "0"), ("pipeline", "orders"), ("topic", "orders")): 120,
        (("partition", "1"), ("pipeline", "orders"), ("topic", "orders")): 0,
        (("partition", "0"), ("pipeline", "orders"), ("topic", "refunds")): 7,
    }
    # The next batch caught up on partition 0 and fell behind on 1: a gauge, not a sum.
    obs(_lag(messages={"orders": {0: 0, 1: 35}, "refunds": {0: 7}}))
    lag = {(lb["topic"], lb["partition"]): v for lb, v in samples(obs.registry, LAG)}
    assert lag == {("orders", "0"): 0, ("orders", "1"): 35, ("refunds", "0"): 7}
    assert not list(samples(obs.registry, CDC)), "no change time: no CDC lag series"


def test_the_cdc_lag_is_the_commit_time_minus_the_newest_change_and_never_negative() -> None:
    obs = MetricsObserver()
    committed = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)
    obs(_lag(change_time=committed - timedelta(seconds=42.5), at=committed))
    assert _series(obs, CDC) == {(("pipeline", "orders"),): 42.5}
    # The source database's clock ahead of this host's: no lag rather than a negative one.
    obs(_lag(change_time=committed + timedelta(seconds=3), at=committed))
    assert _series(obs, CDC) == {(("pipeline", "orders"),): 0.0}
    assert not list(samples(obs.registry, LAG)), "no Kafka partitions: no consumer lag series"


def _at(line: str, ts_ms: int) -> str:
    """``line`` (a Debezium event) made in the source database at ``ts_ms``."""
    doc = json.loads(line)
    doc["source"]["ts_ms"] = ts_ms
    return json.dumps(doc)


def test_a_debezium_run_reports_its_cdc_lag_from_the_newest_change_it_landed(lake: Any) -> None:
    lk = lake({"users": {**PIPE, "batch_size": 3}})
    base = 1_790_000_000_000
    stamps = [base + 5_000, base + 9_000, base + 1_000, base + 20_000, base + 15_000]  # out of order, as sources are
    write(lk.root, "0001.jsonl", [_at(event("c", {"id": i, "name": f"u{i}"}, 200 + i, 100 + i), ts) for i, ts in enumerate(stamps)])
    seen: list[Event] = []
    obs = MetricsObserver()
    res = lk.run("users", observers=[obs, seen.append])
    assert res.status == "success" and len(res.batches) == 2

    lags = [e for e in seen if isinstance(e, SourceLag)]
    committed = [e for e in seen if isinstance(e, BatchCommitted)]
    assert [e.batch_id for e in lags] == [e.batch_id for e in committed], "one lag event after each batch's commit"
    newest = [datetime.fromtimestamp(max(stamps[:3]) / 1000, UTC), datetime.fromtimestamp(max(stamps[3:]) / 1000, UTC)]
    assert [e.change_time for e in lags] == newest
    assert all(e.messages == {} for e in lags), "files have no partitions to lag on"
    assert seen.index(lags[0]) > seen.index(committed[0])
    # The gauge holds the latest batch's lag, measured when its event was emitted (after the commit).
    assert _series(obs, CDC) == {(("pipeline", "users"),): (lags[-1].at - newest[-1]).total_seconds()}
    # Its freshness: the newest change landed (the cursor of a CDC source is a log position, not a time).
    fresh = {dict(labels)["table"]: v for labels, v in samples(obs.registry, "icefield_newest_cursor_timestamp_seconds")}
    assert fresh == {lags[-1].table: max(stamps) / 1000}

    # A batch of tombstones only lands no change (and files have no partitions): no lag event, the gauge
    # keeps the last lag measured.
    write(lk.root, "0002.jsonl", ["null"])
    seen.clear()
    assert lk.run("users", observers=[obs, seen.append]).rows_filtered == 1
    assert [e for e in seen if isinstance(e, BatchCommitted)] and not [e for e in seen if isinstance(e, SourceLag)]
    assert _series(obs, CDC) == {(("pipeline", "users"),): (lags[-1].at - newest[-1]).total_seconds()}


def test_a_source_without_lag_emits_no_lag_event(lake: Any) -> None:
    lk = lake({"orders": {"source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl"}, "target": {"table": "raw.orders"}}})
    (lk.root / "data").mkdir()
    (lk.root / "data" / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    seen: list[Event] = []
    obs = MetricsObserver()
    assert lk.run("orders", observers=[obs, seen.append]).rows_committed == 2
    assert not [e for e in seen if isinstance(e, SourceLag)]
    assert not list(samples(obs.registry, LAG)) and not list(samples(obs.registry, CDC))
