"""Gates: the whole gate set of a pipeline over one snapshot of an orders table (1M rows by default,
10M with ``BENCH_SCALE=10``), referencing a 100k-row customers table.

The gate set: row count, null ratio, distinct ratio of the key (uniqueness), accepted values, freshness,
referential integrity, a failing-rows SQL assertion, a scalar SQL assertion and the row-count change
against the previous snapshot. Peers, each in its own process on the same files:
- icefield: :func:`icefield.quality.gates.run_gates` (plans the snapshot, one aggregate scan, one
  anti-join, the SQL assertions);
- duckdb: the same measures as hand-written DuckDB SQL straight over the Parquet files (the limit);
- gx: Great Expectations 1.x on pandas with the equivalent expectations (opt-in with ``BENCH_GX=1``, and
  only when ``great_expectations`` is importable: at 1M rows it did not finish in 15 minutes on 2 cores,
  so it runs under ``BENCH_PEER_TIMEOUT``, default 300 s, and a timeout is reported as such).
Every peer must report the same measures (rows, nulls, distinct keys, orphans, bad statuses) before a
time is reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import emit, machine, measure_runs, print_table, runs, scale, tuned_if, work_dir
from bench.w2_merge import _catalog, base_rows

NAMESPACE = "bench"
CUSTOMERS = 100_000
STATUSES = ["placed", "paid", "shipped", "delivered", "cancelled"]
GATES: list[dict[str, Any]] = [
    {"row_count": {"min": 1}},
    {"null_ratio": {"column": "note", "max": 0.01}},
    {"distinct_ratio": {"column": "order_id", "min": 1}},
    {"accepted_values": {"column": "status", "values": STATUSES}},
    {"freshness": {"column": "updated_at", "max_age": "36500d"}},
    {"references": {"column": "customer_id", "to": f"{NAMESPACE}.customers.customer_id"}},
    {"sql": "select * from {table} where amount < 0", "name": "no_negative_amount"},
    {"sql": {"query": "select avg(amount) from {table}", "min": 0, "max": 100000}, "name": "mean_amount"},
    {"row_count_change": {"max_drop": 0.5}},
]


def size() -> int:
    return int(1_000_000 * scale())


def prepare(root: Path, n: int) -> dict[str, Any]:
    """The orders table (two snapshots: all rows but the last 1%, then the rest) and the customers
    table, made once per size. Returns the table names and snapshot ids."""
    marker = root / f"tables-{n}.json"
    if marker.exists():
        doc: dict[str, Any] = json.loads(marker.read_text())
        return doc
    import pyarrow as pa

    catalog = _catalog(root)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    data = base_rows(n)
    customers = pa.table({"customer_id": pa.array(range(CUSTOMERS), pa.int64())})
    ctab = catalog.create_table(f"{NAMESPACE}.customers", schema=customers.schema)
    ctab.append(customers)
    name = f"{NAMESPACE}.orders_{n}"
    table = catalog.create_table(name, schema=data.schema, properties={"write.target-file-size-bytes": str(64 << 20)})
    cut = n - max(1, n // 100)
    table.append(data.slice(0, cut))
    previous = table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    table.append(data.slice(cut))
    table = catalog.load_table(name)
    doc = {"table": name, "snapshot": table.current_snapshot().snapshot_id, "previous": previous}  # type: ignore[union-attr]
    marker.write_text(json.dumps(doc))
    return doc


# ------------------------------------------------------------------------------------ peers (children)


def _peer_icefield(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    from icefield.config.gates import parse_gates
    from icefield.quality.gates import GateContext, run_gates

    catalog = _catalog(root)
    gates = parse_gates(GATES)
    t0 = time.perf_counter()
    table = catalog.load_table(doc["table"])
    ctx = GateContext(catalog, table, doc["table"], doc["snapshot"], doc["previous"], "main", "bench", "bench")
    results = run_gates(gates, ctx)
    seconds = time.perf_counter() - t0
    by = {r.check: r for r in results}
    rows = int(by["row_count"].value or 0)
    measures = {
        "rows": rows,
        "null_notes": round((by["null_ratio(note)"].value or 0) * rows),
        "distinct_keys": round((by["distinct_ratio(order_id)"].value or 0) * rows),
        "bad_status": int(by["accepted_values(status)"].value or 0),
        "orphans": int(by["references(customer_id)"].value or 0),
        "negative": int(by["no_negative_amount"].value or 0),
        "statuses": sorted({r.status for r in results}),
        "gates": len(results),
    }
    return {"seconds": seconds, "result": measures}


def _files(root: Path, doc: dict[str, Any]) -> list[str]:
    table = _catalog(root).load_table(doc["table"])
    return [t.file.file_path.removeprefix("file://") for t in table.scan(snapshot_id=doc["snapshot"]).plan_files()]


def _peer_duckdb(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    files = _files(root, doc)
    customers = [t.file.file_path.removeprefix("file://") for t in _catalog(root).load_table(f"{NAMESPACE}.customers").scan().plan_files()]
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(f"create view o as select * from read_parquet({files!r})")
    con.execute(f"create view c as select * from read_parquet({customers!r})")
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    rows, nulls, distinct, bad, newest, negative, mean = con.execute(
        f"select count(*), count(*) - count(note), count(distinct order_id), count(*) filter (where status not in ({statuses})), "
        "max(updated_at), count(*) filter (where amount < 0), avg(amount) from o"
    ).fetchall()[0]
    (orphans,) = con.execute("select count(*) from o where customer_id is not null and not exists (select 1 from c where c.customer_id = o.customer_id)").fetchall()[0]
    seconds = time.perf_counter() - t0
    con.close()
    return {"seconds": seconds, "result": {"rows": rows, "null_notes": nulls, "distinct_keys": distinct, "bad_status": bad, "orphans": orphans, "negative": negative}}


def _peer_gx(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    import tempfile
    import warnings

    import pyarrow.parquet as pq

    from icefield.quality.expectations import run_suite

    files = _files(root, doc)
    customers = list(range(CUSTOMERS))
    suite = {
        "name": "bench",
        "expectations": [
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "note", "mostly": 0.99}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "order_id"}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "status", "value_set": STATUSES}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "customer_id", "value_set": customers}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 0}},
            {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "amount", "min_value": 0, "max_value": 100000}},
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(suite, fh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations  # noqa: F401  (imported before the clock, like the other peers' libraries)
    t0 = time.perf_counter()
    data = pq.read_table(files)
    outcomes = run_suite(Path(fh.name), data)
    seconds = time.perf_counter() - t0
    by = {o.name: o for o in outcomes}
    result = {
        "rows": int(by["expect_table_row_count_to_be_between"].value or 0),
        "null_notes": int(by["expect_column_values_to_not_be_null(note)"].value or 0),
        "bad_status": int(by["expect_column_values_to_be_in_set(status)"].value or 0),
        "orphans": int(by["expect_column_values_to_be_in_set(customer_id)"].value or 0),
        "negative": int(by["expect_column_values_to_be_between(amount)"].value or 0),
    }
    return {"seconds": seconds, "result": result}


PEERS = {"icefield": _peer_icefield, "duckdb": _peer_duckdb, "gx": _peer_gx}


def child(args: dict[str, Any]) -> None:
    with tuned_if(args["peer"] == "icefield"):
        res = PEERS[args["peer"]](Path(args["root"]), args["doc"])
    emit(res["seconds"], res["result"])


# ------------------------------------------------------------------------------------ driver


def gx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("great_expectations") is not None


def run() -> list[dict[str, Any]]:
    n = size()
    root = work_dir("gates")
    peers = ["icefield", "duckdb"] + (["gx"] if gx_available() and os.environ.get("BENCH_GX") == "1" else [])
    slow_timeout = float(os.environ.get("BENCH_PEER_TIMEOUT", "300"))
    print(f"Gates: {len(GATES)} gates over {n:,} rows (+ {CUSTOMERS:,} customers); peers {', '.join(peers)}; machine {machine()}")
    doc = prepare(root, n)
    row: dict[str, Any] = {"case": f"{len(GATES)} gates over {n:,} rows", "rows": n}
    measures: dict[str, dict[str, Any]] = {}
    for peer in peers:
        timeout = slow_timeout if peer == "gx" else None
        done = measure_runs("bench.gates", lambda _, p=peer: {"peer": p, "root": str(root), "doc": doc}, runs() if peer != "gx" else 1, timeout)
        if done.timed_out:
            row[f"{peer}_timeout"] = slow_timeout
        if done.result:
            measures[peer] = done.result
        row[f"{peer}_s"] = done.median_s()
        row[f"{peer}_rss_mb"] = done.peak_mb()
    ref = measures.get("icefield", {})
    shared = ["rows", "null_notes", "bad_status", "orphans", "negative"]
    row["same_result"] = bool(ref) and all(all(m.get(k) == ref.get(k) for k in shared if k in m) for m in measures.values())
    row["same_result"] = row["same_result"] and measures.get("duckdb", {}).get("distinct_keys") == ref.get("distinct_keys")
    row["measures"] = measures
    for peer in peers[1:]:
        if row.get(f"{peer}_s") and row.get("icefield_s"):
            row[f"{peer}/icefield"] = round(row[f"{peer}_s"] / row["icefield_s"], 2)
        elif row.get(f"{peer}_timeout") and row.get("icefield_s"):
            row[f"{peer}/icefield"] = f">{round(row[f'{peer}_timeout'] / row['icefield_s'], 1)}"
    cols = ["case", *[f"{p} s" for p in peers], *[f"{p}/icefield" for p in peers[1:]], "icefield peak MB", "same result"]
    print_table(
        "Gates (medians; ratios = peer time / icefield time; duckdb = the same SQL by hand, the limit)",
        cols,
        [[row["case"], *[row.get(f"{p}_s") or f">{row.get(f'{p}_timeout', 0):.0f}" for p in peers], *[row.get(f"{p}/icefield", "-") for p in peers[1:]], row.get("icefield_rss_mb"), "yes" if row["same_result"] else "NO"]],
    )
    return [row]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        out = run()
        (work_dir("gates") / "results.json").write_text(json.dumps(out, indent=2))
