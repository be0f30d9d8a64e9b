"""W3 CDC: Debezium change events (inserts, updates, 5% deletes, duplicates, out of order) on a keyed
table, from a 4-partition Kafka topic into Iceberg, end to end.

Side by side: icefield's ``debezium`` pipeline (merge by key, newest ``source.sequence`` wins), a
pyiceberg loop (consume, keep the newest event per key, ``Table.delete`` + ``Table.upsert`` per batch)
under a time budget, and a consume-only confluent-kafka loop (the limit of reading). icefield's final
table is compared with an oracle (per key, the event with the greatest ``[commit LSN, LSN]``) by count
and content hash. A follow-mode run measures freshness (event produced -> committed) at a steady rate.

``python -m bench w3``; ``BENCH_SCALE`` scales the 500k events (5M at 10); ``BENCH_W3_RATE`` sets the
freshness run's events/s (default 10k) and ``BENCH_W3_FRESH_SECONDS`` its length (default 20).
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    OBSERVED,
    emit,
    machine,
    median,
    observation,
    observers_for,
    print_table,
    runs,
    scale,
    table_digest,
    tuned_if,
    warm_observation,
    work_dir,
)

PARTITIONS = 4
TOPIC = "pg.public.orders"
FRESH_TOPIC = "pg.public.orders_live"  # the freshness run's own topic: it must not start behind a backlog
STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled")


def sizes() -> tuple[int, int]:
    events = int(500_000 * scale())
    return events, max(1, events // 5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------ events


def history(n_events: int, n_keys: int, seed: int = 3) -> list[tuple[int, str, dict[str, Any] | None, int, int]]:
    """``(key, op, row or None, commit LSN, LSN)`` in commit order: every key inserted once, then
    updates and 5% deletes (a deleted key may come back), in transactions of 1-5 events."""
    rng = random.Random(seed)
    out: list[tuple[int, str, dict[str, Any] | None, int, int]] = []
    alive: set[int] = set()
    lsn = 1_000_000
    key = 0
    while len(out) < n_events:
        txn = []
        for _ in range(rng.randint(1, 5)):
            lsn += rng.randint(8, 64)
            if key < n_keys:
                k, op = key, "c"
                key += 1
            else:
                k = rng.randrange(n_keys)
                op = ("d" if rng.random() < 0.05 else "u") if k in alive else "c"
            row = None if op == "d" else {
                "id": k, "customer_id": rng.randrange(100_000), "status": rng.choice(STATUSES),
                "amount": round(rng.uniform(1, 2000), 2), "updated_at": 1_790_000_000_000_000 + lsn,
            }  # fmt: skip
            (alive.discard if op == "d" else alive.add)(k)
            txn.append((k, op, row, lsn))
        lsn += 16
        out.extend((k, op, row, lsn, row_lsn) for k, op, row, row_lsn in txn)
    return out[:n_events]


def deliveries(events: list[Any], seed: int = 4) -> list[Any]:
    """At-least-once and slightly out of order: 3% of events delivered twice (a few hundred events
    later), and windows of 20 events shuffled."""
    rng = random.Random(seed)
    out: list[Any] = []
    for i, e in enumerate(events):
        out.append(e)
        if rng.random() < 0.03:
            j = min(len(events) - 1, i + rng.randint(1, 500))
            out.append(events[j] if rng.random() < 0.5 else e)
    for i in range(0, len(out), 20):
        chunk = out[i : i + 20]
        rng.shuffle(chunk)
        out[i : i + 20] = chunk
    return out


def oracle(events: list[Any]) -> dict[int, dict[str, Any]]:
    best: dict[int, Any] = {}
    for e in events:
        if e[0] not in best or (e[3], e[4]) > (best[e[0]][3], best[e[0]][4]):
            best[e[0]] = e
    return {k: e[2] for k, e in best.items() if e[1] != "d"}


def encode(e: Any, ts_ms: int = 1_790_000_000_000) -> tuple[bytes, bytes]:
    """Message key and value as Debezium's JsonConverter writes them with ``schemas.enable=false``
    (``decimal.handling.mode=double``)."""
    k, op, row, commit_lsn, lsn = e
    source = {
        "version": "3.6.1.Final", "connector": "postgresql", "name": "pg", "ts_ms": ts_ms, "snapshot": "false",
        "db": "shop", "sequence": f'["{commit_lsn}","{lsn}"]', "schema": "public", "table": "orders",
        "txId": commit_lsn // 100, "lsn": lsn, "xmin": None,
    }  # fmt: skip
    before = {"id": k} if op == "d" else None
    value = {"before": before, "after": row, "source": source, "op": op, "ts_ms": ts_ms}
    return json.dumps({"id": k}).encode(), json.dumps(value, separators=(",", ":")).encode()


def produce(bootstrap: str, stream: list[Any]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (TOPIC, FRESH_TOPIC)])
    for future in created.values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000, "compression.type": "lz4"})
    for e in stream:
        key, value = encode(e)
        while True:
            try:
                producer.produce(TOPIC, value, key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)


# ------------------------------------------------------------------------------------------ peers (child processes)


def _project(
    root: Path, bootstrap: str, batch: int, wait: float, topic: str = TOPIC, merge_mode: str = "copy-on-write", extra: dict[str, Any] | None = None
) -> Any:
    import yaml

    from icefield.config import load_project

    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    settings = {"name": "w3", "batch_size": batch, "read_ahead": int(os.environ.get("BENCH_READ_AHEAD", "1")), **(extra or {})}
    (root / "icefield.yaml").write_text(yaml.safe_dump(settings))
    pipe = {
        "name": "orders_cdc",
        # A fresh consumer group per run: a group's committed offsets are where a table without a position starts.
        "source": {"type": "debezium", "topic": topic, "bootstrap_servers": bootstrap, "max_wait_seconds": wait, "group_id": f"w3-{time.time_ns()}"},
        "target": {"table": "cdc.orders", "keys": ["id"], "properties": {"write.merge.mode": merge_mode}},
    }
    (root / "pipelines" / "orders_cdc.yaml").write_text(yaml.safe_dump(pipe))
    return load_project(root, env={})


def child_icefield(args: dict[str, Any]) -> None:
    from icefield.catalog import open_catalog
    from icefield.pipeline import run_pipeline

    root = Path(args["root"])
    observed = observation(args["pushgateway"], str(root / "lineage.jsonl")) if args.get(OBSERVED) else None
    project = _project(root, args["bootstrap"], int(args.get("batch", 250_000)), 5.0, merge_mode=args.get("merge_mode", "copy-on-write"), extra=observed)
    catalog = open_catalog(project)
    _warm_imports()
    if observed:
        warm_observation()
    started = time.perf_counter()
    if observed:
        with observers_for(project) as observers:
            result = run_pipeline(project, "orders_cdc", catalog, observers=observers)
    else:
        result = run_pipeline(project, "orders_cdc", catalog)
    seconds = time.perf_counter() - started
    table = catalog.load_table("cdc.orders").scan(selected_fields=("id", "customer_id", "status", "amount", "updated_at")).to_arrow()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = round(usage.ru_utime + usage.ru_stime, 2)  # this process, all its threads, start-up included
    emit(seconds, {"events": result.rows_in, "batches": len(result.batches), "conserved": result.conserved, "cpu_s": cpu_s, **table_digest(table, "id")})


def _warm_imports() -> None:
    """Import what the run will import, before the clock starts: W3 measures throughput, not start-up
    (as W1 and W6 do)."""
    import duckdb  # noqa: F401
    import pyarrow.acero  # noqa: F401
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pyiceberg.io.pyarrow  # noqa: F401
    import pyiceberg.table  # noqa: F401

    import icefield.engines.local  # noqa: F401
    import icefield.iceberg.versions  # noqa: F401
    import icefield.ingest.debezium  # noqa: F401
    import icefield.ingest.debezium_codec  # noqa: F401
    import icefield.ingest.kafka  # noqa: F401
    import icefield.pipeline.audit  # noqa: F401
    import icefield.pipeline.quarantine  # noqa: F401


def child_consume_only(args: dict[str, Any]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from icefield.ingest.kafka import CONSUMER_DEFAULTS

    # The client settings icefield's reader uses (librdkafka's own defaults back off for a second whenever
    # its queue is full, which bounds a fast loop by the broker's round trips, not by the client).
    c = Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": args["bootstrap"], "group.id": f"consume-only-{time.time_ns()}", "enable.auto.commit": False})
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    want, got, nbytes = int(args["messages"]), 0, 0
    started = time.perf_counter()
    while got < want:
        for m in c.consume(10_000, timeout=1.0):
            if m.error() is None:
                got += 1
                nbytes += len(m.value() or b"")
    seconds = time.perf_counter() - started
    c.close()
    emit(seconds, {"events": got, "bytes": nbytes})


def child_pyiceberg(args: dict[str, Any]) -> None:
    """Consume, keep the newest event per key in each batch, then ``delete`` + ``upsert`` with pyiceberg,
    until the stream ends or the time budget runs out."""
    import pyarrow as pa
    from confluent_kafka import Consumer, TopicPartition
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import In

    root = Path(args["root"])
    root.mkdir(parents=True, exist_ok=True)
    cat = SqlCatalog("w3", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=(root / "wh").resolve().as_uri())
    cat.create_namespace_if_not_exists("cdc")
    schema = pa.schema([("id", pa.int64()), ("customer_id", pa.int64()), ("status", pa.string()), ("amount", pa.float64()), ("updated_at", pa.int64())])
    table = cat.create_table_if_not_exists("cdc.orders", schema=schema)
    c = Consumer({"bootstrap.servers": args["bootstrap"], "group.id": f"pyiceberg-{time.time_ns()}", "enable.auto.commit": False})
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    want, budget, batch = int(args["messages"]), float(args["budget"]), int(args.get("batch", 50_000))
    got = 0
    started = time.perf_counter()
    while got < want and time.perf_counter() - started < budget:
        newest: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}
        n = 0
        while n < batch and got + n < want:
            for m in c.consume(min(10_000, batch - n), timeout=1.0):
                if m.error() is not None or m.value() is None:
                    continue
                ev = json.loads(m.value())
                commit_lsn, lsn = (int(x or 0) for x in json.loads(ev["source"]["sequence"]))
                k = (ev["after"] or ev["before"])["id"]
                if k not in newest or (commit_lsn, lsn) > newest[k][0]:
                    newest[k] = ((commit_lsn, lsn), ev)
                n += 1
        got += n
        deletes = [k for k, (_, ev) in newest.items() if ev["op"] == "d"]
        upserts = [ev["after"] for _, ev in newest.values() if ev["op"] != "d"]
        if deletes:
            table.delete(In("id", deletes))
        if upserts:
            table.upsert(pa.Table.from_pylist(upserts, schema=schema), join_cols=["id"])
    seconds = time.perf_counter() - started
    c.close()
    emit(seconds, {"events": got, "complete": got >= want})


def child_producer(args: dict[str, Any]) -> None:
    """Produce at ``rate`` events/s once ``ready`` exists; write ``[partition, offset, monotonic time]``
    of every message to ``out`` (CLOCK_MONOTONIC is shared by the processes of one machine)."""
    from confluent_kafka import Producer

    rate, seconds = float(args["rate"]), float(args["seconds"])
    events = deliveries(history(int(rate * seconds), max(1, int(rate * seconds) // 5), seed=9))
    encoded = [encode(e) for e in events]
    p = Producer({"bootstrap.servers": args["bootstrap"], "linger.ms": 5})
    sent: list[list[Any]] = []
    ready = Path(args["ready"])
    while not ready.exists():
        time.sleep(0.05)
    t0 = time.monotonic()
    for i, (key, value) in enumerate(encoded):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        p.produce(FRESH_TOPIC, value, key, on_delivery=lambda err, m, s=now: err is None and sent.append([m.partition(), m.offset(), s]))
        p.poll(0)
    p.flush(30)
    Path(args["out"]).write_text(json.dumps(sent))


def child_freshness(args: dict[str, Any]) -> None:
    """A follow-mode pipeline commits every second while another process produces at ``rate`` events/s
    for ``seconds``; an event's freshness is the time from its produce call to the end of the commit
    that holds its offset. Startup is excluded: production starts after the first commit (a warm-up
    event)."""
    import subprocess
    import threading

    from confluent_kafka import Producer

    from icefield.catalog import open_catalog
    from icefield.iceberg.history import read_position
    from icefield.pipeline import run_pipeline

    root = Path(args["root"])
    project = _project(root, args["bootstrap"], 100_000, 1.0, FRESH_TOPIC, merge_mode=args.get("merge_mode", "copy-on-write"))
    catalog = open_catalog(project)
    ready, out = root / "ready", root / "produced.json"
    producer = subprocess.Popen(
        [sys.executable, "-m", "bench.w3_cdc", json.dumps({**args, "peer": "producer", "ready": str(ready), "out": str(out)})]
    )
    warm = Producer({"bootstrap.servers": args["bootstrap"]})
    key, value = encode((-1, "c", {"id": -1, "customer_id": 0, "status": "placed", "amount": 1.0, "updated_at": 0}, 1, 1))
    warm.produce(FRESH_TOPIC, value, key)
    warm.flush(30)
    commits: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def on_batch(_: Any) -> None:
        pos = read_position(catalog.load_table("cdc.orders"), "orders_cdc") or {}
        commits.append((time.monotonic(), {int(k): int(v) for k, v in pos.get("topics", {}).get(FRESH_TOPIC, {}).items()}))
        ready.touch()
        if out.exists():
            ends: dict[int, int] = {}
            for part, off, _ in json.loads(out.read_text()):
                ends[part] = max(ends.get(part, 0), off + 1)
            if all(commits[-1][1].get(q, 0) >= e for q, e in ends.items()):
                stop.set()

    def watchdog() -> None:
        producer.wait()
        time.sleep(30)
        stop.set()

    threading.Thread(target=watchdog, daemon=True).start()
    started = time.perf_counter()
    run_pipeline(project, "orders_cdc", catalog, on_batch=on_batch, follow=True, stop=stop)
    producer.wait()
    latencies = []
    for part, off, sent in json.loads(out.read_text()):
        done = next((t for t, pos in commits if pos.get(part, 0) > off), None)
        if done is not None:
            latencies.append(done - sent)
    lat = sorted(latencies)
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
    emit(time.perf_counter() - started, {"events": len(json.loads(out.read_text())), "measured": len(lat), "commits": len(commits),
                                          "p50_s": pct(0.5), "p99_s": pct(0.99), "max_s": round(lat[-1], 3) if lat else None})  # fmt: skip


# ------------------------------------------------------------------------------------------ driver


def run() -> dict[str, Any]:
    import pyarrow as pa
    from stack.kafka import Kafka

    from bench.common import measure_subprocess

    n_events, n_keys = sizes()
    root = work_dir("w3")
    print(f"W3 CDC: {n_events:,} Debezium events on {n_keys:,} keys from a {PARTITIONS}-partition topic; machine {machine()}")
    events = history(n_events, n_keys)
    stream = deliveries(events)
    want = oracle(events)
    expected = table_digest(pa.Table.from_pylist(list(want.values())), "id") if want else {"rows": 0}
    kafka = Kafka(root / f"stack-{time.time_ns()}", port=free_port(), controller_port=free_port())
    kafka.up(timeout=180)
    rows: list[list[Any]] = []
    doc: dict[str, Any] = {"events": n_events, "delivered": len(stream), "keys": n_keys}
    try:
        t = time.perf_counter()
        produce(kafka.bootstrap_servers, stream)
        print(f"  produced {len(stream):,} messages in {time.perf_counter() - t:.1f}s")
        base = {"bootstrap": kafka.bootstrap_servers, "messages": len(stream)}
        consume = [measure_subprocess("bench.w3_cdc", {**base, "peer": "consume"}) for _ in range(runs())]
        limit_s = median([m.seconds for m in consume if m])
        # copy-on-write rewrites the files that hold changed keys; merge-on-read writes position deletes
        modes = os.environ.get("BENCH_W3_MODES", "copy-on-write,merge-on-read").split(",")
        ice: dict[str, list[Any]] = {}
        fresh: dict[str, Any] = {}
        for mode in modes:
            ice[mode] = [
                measure_subprocess("bench.w3_cdc", {**base, "peer": "icefield", "merge_mode": mode, "root": str(root / f"ice-{r}-{time.time_ns()}")})
                for r in range(runs())
            ]
            print(f"  icefield ({mode}) runs: {', '.join(f'{m.seconds:.2f}' for m in ice[mode] if m)} s")
        print(f"  consume-only runs: {', '.join(f'{m.seconds:.2f}' for m in consume if m)} s")
        budget = float(os.environ.get("BENCH_PEER_TIMEOUT", "300"))
        py = measure_subprocess("bench.w3_cdc", {**base, "peer": "pyiceberg", "root": str(root / f"py-{time.time_ns()}"), "budget": budget}, timeout=budget + 120)
        for mode in modes:
            fresh[mode] = measure_subprocess(
                "bench.w3_cdc",
                {**base, "peer": "freshness", "merge_mode": mode, "root": str(root / f"fresh-{time.time_ns()}"),
                 "rate": float(os.environ.get("BENCH_W3_RATE", "10000")), "seconds": float(os.environ.get("BENCH_W3_FRESH_SECONDS", "20"))},
            )  # fmt: skip
    finally:
        kafka.stop()
    delivered = len(stream)
    for mode, measured in ice.items():
        ice_ok = [m for m in measured if m]
        ice_s = median([m.seconds for m in ice_ok])
        same = all(m.result.get("hash") == expected.get("hash") and m.result.get("rows") == expected.get("rows") for m in ice_ok)
        rows.append([f"icefield debezium -> merge ({mode})", round(ice_s, 2), f"{delivered / ice_s:,.0f}", max(m.peak_rss_mb for m in ice_ok), "yes" if same else "NO"])
        doc.setdefault("icefield", {})[mode] = {
            "seconds": round(ice_s, 3), "events_per_s": round(delivered / ice_s), "same_as_oracle": same, "peak_mb": max(m.peak_rss_mb for m in ice_ok),
        }
    if py is not None:
        py_rate = py.result["events"] / py.seconds if py.seconds else 0
        label = "pyiceberg delete+upsert loop" + ("" if py.result.get("complete") else f" (stopped after {budget:.0f}s)")
        rows.append([label, round(py.seconds, 2), f"{py_rate:,.0f}", py.peak_rss_mb, "-"])
        doc["pyiceberg_events_per_s"] = round(py_rate)
        doc["pyiceberg_events"] = py.result["events"]
        doc["pyiceberg_s"] = round(py.seconds, 3)
    rows.append(["limit: confluent-kafka consume only", round(limit_s, 2), f"{delivered / limit_s:,.0f}", max(m.peak_rss_mb for m in consume if m), "-"])
    print_table(f"W3 CDC, {delivered:,} messages ({n_events:,} events + redeliveries) on {n_keys:,} keys", ["peer", "s", "events/s", "peak MB", "same as oracle"], rows)
    doc.update(consume_only_s=round(limit_s, 3))
    for mode, f in fresh.items():
        if f is None:
            continue
        doc.setdefault("freshness", {})[mode] = f.result
        print(f"  freshness ({mode}) at {f.result['events'] / max(1.0, float(os.environ.get('BENCH_W3_FRESH_SECONDS', '20'))):,.0f} events/s (follow, 1 s commit interval): "
              f"p50 {f.result['p50_s']} s, p99 {f.result['p99_s']} s, max {f.result['max_s']} s over {f.result['measured']:,} events")
    (root / "results.json").write_text(json.dumps(doc, indent=2))
    return doc


CHILDREN = {
    "icefield": child_icefield,
    "consume": child_consume_only,
    "pyiceberg": child_pyiceberg,
    "freshness": child_freshness,
    "producer": child_producer,
}

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    with tuned_if(arguments["peer"] in ("icefield", "freshness")):
        CHILDREN[arguments["peer"]](arguments)
