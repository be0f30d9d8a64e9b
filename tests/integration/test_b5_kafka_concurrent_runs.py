"""docs/reliability.md B5 with a real Kafka broker: one ``kafka`` pipeline (append) and one ``debezium`` pipeline
reading a Kafka topic (merge), each run by 2 and 4 processes at once while messages keep arriving: every
message lands exactly once (each key at its newest version); the losers wait or refuse with exit 75."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from stack import Kafka
from tests.reliability.test_b5_concurrent_runs import Source, _event, counts, race, table_rows

pytestmark = pytest.mark.kafka


def _produce(kafka: Kafka, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5, "enable.idempotence": True})
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def _project(root: Path, source: dict[str, object], target: dict[str, object]) -> None:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: b5-kafka\n")
    (root / "pipelines" / "p.yaml").write_text(yaml.safe_dump({"name": "p", "source": source, "target": target, "batch_size": 500}))


def kafka_append(root: Path, rng: random.Random, kafka: Kafka, topic: str) -> tuple[Source, Callable[[Source], None]]:
    _project(
        root,
        {"type": "kafka", "bootstrap_servers": kafka.bootstrap_servers, "topic": topic, "max_wait_seconds": 2},
        {"table": "raw.t", "mode": "append"},
    )
    src = Source(root, rng)

    def add(s: Source, n: int) -> None:
        messages = []
        for _ in range(n):
            key, s.next_id = s.next_id, s.next_id + 1
            s.rows[key] = f"k{s.rng.randrange(10**9)}"
            messages.append((str(key).encode(), json.dumps({"id": key, "v": s.rows[key]}).encode()))
        _produce(kafka, topic, messages)

    add(src, 6000)
    return src, lambda s: add(s, 800)


def debezium_kafka_merge(root: Path, rng: random.Random, kafka: Kafka, topic: str) -> tuple[Source, Callable[[Source], None]]:
    _project(
        root,
        {"type": "debezium", "bootstrap_servers": kafka.bootstrap_servers, "topic": topic, "max_wait_seconds": 2},
        {"table": "raw.t", "keys": ["id"]},
    )
    src = Source(root, rng)

    def add(s: Source, n: int) -> None:
        messages = []
        for _ in range(n):
            s.lsn += 1
            if s.rows and s.rng.random() < 0.1:
                key = s.rng.choice(list(s.rows))
                del s.rows[key]
                messages.append((json.dumps({"id": key}).encode(), _event("d", key, None, s.lsn).encode()))
                continue
            if s.rows and s.rng.random() < 0.3:
                key, op = s.rng.choice(list(s.rows)), "u"
            else:
                key, s.next_id, op = s.next_id, s.next_id + 1, "c"
            s.rows[key] = f"d{s.rng.randrange(10**9)}"
            # Keyed by the row's key, as Debezium does: one key's changes stay in order in one partition.
            messages.append((json.dumps({"id": key}).encode(), _event(op, key, s.rows[key], s.lsn).encode()))
        _produce(kafka, topic, messages)

    add(src, 5000)
    return src, lambda s: add(s, 800)


SCENARIOS = {"kafka-append": kafka_append, "debezium-kafka-merge": debezium_kafka_merge}


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("n", "wait"), [(2, True), (4, False)], ids=["2-waiting", "4-refusing"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_b5_one_kafka_pipeline_run_by_several_processes_lands_every_message_once(
    tmp_path: Path, kafka_server: Kafka, kafka_topic: Callable[..., str], scenario: str, n: int, wait: bool
) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} scenario={scenario} processes={n} wait={wait}")
    root = tmp_path / "proj"
    src, grow = SCENARIOS[scenario](root, random.Random(seed), kafka_server, kafka_topic(partitions=4))
    results = race(root, src, grow, n, wait)
    for code, out, err in results:
        assert "Traceback" not in err, err
        assert code in ((0,) if wait else (0, 75)), (code, out, err)
        if code == 75:
            assert "is being written by run" in out, out
    got = table_rows(root)
    c = counts(got, src.rows)
    print(f"rows={len(got)} lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert c == (0, 0, 0, 0)
