"""W1 and W2 on S3: the same icefield load and merge with the warehouse on the real S3 server (versitygw on
127.0.0.1, started here from the stack) beside the local folder, as a ratio, with what bounds the S3 case.

- W1: the 8 Parquet files of ``bench.w1_load`` (1M rows x BENCH_SCALE) appended by a ``files`` pipeline
  (one commit), into a fresh catalog and warehouse each run.
- SQL: ``icefield sql``'s read path on the W2 base table: a scan of two columns over every row, and a
  key-range lookup of 100 rows that DuckDB prunes to one row group per file.
- W2: ``bench.w2_merge``'s base table (1M rows x BENCH_SCALE, unpartitioned) made once per store, then
  100k x BENCH_SCALE uniform changes merged into a fresh clone (registered on the base table's metadata)
  each run, copy-on-write and merge-on-read.

Each run is a child process (``python -m bench.s3_store '<json>'``) that reports its wall seconds, its own
CPU seconds (user + system) and the bytes it added; the driver adds the S3 server's CPU seconds over the
run (``/proc/<pid>/stat``). Where the time goes on S3 follows: client CPU + server CPU close to the wall
time on 2 cores means CPU-bound (the loopback "network" is memory copies); far below it means waiting on
requests (latency, one request at a time); bytes / wall gives the throughput. Every result is checked:
W1's row count and W2's digest equal the local run's.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    emit,
    machine,
    measure_subprocess,
    median,
    print_table,
    runs,
    scale,
    table_digest,
    tuned_if,
    work_dir,
)

CATALOG = "icefield"
BUCKET = "bench"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _catalog(args: dict[str, Any]) -> Any:
    from icefield.catalog import sql_catalog

    return sql_catalog(CATALOG, f"sqlite:///{args['catalog_db']}", args["warehouse"], **args.get("props", {}))


# ------------------------------------------------------------------------------------ children


def _w1(args: dict[str, Any]) -> dict[str, Any]:
    import icefield

    out = Path(args["out"])
    (out / "pipelines").mkdir(parents=True)
    folder = str(Path(args["files"][0]).parent)
    project: dict[str, Any] = {"name": "w1s3", "catalog": {"name": CATALOG}, "warehouse": args["warehouse"]}
    if args.get("storage"):
        project["storage"] = args["storage"]
    (out / "icefield.yaml").write_text(json.dumps(project))
    pipe = {
        "name": "orders",
        "source": {"type": "files", "path": f"{folder}/*.parquet", "roots": [folder], "format": "parquet", "group_files": True},
        "target": {"table": "bench.orders", "mode": "append"},
        "batch_size": 1_000_000,
    }
    (out / "pipelines" / "orders.yaml").write_text(json.dumps(pipe))
    p = icefield.load_project(out)
    cpu0, t0 = _cpu(), time.perf_counter()
    res = icefield.run_pipeline(p, "orders")
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {"seconds": seconds, "cpu": cpu, "rows": res.rows_committed, "bytes": sum(b.bytes_added for b in res.batches)}


def _w2(args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    catalog = _catalog(args)
    table = catalog.load_table(args["table"])
    with table.transaction() as tx:
        tx.set_properties({"write.merge.mode": args["mode"], "write.update.mode": args["mode"], "write.delete.mode": args["mode"]})
    changes = pq.read_table(args["changes"])
    target = TargetConfig(table=args["table"], mode="merge", keys=["order_id"], delete_column="_deleted")
    cpu0, t0 = _cpu(), time.perf_counter()
    res = TableWriter(catalog, target, "bench", LocalEngine()).commit(changes, f"bench-{time.time_ns()}", None, "bench")
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    digest = table_digest(catalog.load_table(args["table"]).scan().to_arrow(), "order_id")
    return {"seconds": seconds, "cpu": cpu, "bytes": res.bytes_added, "read": res.bytes_read, "digest": digest["hash"], "rows": digest["rows"]}


def _query(args: dict[str, Any]) -> dict[str, Any]:
    """``icefield sql``'s path: the table's views on a locked DuckDB connection, then the query."""
    from icefield.query import connect, query

    catalog = _catalog(args)
    cpu0, t0 = _cpu(), time.perf_counter()
    with connect(catalog, args["sql"]) as views:
        got = query(views.con, args["sql"])
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    rows = got.to_pylist()
    return {"seconds": seconds, "cpu": cpu, "bytes": 0, "rows": len(rows), "digest": json.dumps(rows, default=str)}


def child(args: dict[str, Any]) -> None:
    with tuned_if(True):
        res = {"w1": _w1, "w2": _w2, "query": _query}[args["workload"]](args)
    emit(res.pop("seconds"), res)


# ------------------------------------------------------------------------------------ driver


def _stores(server: Any, settings: Any, root: Path) -> dict[str, dict[str, Any]]:
    storage = settings.storage()
    props = {
        "s3.endpoint": storage["endpoint"], "s3.region": storage["region"], "s3.path-style-access": "true",
        "s3.access-key-id": storage["access_key"], "s3.secret-access-key": storage["secret_key"],
    }
    return {
        "local": {"warehouse": (root / "local-wh").resolve().as_uri(), "storage": None, "props": {}},
        "s3": {"warehouse": f"s3://{BUCKET}/wh", "storage": storage, "props": props},
    }


def _base(store: dict[str, Any], root: Path, name: str, n: int) -> str:
    """The W2 base table in ``store`` (made once per driver run); its metadata location."""
    from bench.w2_merge import base_rows

    catalog = _catalog({**store, "catalog_db": root / f"{name}.db"})
    catalog.create_namespace_if_not_exists("bench")
    ident = f"bench.base_{n}"
    if catalog.table_exists(ident):
        return str(catalog.load_table(ident).metadata_location)
    data = base_rows(n)
    table = catalog.create_table(ident, schema=data.schema, properties={"write.target-file-size-bytes": str(32 << 20)})
    table.append(data)
    return str(catalog.load_table(ident).metadata_location)


def _measured(args: dict[str, Any], server_pid: int) -> dict[str, Any]:
    before = _server_cpu(server_pid)
    meas = measure_subprocess("bench.s3_store", args)
    assert meas is not None
    return {"seconds": meas.seconds, "server_cpu": _server_cpu(server_pid) - before, **meas.result}


def run() -> list[dict[str, Any]]:
    import pyarrow.parquet as pq
    from stack import S3Server

    from bench.w1_load import prepare_files
    from bench.w2_merge import change_rows

    n = int(1_000_000 * scale())
    m = int(100_000 * scale())
    root = work_dir("s3")
    reps = runs()
    print(f"S3 vs local folder: W1 {n:,} rows, W2 {m:,} changes into {n:,} rows; {reps} runs each; machine {machine()}")
    files = prepare_files(work_dir("w1"), n)
    changes = root / f"changes-{n}-{m}.parquet"
    if not changes.exists():
        pq.write_table(change_rows(n, m, False), changes)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3-", dir=root) as tmp:
        state = Path(tmp)
        server = S3Server(state / "stack", port=_free_port())
        server.up(timeout=120)
        try:
            settings = server.provision(BUCKET, writer_key="bench-writer", reader_key="bench-reader")
            pid = server.status().pid
            assert pid is not None
            stores = _stores(server, settings, state)
            cases: list[tuple[str, dict[str, Any]]] = [("W1 load (append, 1 commit)", {"workload": "w1", "files": files})]
            bases = {k: _base(s, state, k, n) for k, s in stores.items()}
            for mode in ("copy-on-write", "merge-on-read"):
                cases.append((f"W2 merge {m:,} uniform changes, {mode}", {"workload": "w2", "mode": mode, "changes": str(changes)}))
            # icefield sql on the base table: a scan of two columns, and a point lookup (row groups pruned).
            for label, sql in (
                ("SQL: sum of one column over all rows", f"select count(*) as n, sum(amount) as s from bench.base_{n}"),
                ("SQL: 100 rows by key range (pruned)", f"select order_id, note from bench.base_{n} where order_id between {n // 2} and {n // 2 + 99} order by 1"),
            ):
                cases.append((label, {"workload": "query", "sql": sql}))
            for label, case in cases:
                row: dict[str, Any] = {"case": label}
                for kind, store in stores.items():
                    got = []
                    for r in range(reps):
                        args = {**case, **store, "catalog_db": str(state / f"{kind}.db")}
                        if case["workload"] == "query":
                            args["catalog_db"] = str(state / f"{kind}.db")
                        elif case["workload"] == "w1":
                            args["out"] = str(state / f"w1-{kind}-{r}-{time.time_ns()}")
                            args["catalog_db"] = str(Path(args["out"]) / ".icefield" / "catalog.db")
                        else:
                            catalog = _catalog(args)
                            ident = f"bench.clone_{kind}_{case['mode'].replace('-', '_')}_{r}"
                            if catalog.table_exists(ident):
                                catalog.drop_table(ident)
                            catalog.register_table(ident, bases[kind])
                            args["table"] = ident
                        got.append(_measured(args, pid))
                    mid = sorted(got, key=lambda g: g["seconds"])[len(got) // 2]
                    row[kind] = {"seconds": round(median([g["seconds"] for g in got]), 3), **{k: mid[k] for k in mid if k != "seconds"}}
                local, s3 = row["local"], row["s3"]
                assert local["rows"] == s3["rows"] and local.get("digest") == s3.get("digest"), f"{label}: S3 and local results differ"
                row["ratio"] = round(s3["seconds"] / local["seconds"], 2)
                results.append(row)
                _print(results)
        finally:
            server.stop()
    (root / "results.json").write_text(json.dumps({"machine": machine(), "scale": scale(), "results": results}, indent=2))
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _print(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        s3 = r["s3"]
        mb = s3["bytes"] / 1e6
        rows.append([
            r["case"], f"{r['local']['seconds']:.2f}", f"{s3['seconds']:.2f}", f"{r['ratio']:.2f}",
            f"{s3['cpu']:.2f}", f"{s3['server_cpu']:.2f}", f"{mb:.1f}", f"{mb / s3['seconds']:.1f}",
        ])
    print_table(
        "S3 (versitygw, loopback) vs local folder",
        ["case", "local s", "S3 s", "S3/local", "client CPU s", "server CPU s", "MB written", "MB/s"],
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        run()
