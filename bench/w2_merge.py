"""W2 merge: changes (75% updates, 20% inserts, 5% deletes) merged into an orders table by key.

Peers on the same base table and the same changes, each in its own process:
- icefield: the ``local`` engine's copy-on-write merge (one commit);
- pyiceberg: ``Table.upsert`` of the updates and inserts, then ``Table.delete`` of the deleted keys;
- Spark 4.1 local[2]: ``MERGE INTO`` through Iceberg's JDBC catalog on the same catalog database
  (only when pyspark and the Iceberg runtime are available; see ``stack/spark.py``).
Every peer's final table must have the same row count and content hash before a time is reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Runs,
    emit,
    machine,
    measure_runs,
    peak_rss_mb,
    print_table,
    runs,
    scale,
    table_digest,
    tuned_if,
    work_dir,
)

CATALOG = "icefield"
NAMESPACE = "bench"
SEED = 42
PRIME = 2_654_435_761  # prime, coprime with every size used: j -> (j * PRIME) % n is a permutation that spreads j


def sizes() -> tuple[int, list[int]]:
    s = scale()
    base = int(1_000_000 * s)
    changes = [int(10_000 * s), int(100_000 * s)]
    if os.environ.get("BENCH_W2_CHANGES"):  # e.g. "100000": only these batch sizes
        changes = [int(c) for c in os.environ["BENCH_W2_CHANGES"].split(",")]
    return base, changes


def _catalog(root: Path) -> Any:
    from icefield.catalog import sql_catalog

    return sql_catalog(CATALOG, f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri())


def base_rows(n: int) -> Any:
    import duckdb

    con = duckdb.connect()
    try:
        return con.sql(f"""
            select i::bigint as order_id,
                   (hash(i, 1) % 100000)::bigint as customer_id,
                   ['placed','paid','shipped','delivered','cancelled'][1 + (hash(i, 2) % 5)::int] as status,
                   ((hash(i, 3) % 1000000)::bigint / 100)::decimal(12,2) as amount,
                   (date '2025-01-01' + (i * 365 // {n})::int) as order_date,
                   (timestamp '2025-01-01' + to_microseconds((i * (31536000000000 // {n}))::bigint)) as updated_at,
                   'note-' || (hash(i, 4) % 1000)::varchar as note
            from range({n}) t(i) order by i
        """).to_arrow_table()
    finally:
        con.close()


def change_rows(n: int, m: int, recent: bool) -> Any:
    """``m`` changes on distinct keys: updates and deletes of existing keys (uniform over the table, or
    within its newest 10%), inserts of new keys."""
    import duckdb

    updates, deletes = int(m * 0.75), int(m * 0.05)
    inserts = m - updates - deletes
    span = max(updates + deletes, n // 10) if recent else n
    low = n - span
    con = duckdb.connect()
    try:
        return con.sql(f"""
            with picked as (
                select j, {low} + ((j * {PRIME}) % {span})::bigint as order_id from range({updates + deletes}) t(j)
            ), existing as (
                select order_id, j >= {updates} as _deleted from picked
            ), fresh as (
                select ({n} + j)::bigint as order_id, false as _deleted from range({inserts}) t(j)
            ), keys as (select * from existing union all select * from fresh)
            select order_id,
                   (hash(order_id, 11) % 100000)::bigint as customer_id,
                   ['placed','paid','shipped','delivered','cancelled'][1 + (hash(order_id, 12) % 5)::int] as status,
                   ((hash(order_id, 13) % 1000000)::bigint / 100)::decimal(12,2) as amount,
                   (date '2025-01-01' + (least(order_id, {n} - 1) * 365 // {n})::int) as order_date,
                   timestamp '2026-01-01 00:00:00' as updated_at,
                   'changed-' || (hash(order_id, 14) % 1000)::varchar as note,
                   _deleted
            from keys order by order_id
        """).to_arrow_table()
    finally:
        con.close()


# ------------------------------------------------------------------------------------ setup


def prepare(root: Path, partitioned: bool, n: int) -> str:
    """Create the base table once per variant; returns its metadata location."""
    marker = root / f"base-{'part' if partitioned else 'flat'}-{n}.json"
    if marker.exists():
        return str(json.loads(marker.read_text())["metadata"])
    catalog = _catalog(root)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    name = f"{NAMESPACE}.base_{'part' if partitioned else 'flat'}_{n}"
    data = base_rows(n)
    from pyiceberg.io.pyarrow import pyarrow_to_schema  # noqa: F401  (schema comes from Arrow)

    tx = catalog.create_table_transaction(name, schema=data.schema, properties={"write.target-file-size-bytes": str(32 << 20)})
    if partitioned:
        with tx.update_spec() as spec:
            spec.add_field("order_date", "day", "order_date_day")
    table = tx.commit_transaction()
    table.append(data)
    table = catalog.load_table(name)
    marker.write_text(json.dumps({"metadata": table.metadata_location}))
    return table.metadata_location


def clone(root: Path, metadata: str, name: str) -> str:
    """A fresh table registered on the base table's metadata: same files, its own history."""
    catalog = _catalog(root)
    ident = f"{NAMESPACE}.{name}"
    if catalog.table_exists(ident):
        catalog.drop_table(ident)
    catalog.register_table(ident, metadata)
    return ident


# ------------------------------------------------------------------------------------ peers (children)


def _peer_icefield(root: Path, ident: str, changes_path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    changes = pq.read_table(changes_path)
    catalog = _catalog(root)
    target = TargetConfig(table=ident, mode="merge", keys=["order_id"], delete_column="_deleted")
    t0 = time.perf_counter()
    TableWriter(catalog, target, "bench", LocalEngine()).commit(changes, f"bench-{time.time_ns()}", None, "bench")
    return {"seconds": time.perf_counter() - t0}


def _peer_pyiceberg(root: Path, ident: str, changes_path: str) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyiceberg.expressions import In

    changes = pq.read_table(changes_path)
    upserts = changes.filter(pc.invert(changes.column("_deleted"))).drop(["_deleted"])
    deleted = changes.filter(changes.column("_deleted")).column("order_id").to_pylist()
    table = _catalog(root).load_table(ident)
    t0 = time.perf_counter()
    table.upsert(upserts, join_cols=["order_id"])
    if deleted:
        table.delete(In("order_id", set(deleted)))
    return {"seconds": time.perf_counter() - t0}


def _peer_spark(root: Path, ident: str, changes_path: str) -> dict[str, Any]:
    from stack.spark import spark_session

    # 8 GB of driver heap (local mode: the executors live in the driver); the 10M-row day-partitioned
    # copy-on-write MERGE failed with the stack's default of 2 GB.
    memory = os.environ.get("BENCH_SPARK_MEMORY", "8g")
    spark = spark_session(CATALOG, f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri(), memory=memory)
    try:
        spark.read.parquet(changes_path).createOrReplaceTempView("changes")
        spark.sql("select count(*) from changes").collect()  # load before the clock starts
        # Warm the JVM up with a MERGE into a tiny table, so the clock measures a steady-state MERGE
        # (the most favourable reading for Spark; a cold first MERGE takes 10-20 s longer).
        warm = f"{CATALOG}.{NAMESPACE}.spark_warmup"
        spark.sql(f"CREATE OR REPLACE TABLE {warm} (order_id bigint, note string) USING iceberg")
        spark.sql(f"INSERT INTO {warm} VALUES (1, 'a'), (2, 'b')")
        spark.sql(f"MERGE INTO {warm} t USING (SELECT 2 AS order_id, 'c' AS note) s ON t.order_id = s.order_id "
                  "WHEN MATCHED THEN UPDATE SET note = s.note WHEN NOT MATCHED THEN INSERT *")
        t0 = time.perf_counter()
        spark.sql(f"""
            MERGE INTO {CATALOG}.{ident} t USING changes s ON t.order_id = s.order_id
            WHEN MATCHED AND s._deleted THEN DELETE
            WHEN MATCHED THEN UPDATE SET customer_id = s.customer_id, status = s.status, amount = s.amount,
                 order_date = s.order_date, updated_at = s.updated_at, note = s.note
            WHEN NOT MATCHED AND NOT s._deleted THEN INSERT (order_id, customer_id, status, amount, order_date, updated_at, note)
                 VALUES (s.order_id, s.customer_id, s.status, s.amount, s.order_date, s.updated_at, s.note)
        """)
        return {"seconds": time.perf_counter() - t0}
    finally:
        spark.stop()


PEERS = {"icefield": _peer_icefield, "pyiceberg": _peer_pyiceberg, "spark": _peer_spark}


def _set_merge_mode(root: Path, ident: str, mode: str) -> None:
    """Give the clone the merge mode the peer is measured in (Iceberg's ``write.merge.mode``, which both
    icefield and Spark's MERGE INTO honour), before the clock starts."""
    if mode != "copy-on-write":
        table = _catalog(root).load_table(ident)
        table.transaction().set_properties({"write.merge.mode": mode}).commit_transaction()


def child(args: dict[str, Any]) -> None:
    root = Path(args["root"])
    with tuned_if(args["peer"] == "icefield"):
        _set_merge_mode(root, args["table"], args.get("merge_mode", "copy-on-write"))
        res = PEERS[args["peer"]](root, args["table"], args["changes"])
    peak = peak_rss_mb()  # the merge's own peak: the check below reads the whole table
    table = _catalog(root).load_table(args["table"])
    digest = table_digest(table.scan().to_arrow(), "order_id")
    digest["files"] = len(list(table.scan().plan_files()))
    emit(res["seconds"], digest, peak_mb=peak)


# ------------------------------------------------------------------------------------ driver


def spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
        from stack import spark  # noqa: F401
    except ImportError:
        return False
    return True


def run() -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    n, change_sizes = sizes()
    root = work_dir("w2")
    peers = ["icefield", "pyiceberg"] + (["spark"] if spark_available() and os.environ.get("BENCH_SPARK", "1") == "1" else [])
    if os.environ.get("BENCH_W2_PEERS"):  # e.g. "icefield": re-measure icefield alone
        peers = ["icefield", *[p for p in peers[1:] if p in os.environ["BENCH_W2_PEERS"].split(",")]]
    slow_timeout = float(os.environ.get("BENCH_PEER_TIMEOUT", "300"))
    results = []
    print(f"W2 merge: base {n:,} rows; changes {', '.join(f'{m:,}' for m in change_sizes)}; peers {', '.join(peers)}; machine {machine()}")
    # copy-on-write rewrites the files that hold a changed key; merge-on-read writes position deletes
    modes = os.environ.get("BENCH_W2_MODES", "copy-on-write,merge-on-read").split(",")
    layouts = {"both": (True, False), "partitioned": (True,), "unpartitioned": (False,)}[os.environ.get("BENCH_W2_LAYOUT", "both")]
    for partitioned in layouts:
        meta = prepare(root, partitioned, n)
        for recent in {"both": (False, True), "uniform": (False,), "recent": (True,)}[os.environ.get("BENCH_W2_KEYS", "both")]:
            for m in change_sizes:
                label = f"{'day-partitioned' if partitioned else 'unpartitioned'} {'recent-heavy' if recent else 'uniform'} {m:,} changes"
                changes_path = root / f"changes-{n}-{m}-{'recent' if recent else 'uniform'}.parquet"
                if not changes_path.exists():
                    pq.write_table(change_rows(n, m, recent), changes_path)
                digests: dict[str, dict[str, Any]] = {}
                pyiceberg_runs = None
                for mode in modes:
                    row: dict[str, Any] = {
                        "case": f"{label}, {mode}", "partitioned": partitioned, "recent": recent, "changes": m, "base_rows": n, "merge_mode": mode,
                    }
                    for peer in peers:
                        if peer == "pyiceberg" and pyiceberg_runs is not None:
                            done = pyiceberg_runs  # its upsert has one mode: measured once per case
                        else:
                            done = _measure_peer(root, meta, peer, changes_path, mode, slow_timeout, row)
                            if peer == "pyiceberg":
                                pyiceberg_runs = done
                        if done is not None:
                            _record(row, digests, peer, mode, done, slow_timeout)
                    _compare(row, digests, peers, mode, modes[0])
                    results.append(row)
                    _print(results, peers)
    return results


def _measure_peer(
    root: Path, meta: str, peer: str, changes_path: Path, mode: str, slow_timeout: float, row: dict[str, Any]
) -> Runs | None:
    """The runs of ``peer`` (3 for icefield, 1 for the others, which stop at ``slow_timeout``) on fresh
    clones of the base table; None when a peer other than icefield fails (noted in ``row``)."""
    try:
        return measure_runs(
            "bench.w2_merge",
            lambda r: {"peer": peer, "root": str(root), "table": clone(root, meta, f"{peer}_{r}"), "changes": str(changes_path), "merge_mode": mode},
            runs() if peer == "icefield" else 1,
            timeout=slow_timeout if peer != "icefield" else None,
        )
    except RuntimeError as e:
        if peer == "icefield":
            raise
        # a peer that fails is reported as failed; the other peers still run
        row[f"{peer}_error"] = str(e).strip().splitlines()[0][:200]
        print(f"  {peer} ({mode}) failed: {e}"[-2000:], flush=True)
        return None


def _record(row: dict[str, Any], digests: dict[str, dict[str, Any]], peer: str, mode: str, done: Runs, slow_timeout: float) -> None:
    if done.result:
        digests[f"{peer}-{mode}"] = done.result
    if done.timed_out:
        row[f"{peer}_timeout"] = slow_timeout
    row[f"{peer}_s"] = None if done.timed_out else done.median_s()  # a peer that timed out once has no time
    row[f"{peer}_rss_mb"] = done.peak_mb()
    if peer == "icefield" and row[f"{peer}_s"] is not None:
        row["files_after"] = done.result.get("files")


def _compare(row: dict[str, Any], digests: dict[str, dict[str, Any]], peers: list[str], mode: str, first_mode: str) -> None:
    """Every peer in every mode must end with the table icefield made in the first mode; ratios are
    each peer's time over icefield's (a lower bound when the peer timed out)."""
    ref = digests.get(f"icefield-{mode}")
    first = digests.get(f"icefield-{first_mode}")
    row["same_result"] = all(d["rows"] == first["rows"] and d["hash"] == first["hash"] for d in digests.values()) if ref and first else False
    row["rows_after"] = ref["rows"] if ref else None
    for peer in peers[1:]:
        if row.get(f"{peer}_s") and row.get("icefield_s"):
            row[f"x_{peer}"] = round(row[f"{peer}_s"] / row["icefield_s"], 1)
        elif row.get(f"{peer}_timeout") and row.get("icefield_s"):
            row[f"x_{peer}"] = f">{round(row[f'{peer}_timeout'] / row['icefield_s'], 1)}"


def _print(results: list[dict[str, Any]], peers: list[str]) -> None:
    cols = ["case", "icefield s", *[f"{p} s" for p in peers[1:]], *[f"{p}/icefield" for p in peers[1:]], "icefield peak MB", "same result"]
    rows = []
    for r in results:
        rows.append(
            [
                r["case"],
                r.get("icefield_s"),
                *[r.get(f"{p}_s") or (f">{r[f'{p}_timeout']:.0f}" if r.get(f"{p}_timeout") else "failed" if r.get(f"{p}_error") else "-") for p in peers[1:]],
                *[r.get(f"x_{p}", "-") for p in peers[1:]],
                r.get("icefield_rss_mb"),
                "yes" if r["same_result"] else "NO",
            ]
        )
    print_table("W2 merge (medians; ratios = peer time / icefield time)", cols, rows)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        out = run()
        path = work_dir("w2") / "results.json"
        path.write_text(json.dumps(out, indent=2))
