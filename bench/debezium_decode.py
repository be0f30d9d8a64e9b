"""Decode throughput of Debezium change events (a part of W3): ``python -m bench.debezium_decode [N]``.

Builds N synthetic PostgreSQL events (default 500k; 70% updates, 20% inserts, 10% deletes each followed
by its tombstone) on the orders table, with and without the embedded schema, and times
``decode_events`` over batches of 10k messages, as a source would call it; beside it, the floor of
parsing the same messages with ``orjson`` and with the standard library's ``json`` alone. Prints events
per CPU second of one core (medians of 3 runs; CPU time, as the machine may be shared).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

import orjson

from icefield.ingest.debezium_codec import decode_events
from icefield.testing.debezium import DebeziumTable, encode_decimal, epoch_days, epoch_micros, zoned

BATCH = 10_000


def make_events(n: int, with_schema: bool, seed: int = 7) -> tuple[list[bytes | None], list[bytes | None]]:
    rnd = random.Random(seed)
    table = DebeziumTable("orders", with_schema=with_schema)
    base = dt.datetime(2024, 3, 1, 10, 0, 0)
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    lsn = 24_000_000
    while len(values) < n:
        k = rnd.randrange(1_000_000)
        ts = base + dt.timedelta(microseconds=rnd.randrange(10**11))
        row = {
            "id": k,
            "customer_id": rnd.randrange(10**9),
            "amount": encode_decimal(f"{rnd.randrange(10**8)}.{rnd.randrange(100):02d}", 2),
            "note": f"order note {rnd.randrange(10**6)}",
            "created_at": epoch_micros(ts),
            "updated_at": zoned(ts.replace(tzinfo=dt.UTC)),
            "order_date": epoch_days(ts.date()),
            "uid": f"8a7c5d1e-3b2f-4c9a-9e8d-{rnd.randrange(16**12):012x}",
            "meta": json.dumps({"channel": rnd.choice(["web", "app"]), "items": rnd.randrange(10)}),
            "status": rnd.choice(["new", "paid", "shipped"]),
            "active": rnd.random() < 0.5,
            "weight": round(rnd.random() * 100, 3),
        }
        lsn += rnd.randrange(50, 500)
        r = rnd.random()
        key = table.key_of(row)
        if r < 0.1:
            values.append(table.value("d", before={"id": k}, lsn=lsn, commit_lsn=lsn + 40, txid=lsn // 1000))
            keys.append(key)
            values.append(None)
            keys.append(key)
        else:
            op = "c" if r < 0.3 else "u"
            values.append(table.value(op, after=row, lsn=lsn, commit_lsn=lsn + 40, txid=lsn // 1000))
            keys.append(key)
    return values[:n], keys[:n]


def _time(fn: Callable[[], object], runs: int = 3) -> float:
    """Median CPU seconds of this process (the machine is shared: CPU time is steadier than wall time)."""
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def run(n: int = 500_000) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for with_schema in (True, False):
        values, keys = make_events(n, with_schema)
        size = sum(len(v) for v in values if v is not None)

        def decode(values: list[bytes | None] = values, keys: list[bytes | None] = keys) -> None:
            for start in range(0, len(values), BATCH):
                got = decode_events(values[start : start + BATCH], keys[start : start + BATCH])
                assert got.accounted == len(values[start : start + BATCH]) and not got.rejected

        def parse_orjson(values: list[bytes | None] = values) -> None:
            for v in values:
                if v is not None:
                    orjson.loads(v)

        def parse_json(values: list[bytes | None] = values) -> None:
            for v in values:
                if v is not None:
                    json.loads(v)

        label = "with schema" if with_schema else "without schema"
        res = {name: n / _time(fn) for name, fn in (("decode_events", decode), ("orjson.loads only", parse_orjson), ("json.loads only", parse_json))}
        res["avg_bytes"] = size / n
        out[label] = res
        print(f"{label} ({size / n:.0f} bytes/event, {n} events):")
        for name, rate in res.items():
            if name != "avg_bytes":
                print(f"  {name:20s} {rate:12,.0f} events/s")
    return out


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 500_000)
