"""W7: W1 and W2 on the Spark engine (``engine: spark``, ``local[2]``) beside the local engine, and the size at
which Spark's per-run overhead pays off.

- W1: ``bench.w1_load``'s 8 Parquet files at several sizes (default 100k, 1M and 4M rows x BENCH_SCALE;
  ``BENCH_W7_W1`` lists others), appended by a ``files`` pipeline (``group_files``, batches of 1M rows) into
  a fresh project each run.
- W2: ``bench.w2_merge``'s unpartitioned base table (default 250k and 1M rows x BENCH_SCALE; ``BENCH_W7_W2``)
  and 10% of its size in uniform changes (75% updates, 20% inserts, 5% deletes) in one Parquet file, merged
  by a ``files`` pipeline (``mode: merge``, ``keys: [order_id]``, ``delete_column: _deleted``) into a fresh
  clone of the base table (registered on its metadata), copy-on-write.

Each run is ``icefield.run_pipeline`` in a child process of its own (``python -m bench.w7_spark '<json>'``), as
a pipeline run is: ``BENCH_RUNS`` runs on the local engine (median), ``BENCH_W7_SPARK_RUNS`` (default 1) on
Spark, the slow peer, as in the other workloads. On Spark the child first starts the engine's session
(``project_session``: the JVM, the Iceberg runtime, the JDBC catalog) and times it apart from the run: a
process pays the session start once, each batch its own Spark work (each batch's seconds are reported). Every result is checked: the table's row count and content hash
(``bench.common.table_digest``) on Spark equal the local engine's.

The fit: per workload and engine, least squares of seconds = a + b * rows over the measured sizes (total =
session start + run; and the run alone, what a process that already has a session pays). The crossover is
the size where Spark's line drops below the local engine's, (a_spark - a_local) / (b_local - b_spark), when
Spark's slope is the smaller one; it is an extrapolation when it lies beyond the largest measured size.
"""

from __future__ import annotations

import json
import os
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
ENGINES = ("local", "spark")
MASTER = "local[2]"
DRIVER_MEMORY = "4g"


def _sizes(env: str, default: list[int]) -> list[int]:
    if os.environ.get(env):
        return [int(float(x)) for x in os.environ[env].split(",")]
    return [int(x * scale()) for x in default]


# ------------------------------------------------------------------------------------ child


def _project(out: Path, engine: str, warehouse: str | None, pipe: dict[str, Any]) -> Any:
    import icefield

    (out / "pipelines").mkdir(parents=True)
    cfg: dict[str, Any] = {"name": "w7", "engine": engine, "catalog": {"name": CATALOG}, "spark": {"master": MASTER, "memory": DRIVER_MEMORY}}
    if warehouse:
        cfg["warehouse"] = warehouse
    (out / "icefield.yaml").write_text(json.dumps(cfg))
    (out / "pipelines" / f"{pipe['name']}.yaml").write_text(json.dumps(pipe))
    return icefield.load_project(out)


def child(args: dict[str, Any]) -> None:
    import icefield
    from icefield.catalog import open_catalog

    with tuned_if(True):
        out = Path(args["out"])
        if args["workload"] == "w1":
            folder = str(Path(args["files"][0]).parent)
            pipe = {
                "name": "orders",
                "source": {"type": "files", "path": f"{folder}/*.parquet", "roots": [folder], "format": "parquet", "group_files": True},
                "target": {"table": "bench.orders", "mode": "append"},
                "batch_size": 1_000_000,
            }
            project = _project(out, args["engine"], None, pipe)
            ident = "bench.orders"
            open_catalog(project)
        else:
            folder = str(Path(args["changes"]).parent)
            ident = f"bench.merged_{args['engine']}"
            pipe = {
                "name": "changes",
                "source": {"type": "files", "path": f"{folder}/*.parquet", "roots": [folder], "format": "parquet", "file_column": None},
                "target": {"table": ident, "mode": "merge", "keys": ["order_id"], "delete_column": "_deleted"},
                "batch_size": 10_000_000,
            }
            project = _project(out, args["engine"], args["warehouse"], pipe)
            catalog = open_catalog(project)
            catalog.create_namespace_if_not_exists("bench")
            table = catalog.register_table(ident, args["metadata"])
            mode = "copy-on-write"
            with table.transaction() as tx:
                tx.set_properties({"write.merge.mode": mode, "write.update.mode": mode, "write.delete.mode": mode})
        session = 0.0
        if args["engine"] == "spark":
            from icefield.engines.spark_session import project_session

            t0 = time.perf_counter()
            project_session(project)
            session = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = icefield.run_pipeline(project, pipe["name"])
        seconds = time.perf_counter() - t0
        if res.status != "success":
            raise SystemExit(f"{args['workload']} on {args['engine']} failed: {res.error}")
        digest = table_digest(open_catalog(project).load_table(ident).scan().to_arrow(), "order_id")
    batch_seconds = [round(b.seconds, 3) for b in res.batches]
    emit(seconds, {"session": session, "batches": len(res.batches), "batch_seconds": batch_seconds, "rows_committed": res.rows_committed, **digest})


# ------------------------------------------------------------------------------------ driver


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``seconds = a + b * rows`` through ``points`` (rows, seconds): ``(a, b)``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def crossover(local: tuple[float, float], spark: tuple[float, float], largest: int) -> dict[str, Any]:
    """Where Spark's line drops below the local engine's: rows, and whether that is within the measured sizes
    (``measured``) or beyond them (``extrapolated``); ``none`` when Spark's slope is not the smaller one."""
    (al, bl), (asp, bs) = local, spark
    if bs >= bl:
        return {"rows": None, "kind": "none"}
    rows = (asp - al) / (bl - bs)
    return {"rows": max(0, round(rows)), "kind": "measured" if rows <= largest else "extrapolated"}


