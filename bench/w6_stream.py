"""W6 stream: N JSON messages in 4 Kafka partitions appended to an Iceberg table by the ``kafka`` source.

Peers on the same topic of the same broker (the stack's Kafka 4 on 127.0.0.1), each in its own process:
- consume-only: a confluent-kafka loop that assigns the 4 partitions, reads every message to the end
  and touches its value; nothing else. This is the limit: no decoding, no writing. It uses the same
  client settings as icefield's reader (``icefield.ingest.kafka.CONSUMER_DEFAULTS``).
- icefield: ``run_pipeline`` of a ``kafka`` source pipeline into a fresh table (JSON decoded and typed,
  Parquet written, one Iceberg commit per batch with the offsets inside it), from the first offset to
  the end, on the embedded SQLite catalog.
Both must see the same number of messages (the icefield table's row count, checked after the clock
stops). Target (PERFORMANCE.md): icefield >= 70% of the consume-only throughput.

Size: ``1,000,000 * BENCH_SCALE`` messages (``BENCH_SCALE=10`` for the 10M of PERFORMANCE.md).
``BENCH_KAFKA=host:port`` uses a running broker instead of starting the stack's.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    OBSERVED,
    emit,
    machine,
    measure_runs,
    median,
    observation,
    observers_for,
    print_table,
    runs,
    scale,
    tuned_if,
    warm_observation,
    work_dir,
)
from icefield.errors import SourceError

PARTITIONS = 4
BASE_MESSAGES = 1_000_000
KINDS = ("view", "click", "cart", "buy")


def size() -> int:
    return int(BASE_MESSAGES * scale())


def message(i: int) -> bytes:
    """Message ``i``: about 110 bytes of JSON with an int, text, a double, an epoch timestamp and a bool."""
    return (
        f'{{"id":{i},"device":"d-{i % 1000:04d}","kind":"{KINDS[i % 4]}","value":{(i % 10007) / 8},'
        f'"ts":{1767225600000 + i},"ok":{"true" if i % 3 else "false"}}}'
    ).encode()


# ------------------------------------------------------------------------------------ broker and data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(root: Path) -> tuple[str, Any]:
    """The bootstrap servers, and the launcher to stop afterwards (None when nothing was started here)."""
    if os.environ.get("BENCH_KAFKA"):
        return os.environ["BENCH_KAFKA"], None
    from stack import Kafka
    from stack.base import LOCALHOST, port_open

    kafka = Kafka()
    if kafka.status().running:
        return kafka.bootstrap_servers, None
    if any(port_open(LOCALHOST, p) for p in kafka.ports()):  # another checkout's broker: run our own
        kafka = Kafka(root / "stack", port=_free_port(), controller_port=_free_port())
    kafka.heap = "768m"
    started = kafka.up(timeout=180)
    return kafka.bootstrap_servers, kafka if started else None


def ends(bootstrap: str, topic: str) -> dict[int, int] | None:
    """High watermark per partition, or None if the topic does not exist."""
    from icefield.ingest.kafka import KafkaReader

    reader = KafkaReader({"bootstrap.servers": bootstrap, "group.id": "w6-probe"}, [topic])
    try:
        reader.open(None)
    except SourceError:
        return None
    finally:
        reader.close()
    return {p: end for (_, p), end in reader.ends.items()}


def prepare_topic(bootstrap: str, n: int) -> str:
    """Topic ``w6-<n>`` with ``n`` messages in 4 partitions (made once, kept on the broker)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"w6-{n}"
    have = ends(bootstrap, topic)
    if have is not None and len(have) == PARTITIONS and sum(have.values()) == n:
        return topic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if have is not None:
        for f in admin.delete_topics([topic], operation_timeout=60).values():
            f.result()
        time.sleep(2)
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)], operation_timeout=60).values():
        f.result()
    print(f"producing {n:,} messages to {topic} ...", flush=True)
    t0 = time.perf_counter()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20, "queue.buffering.max.messages": 1_000_000}
    )
    for i in range(n):
        while True:
            try:
                producer.produce(topic, message(i), partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(300) == 0, "messages left unsent"
    got = ends(bootstrap, topic) or {}
    assert sum(got.values()) == n, f"{topic} holds {sum(got.values())} messages, not {n}"
    print(f"produced in {time.perf_counter() - t0:.1f}s", flush=True)
    return topic


# ------------------------------------------------------------------------------------ peers (children)


def _peer_consume_only(args: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from icefield.ingest.kafka import CONSUMER_DEFAULTS

    topic = args["topic"]
    c = Consumer(
        {
            **CONSUMER_DEFAULTS,  # the same client settings as icefield's reader: only the work differs
            "bootstrap.servers": args["bootstrap"],
            "group.id": f"w6-consume-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    t0 = time.perf_counter()
    parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    pending = set(parts)
    n = nbytes = 0
    eof = KafkaError._PARTITION_EOF
    while pending:
        for m in c.consume(10_000, 1.0):
            err = m.error()
            if err is None:
                n += 1
                nbytes += len(m.value())
            elif err.code() == eof:
                pending.discard(m.partition())
    seconds = time.perf_counter() - t0
    c.close()
    return seconds, {"messages": n, "bytes": nbytes}


def _peer_icefield(args: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.pipeline.runner import run_pipeline

    root = Path(args["root"])
    shutil.rmtree(root, ignore_errors=True)
    (root / "pipelines").mkdir(parents=True)
    settings: dict[str, Any] = {"name": "w6", **(observation(args["pushgateway"], str(root / "lineage.jsonl")) if args.get(OBSERVED) else {})}
    (root / "icefield.yaml").write_text(json.dumps(settings))
    pipeline = {
        "name": "w6",
        "source": {
            "type": "kafka",
            "bootstrap_servers": args["bootstrap"],
            "topic": args["topic"],
            "group_id": f"w6-icefield-{uuid.uuid4().hex[:8]}",  # no committed offsets to start from
        },
        "target": {"table": "bench.events"},
        "batch_size": args["batch_size"],
    }
    (root / "pipelines" / "w6.yaml").write_text(json.dumps(pipeline))
    project = load_project(root)
    _warm_imports()
    if args.get(OBSERVED):
        warm_observation()
    t0 = time.perf_counter()
    if args.get(OBSERVED):
        with observers_for(project) as observers:
            result = run_pipeline(project, "w6", observers=observers)
    else:
        result = run_pipeline(project, "w6")
    seconds = time.perf_counter() - t0
    table = open_catalog(project).load_table("bench.events")
    rows = sum(t.file.record_count for t in table.scan().plan_files())
    return seconds, {
        "messages": result.rows_in,
        "rows": rows,
        "committed": result.rows_committed,
        "quarantined": result.rows_quarantined,
        "batches": len(result.batches),
    }


def _warm_imports() -> None:
    """Import what the run will import, before the clock starts: W6 measures throughput, not start-up."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pyiceberg.catalog.sql  # noqa: F401
    import pyiceberg.io.pyarrow  # noqa: F401
    import pyiceberg.table  # noqa: F401
    import sqlalchemy  # noqa: F401

    import icefield.engines.local  # noqa: F401
    import icefield.ingest.kafka  # noqa: F401
    import icefield.pipeline.quarantine  # noqa: F401


PEERS = {"consume-only": _peer_consume_only, "icefield": _peer_icefield}


def child(args: dict[str, Any]) -> None:
    with tuned_if(args["peer"] == "icefield"):
        seconds, result = PEERS[args["peer"]](args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)  # this process, all its threads, start-up included
    emit(seconds, result)


# ------------------------------------------------------------------------------------ driver


def run() -> list[dict[str, Any]]:
    n = size()
    root = work_dir("w6")
    batch_size = int(os.environ.get("BENCH_W6_BATCH", "250000"))
    bootstrap, started = start_broker(root)
    try:
        topic = prepare_topic(bootstrap, n)
        print(f"W6 stream: {n:,} JSON messages in {PARTITIONS} partitions of {topic} at {bootstrap}; "
              f"icefield batch size {batch_size:,}; machine {machine()}")
        row: dict[str, Any] = {"case": f"{n:,} messages, {PARTITIONS} partitions", "messages": n}
        results: dict[str, dict[str, Any]] = {}
        for peer in ("consume-only", "icefield"):
            args = lambda r, p=peer: {"peer": p, "bootstrap": bootstrap, "topic": topic, "root": str(root / f"proj-{r}"), "batch_size": batch_size}  # noqa: E731
            done = measure_runs("bench.w6_stream", args, runs())
            results[peer] = done.result
            row[f"{peer}_s"] = done.median_s()
            row[f"{peer}_msg_per_s"] = round(n / median(done.seconds))
            row[f"{peer}_rss_mb"] = done.peak_mb()
            row[f"{peer}_cpu_s"] = results[peer]["cpu_s"]
        ice = results["icefield"]
        row["same_count"] = results["consume-only"]["messages"] == ice["messages"] == ice["rows"] == ice["committed"] == n
        row["icefield_batches"] = ice["batches"]
        row["ratio"] = round(row["icefield_msg_per_s"] / row["consume-only_msg_per_s"], 3)
        _print([row])
        return [row]
    finally:
        if started is not None:
            started.stop()


def _print(results: list[dict[str, Any]]) -> None:
    cols = ["case", "consume-only s", "icefield s", "consume-only msg/s", "icefield msg/s", "icefield/consume-only",
            "CPU s (consume-only, icefield)", "icefield peak MB", "same count"]
    rows = [
        [
            r["case"], r["consume-only_s"], r["icefield_s"], f"{r['consume-only_msg_per_s']:,}", f"{r['icefield_msg_per_s']:,}",
            f"{r['ratio']:.0%}", f"{r['consume-only_cpu_s']}, {r['icefield_cpu_s']}", r["icefield_rss_mb"],
            "yes" if r["same_count"] else "NO",
        ]
        for r in results
    ]
    print_table("W6 stream (medians; target icefield >= 70% of consume-only)", cols, rows)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        out = run()
        (work_dir("w6") / "results.json").write_text(json.dumps(out, indent=2))
