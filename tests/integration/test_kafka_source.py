"""The ``kafka`` source against a real broker: exactly once into Iceberg, reruns, poison, and docs/reliability.md
C6 (a kill between the Iceberg commit and the consumer-offset commit, both orders)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import Kafka

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.iceberg.history import read_position
from icefield.pipeline.runner import run_pipeline

pytestmark = pytest.mark.kafka

TABLE = "raw.events"


def make_project(root: Path, kafka: Kafka, topic: str, batch_size: int = 250, **source: Any) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: kafka-test\n")
    pipeline = {
        "name": "events",
        "source": {"type": "kafka", "bootstrap_servers": kafka.bootstrap_servers, "topic": topic, **source},
        "target": {"table": TABLE},
        "batch_size": batch_size,
    }
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipeline))
    return root


def produce(kafka: Kafka, topic: str, values: list[bytes | None], keys: list[bytes] | None = None) -> list[tuple[int, int]]:
    """Produce ``values`` (keyed, so they spread over the partitions); return each one's (partition, offset)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5, "enable.idempotence": True})
    where: list[tuple[int, int] | None] = [None] * len(values)

    def delivered(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())

        return cb

    for i, value in enumerate(values):
        key = keys[i] if keys else str(i).encode()
        producer.produce(topic, value=value, key=key, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert all(w is not None for w in where)
    return [w for w in where if w is not None]


def events(start: int, n: int) -> list[bytes | None]:
    return [json.dumps({"id": i, "user": f"u{i % 17}", "amount": round(i * 0.25, 2), "ok": i % 3 == 0}).encode() for i in range(start, start + n)]


def high_watermarks(kafka: Kafka, topic: str) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "icefield-test-probe"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {str(p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in sorted(parts)}
    finally:
        consumer.close()


def group_offsets(kafka: Kafka, topic: str, group: str = "icefield.events") -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in sorted(parts)], timeout=10)
        return {str(tp.partition): tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


def set_group_offsets(kafka: Kafka, topic: str, offsets: dict[str, int], group: str = "icefield.events") -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, int(p), o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def table_rows(root: Path, table: str = TABLE) -> list[dict[str, Any]]:
    catalog = open_catalog(load_project(root))
    try:
        rows: list[dict[str, Any]] = catalog.load_table(table).scan().to_arrow().to_pylist()
        return rows
    finally:
        catalog.engine.dispose()


def load_table(root: Path, table: str = TABLE) -> Any:
    catalog = open_catalog(load_project(root))
    try:
        return catalog.load_table(table)
    finally:
        catalog.engine.dispose()


def oracle_counts(rows: list[dict[str, Any]], expected: dict[int, dict[str, Any]]) -> dict[str, int]:
    """lost / duplicated / unexpected / divergent of the table's rows against the produced messages."""
    seen = Counter(r["id"] for r in rows)
    divergent = sum(1 for r in rows if r["id"] in expected and {k: r[k] for k in expected[r["id"]]} != expected[r["id"]])
    return {
        "lost": sum(1 for i in expected if i not in seen),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "unexpected": sum(1 for i in seen if i not in expected),
        "divergent": divergent,
    }


def expected_of(values: list[bytes | None]) -> dict[int, dict[str, Any]]:
    out = {}
    for v in values:
        assert v is not None
        rec = json.loads(v)
        out[rec["id"]] = rec
    return out


# ------------------------------------------------------------------------------------ exactly once


def test_every_message_lands_once_and_reruns_add_only_new_ones(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any) -> None:
    topic = kafka_topic(partitions=4)
    first = events(0, 1800)
    produce(kafka_server, topic, first)
    root = make_project(tmp_path / "proj", kafka_server, topic, batch_size=250, metadata_columns=True)
    project = load_project(root)

    res = run_pipeline(project, "events")
    assert res.status == "success" and res.conserved
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (1800, 1800, 0)
    assert len(res.batches) >= 1800 // 250
    rows = table_rows(root)
    assert oracle_counts(rows, expected_of(first)) == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}
    # Each (partition, offset) once, and every partition was read.
    coords = Counter((r["_kafka_partition"], r["_kafka_offset"]) for r in rows)
    assert max(coords.values()) == 1 and {p for p, _ in coords} == {0, 1, 2, 3}
    table = load_table(root)
    ends = high_watermarks(kafka_server, topic)
    assert read_position(table, "events") == {"topics": {topic: ends}}
    assert group_offsets(kafka_server, topic) == ends, "consumer-group offsets follow the table after each commit"
    snapshots = len(table.metadata.snapshots)

    # Nothing new: no batch, no snapshot, the table untouched.
    res = run_pipeline(project, "events")
    assert res.batches == [] and res.rows_in == 0
    after = load_table(root)
    assert len(after.metadata.snapshots) == snapshots and after.metadata_location == table.metadata_location

    # More messages: only they land.
    second = events(1800, 700)
    produce(kafka_server, topic, second)
    res = run_pipeline(project, "events")
    assert (res.rows_in, res.rows_committed) == (700, 700)
    rows = table_rows(root)
    assert oracle_counts(rows, expected_of(first + second)) == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}
    assert read_position(load_table(root), "events") == {"topics": {topic: high_watermarks(kafka_server, topic)}}