def _measure(case: dict[str, Any], engine: str, tmp: Path, reps: int) -> dict[str, Any]:
    got = []
    for r in range(reps):
        args = {**case, "engine": engine, "out": str(tmp / f"{case['workload']}-{case['rows']}-{engine}-{r}-{time.time_ns()}")}
        meas = measure_subprocess("bench.w7_spark", args)
        assert meas is not None
        got.append({"run": meas.seconds, "peak_rss_mb": meas.peak_rss_mb, **meas.result})
    mid = sorted(got, key=lambda g: g["run"] + g["session"])[len(got) // 2]
    return {
        "run": round(median([g["run"] for g in got]), 3),
        "session": round(median([g["session"] for g in got]), 3),
        "total": round(median([g["run"] + g["session"] for g in got]), 3),
        **{k: mid.get(k) for k in ("batches", "batch_seconds", "rows_committed", "rows", "hash", "peak_rss_mb")},
    }


def run() -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from bench.w1_load import prepare_files
    from bench.w2_merge import change_rows, prepare

    w1_sizes = _sizes("BENCH_W7_W1", [100_000, 1_000_000, 4_000_000])
    w2_sizes = _sizes("BENCH_W7_W2", [250_000, 1_000_000])
    reps = runs()
    spark_reps = int(os.environ.get("BENCH_W7_SPARK_RUNS", "1"))
    root = work_dir("w7")
    print(
        f"W7 Spark engine ({MASTER}) vs local engine: W1 {w1_sizes}, W2 {w2_sizes} (10% changes); "
        f"{reps} runs on local, {spark_reps} on Spark; machine {machine()}"
    )
    cases: list[dict[str, Any]] = []
    for n in w1_sizes:
        cases.append({"workload": "w1", "rows": n, "files": prepare_files(work_dir("w1"), n)})
    w2_root = root / "w2"
    w2_root.mkdir(exist_ok=True)
    for n in w2_sizes:
        meta = prepare(w2_root, False, n)
        folder = w2_root / f"changes-{n}"
        changes = folder / "changes.parquet"
        if not changes.exists():
            folder.mkdir(exist_ok=True)
            pq.write_table(change_rows(n, n // 10, False), changes)
        cases.append({"workload": "w2", "rows": n, "metadata": meta, "changes": str(changes), "warehouse": (w2_root / "warehouse").resolve().as_uri()})
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="w7-", dir=root) as tmp:
        for case in cases:
            row: dict[str, Any] = {"workload": case["workload"], "rows": case["rows"]}
            for engine in ENGINES:
                row[engine] = _measure(case, engine, Path(tmp), reps if engine == "local" else spark_reps)
            local, spark = row["local"], row["spark"]
            assert (local["rows"], local["hash"]) == (spark["rows"], spark["hash"]), f"{case['workload']} {case['rows']}: Spark and local tables differ"
            row["ratio"] = round(spark["total"] / local["total"], 2)
            results.append(row)
            _print(results, [])
    fits = _fits(results)
    _print(results, fits)
    (root / "results.json").write_text(json.dumps({"machine": machine(), "scale": scale(), "results": results, "fits": fits}, indent=2))
    return [*results, *fits]


def _fits(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fits = []
    for workload in ("w1", "w2"):
        rows = [r for r in results if r["workload"] == workload]
        if len(rows) < 2:
            continue
        largest = max(r["rows"] for r in rows)
        for basis in ("total", "run"):
            lines = {e: fit([(r["rows"], r[e][basis]) for r in rows]) for e in ENGINES}
            fits.append({
                "workload": workload, "basis": basis,
                **{e: {"a": round(a, 3), "b_per_M": round(b * 1e6, 3)} for e, (a, b) in lines.items()},
                "crossover": crossover(lines["local"], lines["spark"], largest),
            })
    return fits


def _batches(side: dict[str, Any]) -> str:
    """The seconds of each batch: ``first`` alone, or ``first; next (mean of the others) x count``."""
    secs = side.get("batch_seconds") or []
    if len(secs) < 2:
        return ", ".join(f"{s:.2f}" for s in secs) or "-"
    rest = secs[1:]
    return f"{secs[0]:.2f}; {sum(rest) / len(rest):.2f} x{len(rest)}"


def _print(results: list[dict[str, Any]], fits: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        lo, sp = r["local"], r["spark"]
        rows.append([
            r["workload"].upper(), f"{r['rows']:,}", f"{lo['total']:.2f}", f"{sp['session']:.2f}", f"{sp['run']:.2f}",
            f"{sp['total']:.2f}", f"{r['ratio']:.2f}", _batches(lo), _batches(sp), "yes",
        ])
    print_table(
        f"Spark engine ({MASTER}) vs local engine, seconds (median)",
        ["workload", "rows", "local s", "spark session s", "spark run s", "spark total s", "spark/local", "local batches s", "spark batches s", "same table"],
        rows,
    )
    if not fits:
        return
    lines = []
    for f in fits:
        c = f["crossover"]
        where = "none (Spark's slope is not smaller)" if c["rows"] is None else f"{c['rows']:,} rows ({c['kind']})"
        lines.append([
            f["workload"].upper(), f["basis"], f"{f['local']['a']:.2f} + {f['local']['b_per_M']:.2f}/M",
            f"{f['spark']['a']:.2f} + {f['spark']['b_per_M']:.2f}/M", where,
        ])
    print_table("Fit: seconds = a + b x rows (b per million rows)", ["workload", "basis", "local", "spark", "crossover"], lines)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        run()
