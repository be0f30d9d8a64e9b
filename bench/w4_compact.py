"""W4 compaction: a table of 3,000 small files (x BENCH_SCALE) with merge-on-read deletes, compacted.

The table is built once: the rows of ``bench.w2_merge``'s orders (``ROWS_PER_FILE`` rows a file, keys in
file order) written as 3,000 small Parquet files and added in chunks (pyiceberg ``add_files``, one
snapshot a chunk), then an icefield merge-on-read merge that updates and deletes a few rows in every
tenth file (about 10% of the files get a position delete file; the updated rows land in a new data
file). Its metadata is saved; each run registers a fresh clone on it (same files, its own history) and
compacts it in its own process:

- icefield: :func:`icefield.write.compact.compact_table` with the table's target file size;
- Spark 4.1 local[2] (same JDBC catalog, same 2 cores): ``CALL <cat>.system.rewrite_data_files`` with
  ``min-input-files`` 2, ``delete-file-threshold`` 1 (a file with a delete is rewritten, as icefield
  does), ``remove-dangling-deletes`` true (the delete files of rewritten files go, as icefield's do)
  and the same ``target-file-size-bytes``, then ``rewrite_position_delete_files`` (``rewrite-all``):
  Iceberg's dangling-delete removal skips an unpartitioned table, whose delete files outlive the
  rewritten data files until that second call drops them; both calls are Spark's time (the first is
  reported apart too). Spark's session start and a warm-up rewrite of a tiny table are timed apart and
  excluded from its compaction time.

Every result is checked before a time is reported: the compacted table has the base table's row count
and content hash (the compaction changes no row), no delete file is left, and fewer data files remain.
Then each peer compacts one more clone, not timed, while a reader in the driver reads the whole table
again and again: no read may fail or return another row count (``BENCH_W4_READERS=0`` skips it).
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
    measure_subprocess,
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
ROWS_PER_FILE = 1_000
TARGET = 32 << 20  # bytes on disk of a compacted file (both peers)
CHUNK = 500  # files added per snapshot while building


def sizes() -> tuple[int, int]:
    """(files, rows a file)."""
    return max(10, int(3_000 * scale())), ROWS_PER_FILE


def _catalog(root: Path) -> Any:
    from icefield.catalog import sql_catalog

    return sql_catalog(CATALOG, f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri())


def _state(table: Any) -> dict[str, Any]:
    """Row count, content hash, and the data and delete files of the current snapshot."""
    digest = table_digest(table.scan().to_arrow(), "order_id")
    summary = table.current_snapshot().summary
    digest["data_files"] = int(summary["total-data-files"])
    digest["delete_files"] = int(summary["total-delete-files"])
    return digest


# ------------------------------------------------------------------------------------ setup


def prepare(root: Path, files: int, rows_per_file: int) -> dict[str, Any]:
    """Build the small-file table once; returns its metadata location and state (see the module doc)."""
    marker = root / f"base-{files}x{rows_per_file}.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    import duckdb
    import pyarrow.parquet as pq

    from bench.w2_merge import base_rows
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    t0 = time.perf_counter()
    catalog = _catalog(root)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    name = f"{NAMESPACE}.small_{files}x{rows_per_file}"
    if catalog.table_exists(name):
        catalog.drop_table(name)
    data = base_rows(files * rows_per_file)
    table = catalog.create_table(
        name,
        schema=data.schema,
        properties={"write.target-file-size-bytes": str(TARGET), "write.merge.mode": "merge-on-read"},
    )
    folder = Path(table.location().removeprefix("file://")) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"small-{i:05d}.parquet"
        pq.write_table(data.slice(i * rows_per_file, rows_per_file), path)
        paths.append(path.as_uri())
    for i in range(0, files, CHUNK):
        table.add_files(paths[i : i + CHUNK], check_duplicate_files=False)
    # The merge-on-read merge: in every tenth file, 5 rows updated and 1 deleted.
    con = duckdb.connect()
    try:
        con.register("base", data)
        changes = con.sql(f"""
            select order_id, customer_id, status, amount, order_date, updated_at,
                   'changed-' || note as note, (order_id % {rows_per_file}) = 7 as _deleted
            from base
            where (order_id // {rows_per_file}) % 10 = 3 and (order_id % {rows_per_file}) in (1, 250, 500, 750, 999, 7)
            order by order_id
        """).to_arrow_table()
    finally:
        con.close()
    target = TargetConfig(table=name, mode="merge", keys=["order_id"], delete_column="_deleted")
    TableWriter(catalog, target, "bench", LocalEngine()).commit(changes, "w4-setup", None, "bench")
    table = catalog.load_table(name)
    doc = {"metadata": table.metadata_location, "state": _state(table), "build_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(doc))
    return doc


def clone(root: Path, metadata: str, name: str) -> str:
    """A fresh table registered on the base table's metadata: same files, its own history."""
    catalog = _catalog(root)
    ident = f"{NAMESPACE}.{name}"
    if catalog.table_exists(ident):
        catalog.drop_table(ident)
    catalog.register_table(ident, metadata)
    return ident


# ------------------------------------------------------------------------------------ peers (children)


def _peer_icefield(root: Path, ident: str) -> dict[str, Any]:
    from icefield.write.compact import compact_table

    catalog = _catalog(root)
    t0 = time.perf_counter()
    res = compact_table(catalog, ident, target_file_size=TARGET)
    return {"seconds": time.perf_counter() - t0, "files_added": res.files_added}


def _peer_spark(root: Path, ident: str) -> dict[str, Any]:
    from stack.spark import spark_session

    memory = os.environ.get("BENCH_SPARK_MEMORY", "4g")
    t0 = time.perf_counter()
    spark = spark_session(CATALOG, f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri(), memory=memory)
    try:
        start = time.perf_counter() - t0
        # Warm the JVM up with a compaction of a tiny table (3 files, one with a delete), so the clock
        # measures a steady-state rewrite (the most favourable reading for Spark).
        t1 = time.perf_counter()
        warm = f"{CATALOG}.{NAMESPACE}.spark_warmup"
        spark.sql(f"CREATE OR REPLACE TABLE {warm} (order_id bigint, note string) USING iceberg "
                  "TBLPROPERTIES ('format-version'='2', 'write.delete.mode'='merge-on-read')")
        for v in ("(1, 'a')", "(2, 'b')", "(3, 'c')"):
            spark.sql(f"INSERT INTO {warm} VALUES {v}")
        spark.sql(f"DELETE FROM {warm} WHERE order_id = 2")
        spark.sql(f"CALL {CATALOG}.system.rewrite_data_files(table => '{NAMESPACE}.spark_warmup', "
                  "options => map('min-input-files', '2', 'delete-file-threshold', '1', 'remove-dangling-deletes', 'true'))").collect()
        spark.sql(f"CALL {CATALOG}.system.rewrite_position_delete_files(table => '{NAMESPACE}.spark_warmup', "
                  "options => map('rewrite-all', 'true'))").collect()
        warmup = time.perf_counter() - t1
        t2 = time.perf_counter()
        out = spark.sql(f"""
            CALL {CATALOG}.system.rewrite_data_files(table => '{ident}', options => map(
                'min-input-files', '2', 'delete-file-threshold', '1', 'remove-dangling-deletes', 'true',
                'target-file-size-bytes', '{TARGET}'))
        """).collect()
        rewrite = time.perf_counter() - t2
        # Iceberg's removal of dangling deletes skips an unpartitioned table: its position delete files
        # outlive the data files they point at until a rewrite of the delete files drops them. That
        # second call brings Spark to the state icefield's one compaction leaves, so it is timed too.
        spark.sql(f"CALL {CATALOG}.system.rewrite_position_delete_files(table => '{ident}', options => map('rewrite-all', 'true'))").collect()
        seconds = time.perf_counter() - t2
        return {
            "seconds": seconds, "rewrite_data_files_s": rewrite, "session_s": start, "warmup_s": warmup,
            "files_added": int(out[0]["added_data_files_count"]),
        }
    finally:
        spark.stop()


PEERS = {"icefield": _peer_icefield, "spark": _peer_spark}


def child(args: dict[str, Any]) -> None:
    root = Path(args["root"])
    with tuned_if(args["peer"] == "icefield"):
        res = PEERS[args["peer"]](root, args["table"])
    peak = peak_rss_mb()  # the compaction's own peak: the check below reads the whole table
    state = _state(_catalog(root).load_table(args["table"]))
    state.update({k: v for k, v in res.items() if k != "seconds"})
    emit(res["seconds"], state, peak_mb=peak)


# ------------------------------------------------------------------------------------ driver


def spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
        from stack import spark  # noqa: F401
    except ImportError:
        return False
    return True


def run() -> dict[str, Any]:
    files, per_file = sizes()
    root = work_dir("w4")
    peers = ["icefield"] + (["spark"] if spark_available() and os.environ.get("BENCH_SPARK", "1") == "1" else [])
    if os.environ.get("BENCH_W4_PEERS"):  # e.g. "icefield": measure icefield alone
        peers = [p for p in peers if p in os.environ["BENCH_W4_PEERS"].split(",")]
    timeout = float(os.environ.get("BENCH_PEER_TIMEOUT", "900"))
    print(f"W4 compaction: {files:,} files of {per_file:,} rows, target {TARGET >> 20} MB; peers {', '.join(peers)}; machine {machine()}")
    base = prepare(root, files, per_file)
    before = base["state"]
    print(f"  base table: {before['data_files']} data files, {before['delete_files']} delete files, {before['rows']:,} rows (built in {base.get('build_s')} s)")
    row: dict[str, Any] = {
        "case": f"{files:,} files x {per_file:,} rows, {before['delete_files']} delete files",
        "files_before": before["data_files"],
        "delete_files_before": before["delete_files"],
        "rows": before["rows"],
    }
    done: dict[str, Runs] = {}
    for peer in peers:
        done[peer] = measure_runs(
            "bench.w4_compact",
            lambda r, peer=peer: {"peer": peer, "root": str(root), "table": clone(root, base["metadata"], f"{peer}_{r}")},
            runs(),
            timeout=timeout if peer != "icefield" else None,
        )
        res = done[peer].result
        row[f"{peer}_s"] = None if done[peer].timed_out else done[peer].median_s()
        row[f"{peer}_runs_s"] = [round(s, 3) for s in done[peer].seconds]
        row[f"{peer}_rss_mb"] = done[peer].peak_mb()
        row[f"{peer}_files_after"] = res.get("data_files")
        row[f"{peer}_delete_files_after"] = res.get("delete_files")
        row[f"{peer}_ok"] = bool(res) and (
            res["rows"] == before["rows"] and res["hash"] == before["hash"] and res["delete_files"] == 0
            and res["data_files"] < before["data_files"]
        )
        if peer == "spark" and res:
            row["spark_session_s"] = round(res["session_s"], 2)
            row["spark_warmup_s"] = round(res["warmup_s"], 2)
            # the last run's split of its time (its result is the one kept): rewrite_data_files, then the rest
            row["spark_last_run_s"] = round(done[peer].seconds[-1], 3) if done[peer].seconds else None
            row["spark_last_rewrite_data_files_s"] = round(res["rewrite_data_files_s"], 3)
    if os.environ.get("BENCH_W4_READERS", "1") == "1":
        for peer in peers:
            row[f"{peer}_readers"] = readers_during(root, base["metadata"], peer, before["rows"], timeout)
    if row.get("spark_s") and row.get("icefield_s"):
        row["x_spark"] = round(row["spark_s"] / row["icefield_s"], 1)
    _print(row, peers)
    return row


def readers_during(root: Path, metadata: str, peer: str, rows: int, timeout: float) -> dict[str, Any]:
    """One more compaction by ``peer`` (not timed) while a reader in this process reads the whole table
    again and again (pyiceberg: load, plan, read); every read must succeed and return ``rows`` rows,
    before, during and after the compaction's commit. Returns the reads, the snapshots they saw, the
    failures (their messages)."""
    import threading

    ident = clone(root, metadata, f"{peer}_readers")
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def reader() -> None:
        catalog = _catalog(root)
        while not stop.is_set():
            try:
                table = catalog.load_table(ident)
                n = table.scan().to_arrow().num_rows
                seen.append(table.current_snapshot().snapshot_id)
                if n != rows:
                    failures.append(f"read {n} rows, expected {rows}")
            except Exception as e:  # a reader that fails is what this check is for
                failures.append(f"{type(e).__name__}: {e}"[:300])

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        measure_subprocess("bench.w4_compact", {"peer": peer, "root": str(root), "table": ident}, timeout=timeout)
    finally:
        stop.set()
        thread.join()
    return {"reads": len(seen) + len(failures), "snapshots": len(set(seen)), "failures": failures[:5], "failed": len(failures)}


def _print(row: dict[str, Any], peers: list[str]) -> None:
    cols = ["peer", "compaction s (median)", "runs s", "data files after", "delete files after", "peak MB", "same rows, no deletes", "reads during it (failed)"]
    rows = [
        [p, row.get(f"{p}_s"), row.get(f"{p}_runs_s"), row.get(f"{p}_files_after"), row.get(f"{p}_delete_files_after"),
         row.get(f"{p}_rss_mb"), "yes" if row.get(f"{p}_ok") else "NO",
         f"{row[f'{p}_readers']['reads']} ({row[f'{p}_readers']['failed']})" if f"{p}_readers" in row else "-"]
        for p in peers
    ]
    print_table(f"W4 compaction: {row['case']}, {row['rows']:,} rows, {row['files_before']} data files before", cols, rows)
    if "spark_session_s" in row:
        print(f"Spark session start {row['spark_session_s']} s and warm-up {row['spark_warmup_s']} s: excluded from its time")
    if "x_spark" in row:
        print(f"spark / icefield: {row['x_spark']}x (Spark's last run: {row['spark_last_run_s']} s, of which "
              f"rewrite_data_files {row['spark_last_rewrite_data_files_s']} s)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        out = run()
        (work_dir("w4") / "results.json").write_text(json.dumps(out, indent=2))