def test_poison_messages_go_to_the_quarantine_with_their_coordinates(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any) -> None:
    topic = kafka_topic(partitions=2)
    poison: list[bytes | None] = [b'{"id": 100, "user": ', b"\xff\xfe\xfd", b"[1, 2, 3]", None, b'{"id": "12abc"}']
    good = events(0, 40)
    values = good[:20] + poison + good[20:]
    where = produce(kafka_server, topic, values)
    root = make_project(tmp_path / "proj", kafka_server, topic, batch_size=1000)

    res = run_pipeline(load_project(root), "events")
    assert res.conserved
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (45, 40, 5)
    assert oracle_counts(table_rows(root), expected_of(good)) == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}

    quarantine = {r["source"]: r for r in table_rows(root, TABLE + "__quarantine")}
    expected_coords = [f"{topic}/{p}/{o}" for p, o in where[20:25]]
    assert sorted(quarantine) == sorted(expected_coords)
    by_value = {expected_coords[i]: poison[i] for i in range(5)}
    assert quarantine[expected_coords[0]]["reason"].startswith("decode: not valid JSON")
    assert quarantine[expected_coords[0]]["raw"] == '{"id": 100, "user": '
    assert quarantine[expected_coords[1]]["reason"] == "decode: invalid UTF-8 at byte 0"
    assert quarantine[expected_coords[2]]["reason"] == "decode: a JSON object is expected, got list"
    assert quarantine[expected_coords[3]]["reason"].startswith("decode: the message has no value")
    assert "12abc" in quarantine[expected_coords[4]]["reason"] and quarantine[expected_coords[4]]["check"] == "type"
    assert all(r["batch_id"] for r in quarantine.values()) and len(by_value) == 5


def test_the_table_position_wins_over_consumer_group_offsets(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any) -> None:
    """Group offsets are a hint for partitions the table does not know; they never skip or repeat data."""
    topic = kafka_topic(partitions=3)
    first = events(0, 300)
    produce(kafka_server, topic, first)
    root = make_project(tmp_path / "proj", kafka_server, topic, batch_size=100)
    project = load_project(root)
    # A first run before the table exists starts from the group's committed offsets when there are some.
    ends = high_watermarks(kafka_server, topic)
    set_group_offsets(kafka_server, topic, {p: 0 for p in ends})
    run_pipeline(project, "events")
    # Group offsets moved behind the table (another tool reset them): the table's position wins.
    set_group_offsets(kafka_server, topic, {p: 0 for p in ends})
    second = events(300, 150)
    produce(kafka_server, topic, second)
    res = run_pipeline(project, "events")
    assert res.rows_in == 150
    # ...and ahead of it: nothing is skipped either.
    third = events(450, 150)
    produce(kafka_server, topic, third)
    set_group_offsets(kafka_server, topic, high_watermarks(kafka_server, topic))
    res = run_pipeline(project, "events")
    assert res.rows_in == 150
    counts = oracle_counts(table_rows(root), expected_of(first + second + third))
    assert counts == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}


def test_follow_keeps_consuming_until_stopped(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any) -> None:
    """With follow, a batch closes after max_wait_seconds (the commit interval) and the run waits for
    more; messages produced after the run began land too."""
    import threading

    from icefield.ingest import kafka as kafka_source

    topic = kafka_topic(partitions=2)
    produce(kafka_server, topic, events(0, 50))
    root = make_project(tmp_path / "proj", kafka_server, topic, batch_size=10_000, max_wait_seconds=0.5)
    opened: list[Any] = []
    real_init = kafka_source.KafkaSource.__init__

    def spy(self: Any, *args: Any) -> None:
        real_init(self, *args)
        opened.append(self)

    seen: list[int] = []

    def on_batch(b: Any) -> None:
        seen.append(b.rows_committed)
        if sum(seen) == 50:
            produce(kafka_server, topic, events(50, 30))
        elif sum(seen) >= 80:
            opened[0].stop()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kafka_source.KafkaSource, "__init__", spy)
        done = threading.Event()
        result: list[Any] = []
        worker = threading.Thread(target=lambda: (result.append(run_pipeline(load_project(root), "events", on_batch=on_batch, follow=True)), done.set()))
        worker.start()
        worker.join(timeout=120)
        if worker.is_alive():
            opened[0].stop()
            worker.join(timeout=30)
    assert done.is_set(), "the follow run did not stop when asked"
    assert result[0].rows_committed == 80 and len(result[0].batches) >= 2
    assert oracle_counts(table_rows(root), expected_of(events(0, 80))) == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}


# ------------------------------------------------------------------------------------ C6


def _cli_run(root: Path, failpoint: str | None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    if failpoint:
        env["ICEFIELD_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "icefield.testing.failpoints", "--project", str(root), "run"],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "order",
    [
        "iceberg-committed-offsets-not",  # killed after the Iceberg commit, before the offset commit
        "both-committed",  # killed after the offset commit, before the next batch
        "offsets-ahead-of-iceberg",  # the group's offsets were committed past the table (the other order)
    ],
)
def test_c6_kill_between_iceberg_commit_and_offset_commit(tmp_path: Path, kafka_server: Kafka, kafka_topic: Any, order: str) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    n = rng.randrange(1200, 2000)
    batch = rng.randrange(120, 220)
    kill_at = rng.randrange(2, 5)
    print(f"seed={seed} order={order} messages={n} batch_size={batch} kill_at_batch={kill_at}")
    topic = kafka_topic(partitions=4)
    values = events(0, n)
    produce(kafka_server, topic, values)
    root = make_project(tmp_path / "proj", kafka_server, topic, batch_size=batch)

    failpoint = {
        "iceberg-committed-offsets-not": f"after-commit@{kill_at}",
        "both-committed": f"after-acknowledge@{kill_at}",
        "offsets-ahead-of-iceberg": f"before-commit@{kill_at}",
    }[order]
    killed = _cli_run(root, failpoint)
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]

    table = load_table(root)
    position = read_position(table, "events")
    assert position is not None
    committed_batches = len(table.metadata.snapshots)
    group = group_offsets(kafka_server, topic)
    if order == "iceberg-committed-offsets-not":
        assert committed_batches == kill_at
        assert group != position["topics"][topic], "the kill fell between the two commits: the group lags the table"
    elif order == "both-committed":
        assert committed_batches == kill_at
        assert group == position["topics"][topic]
    else:
        assert committed_batches == kill_at - 1
        set_group_offsets(kafka_server, topic, high_watermarks(kafka_server, topic))

    more = events(n, 100)
    produce(kafka_server, topic, more)
    rerun = _cli_run(root, None)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]

    counts = oracle_counts(table_rows(root), expected_of(values + more))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    assert counts == {"lost": 0, "duplicated": 0, "unexpected": 0, "divergent": 0}
    final = load_table(root)
    batch_ids = [s.summary["icefield.batch-id"] for s in final.metadata.snapshots if s.summary]
    assert len(batch_ids) == len(set(batch_ids)), "a batch was committed twice"
    assert read_position(final, "events") == {"topics": {topic: high_watermarks(kafka_server, topic)}}
    assert group_offsets(kafka_server, topic) == high_watermarks(kafka_server, topic)
