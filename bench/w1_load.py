"""W1 bulk load: an orders table (1M rows x BENCH_SCALE) loaded into Iceberg from Parquet files and
from PostgreSQL.

Peers on the same input, each in its own process (fresh catalog and warehouse every run):

Parquet files (8 files under ``build/bench/w1/input/``)
- icefield: a project with a ``files`` pipeline (append), ``icefield.run_pipeline`` timed;
- pyiceberg: ``pyarrow.parquet.read_table`` of the files, then ``Table.append``, by hand;
- dlt 1.31 (isolated venv): its ``filesystem`` source piped to ``read_parquet(use_pyarrow=True)``
  into the ``filesystem`` destination with ``table_format="iceberg"``;
- limit: DuckDB ``COPY (SELECT * FROM read_parquet(...)) TO ... (FORMAT parquet, COMPRESSION zstd)``:
  the same bytes read and written, with no table format.

PostgreSQL (table ``orders`` in database ``w1`` of the stack's server)
- icefield: a ``sql`` pipeline, incremental on ``updated_at`` (append);
- by hand: ADBC read (``fetch_arrow_table``) + pyiceberg ``Table.append``;
- dlt 1.31: ``sql_database(backend="pyarrow")``, and ``backend="connectorx"`` when it installs;
- limit: ADBC read + ``pyarrow.parquet.write_table`` zstd (DuckDB cannot scan PostgreSQL offline).

Every result is read back (Iceberg tables with pyiceberg ``scan().to_arrow()``, Parquet with pyarrow)
in a separate process, reduced to the business columns cast to one schema, and hashed with
``bench.common.table_digest``; it must equal the digest of the input before its time is trusted.
A peer whose stored types differ from the source's says so in the table.

What dlt needs to write Iceberg: the ``pyiceberg`` extra (pyiceberg, sqlalchemy >= 2.0.18), the
``filesystem`` destination on a local ``bucket_url``, and ``table_format="iceberg"`` on ``pipeline.run``.
With no ``[iceberg_catalog]`` configured dlt uses an ephemeral in-memory SQLite catalog and registers
the table from its newest metadata file at each load; we read the table back from the metadata location
that ``dlt.common.libs.pyiceberg.get_iceberg_tables`` reports.

Peak memory is each child's own ``VmHWM``: ``bench.common.emit``'s ``ru_maxrss`` includes the driver's
peak (Linux keeps it across fork and exec).

``python -m bench.w1_load`` runs it; children are ``python -m bench.w1_load '<json>'``. This module
imports only the standard library at the top: the dlt child runs it inside dlt's own venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Measurement,
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

NAMESPACE = "bench"
CATALOG = "icefield"
FILES = 8
BATCH_SIZE = 1_000_000
PG_DB = "w1"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
DLT_REQS = PEERS_DIR / "dlt.txt"
DLT_CX_REQS = PEERS_DIR / "dlt-connectorx.txt"

# The source's columns and types: every result is cast to these before hashing.
COLUMNS = {
    "order_id": "int64",
    "customer_id": "int64",
    "status": "string",
    "amount": "decimal128(12, 2)",
    "order_date": "date32[day]",
    "updated_at": "timestamp[us]",
    "note": "string",
}
PG_DDL = """
    create table orders (order_id bigint not null, customer_id bigint, status text, amount numeric(12,2),
                         order_date date, updated_at timestamp, note text)
"""

# label, peer id, runs: "fast" = BENCH_RUNS (median), "slow" = 1
CASES: dict[str, list[tuple[str, str, str]]] = {
    "parquet": [
        ("icefield", "icefield", "fast"),
        ("pyiceberg append (pyarrow read), by hand", "pyiceberg", "fast"),
        ("dlt 1.31 filesystem/read_parquet (arrow)", "dlt", "slow"),
        ("limit: DuckDB COPY to Parquet zstd", "limit", "fast"),
    ],
    "postgres": [
        ("icefield", "icefield", "fast"),
        ("ADBC read + pyiceberg append, by hand", "pyiceberg", "fast"),
        ("dlt 1.31 sql_database pyarrow backend", "dlt", "slow"),
        ("dlt 1.31 sql_database connectorx backend", "dlt_cx", "slow"),
        ("limit: ADBC read + pyarrow write_table zstd", "limit", "fast"),
    ],
}


def rows() -> int:
    return int(1_000_000 * scale())


# ------------------------------------------------------------------------------------ input data


def _select(n: int, lo: int, hi: int) -> str:
    """Rows ``lo..hi-1`` of the ``n``-row table: the same rows as ``bench.w2_merge.base_rows(n)``."""
    return f"""
        select i::bigint as order_id,
               (hash(i, 1) % 100000)::bigint as customer_id,
               ['placed','paid','shipped','delivered','cancelled'][1 + (hash(i, 2) % 5)::int] as status,
               ((hash(i, 3) % 1000000)::bigint / 100)::decimal(12,2) as amount,
               (date '2025-01-01' + (i * 365 // {n})::int) as order_date,
               (timestamp '2025-01-01' + to_microseconds((i * (31536000000000 // {n}))::bigint)) as updated_at,
               'note-' || (hash(i, 4) % 1000)::varchar as note
        from range({lo}, {hi}) t(i) order by i
    """


def prepare_files(root: Path, n: int) -> list[str]:
    """``FILES`` Parquet files of consecutive order ids under ``root/input/<n>``; made once."""
    folder = root / "input" / str(n)
    marker = folder / "done.json"
    if marker.exists():
        return list(json.loads(marker.read_text())["files"])
    import duckdb

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = []
    con = duckdb.connect()
    try:
        for k in range(FILES):
            lo, hi = k * n // FILES, (k + 1) * n // FILES
            path = folder / f"orders-{k:02d}.parquet"
            con.execute(f"copy ({_select(n, lo, hi)}) to '{path}' (format parquet, compression zstd)")
            files.append(str(path))
    finally:
        con.close()
    marker.write_text(json.dumps({"files": files}))
    return files


def prepare_postgres(root: Path, n: int) -> tuple[Any, bool]:
    """Start the stack's PostgreSQL, make database ``w1`` with ``orders`` of ``n`` rows (kept when it
    already has them). Returns the launcher and whether this call started the server."""
    import duckdb
    import psycopg2
    from stack import Postgres

    pg = Postgres()
    started = pg.up()
    if pg.psql(f"select count(*) from pg_database where datname = '{PG_DB}'") == "0":
        pg.create_database(PG_DB)
    con = psycopg2.connect(pg.dsn(PG_DB))
    try:
        cur = con.cursor()
        cur.execute("select count(*) from pg_class where relname = 'orders' and relkind = 'r'")
        if cur.fetchone()[0]:
            cur.execute("select count(*), count(distinct order_id), min(order_id), max(order_id) from orders")
            if cur.fetchone() == (n, n, 0, n - 1):
                return pg, started
            cur.execute("drop table orders")
        print(f"loading {n:,} rows into PostgreSQL {PG_DB}.orders ...", flush=True)
        csv = root / "input" / f"orders-{n}.csv"
        duck = duckdb.connect()
        try:
            duck.execute(f"copy ({_select(n, 0, n)}) to '{csv}' (format csv, header false)")
        finally:
            duck.close()
        cur.execute(PG_DDL)
        with csv.open() as f:
            cur.copy_expert("copy orders from stdin with (format csv)", f)
        cur.execute("alter table orders add primary key (order_id)")
        # A cursor column of an incremental source is indexed in any real database.
        cur.execute("create index orders_updated_at on orders (updated_at)")
        con.commit()
        csv.unlink()
        con.autocommit = True
        cur.execute("vacuum analyze orders")
    finally:
        con.close()
    return pg, started


def adbc_uri(pg: Any) -> str:
    return f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{PG_DB}"


# ------------------------------------------------------------------------------------ dlt venv


def _cache_dir() -> Path:
    if os.environ.get("ICEFIELD_CACHE"):
        return Path(os.environ["ICEFIELD_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "icefield"


def dlt_venv() -> tuple[Path | None, bool, str]:
    """The dlt venv's python (built once from ``bench/peers/dlt.txt``), whether connectorx is in it, and
    a note when it cannot be built."""
    venv = _cache_dir() / "bench-venvs" / "dlt"
    python = venv / "bin" / "python"
    want = hashlib.sha256(DLT_REQS.read_bytes() + DLT_CX_REQS.read_bytes()).hexdigest()
    stamp = venv / ".bench-stamp.json"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".dlt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and python.exists():
            doc = json.loads(stamp.read_text())
            if doc.get("requirements") == want:
                return python, bool(doc.get("connectorx")), ""
        print(f"building the dlt venv in {venv} ...", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        try:
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
            subprocess.run([*pip, "-r", str(DLT_REQS)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            shutil.rmtree(venv, ignore_errors=True)
            return None, False, f"dlt venv failed: {(e.stderr or '')[-300:]}"
        cx = subprocess.run([*pip, "-r", str(DLT_CX_REQS)], capture_output=True, text=True).returncode == 0
        stamp.write_text(json.dumps({"requirements": want, "connectorx": cx}))
        return python, cx, ""


def measure_with(python: Path, args: dict[str, Any], timeout: float | None) -> Measurement | None:
    """``bench.common.measure_subprocess`` with another interpreter (a peer's own venv)."""
    return measure_subprocess("bench.w1_load", args, timeout=timeout, python=python)


# ------------------------------------------------------------------------------------ peers (children)


def _catalog(out: Path) -> Any:
    from icefield.catalog import sql_catalog

    return sql_catalog(CATALOG, f"sqlite:///{out / 'catalog.db'}", (out / "warehouse").resolve().as_uri())


def _warm_imports(case: str) -> None:
    """Import before the clock what a peer imports lazily, so no peer is timed loading modules."""
    import contextlib
    import importlib

    mods = [
        "pyarrow.parquet",
        "pyiceberg.catalog.sql",
        "pyiceberg.io.pyarrow",
        "pyiceberg.table",
        "sqlalchemy",
    ]
    if case == "postgres":
        mods += ["adbc_driver_postgresql.dbapi", "psycopg2"]
    for mod in mods:
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)


def _peer_icefield(a: dict[str, Any], out: Path) -> dict[str, Any]:
    import icefield

    _warm_imports(a["case"])

    if a["case"] == "parquet":
        name = "orders_files"
        # A drop of new files: they share a batch, so the load is one commit (as the peers make).
        folder = str(Path(a["files"][0]).parent)  # outside the project: a declared root
        source = {"type": "files", "path": f"{folder}/*.parquet", "roots": [folder], "format": "parquet", "group_files": True}
    else:
        name = "orders_pg"
        source = {"type": "sql", "url": a["pg_url"], "table": "orders", "cursor": "updated_at"}
    (out / "pipelines").mkdir(parents=True)
    (out / "icefield.yaml").write_text(json.dumps({"name": "w1", "catalog": {"name": CATALOG}}))
    pipe = {
        "name": name,
        "source": source,
        "target": {"table": f"{NAMESPACE}.{name}", "mode": "append"},
        "batch_size": BATCH_SIZE,
    }
    (out / "pipelines" / f"{name}.yaml").write_text(json.dumps(pipe))  # JSON is YAML
    project = icefield.load_project(out)
    t0 = time.perf_counter()
    res = icefield.run_pipeline(project, name)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "locator": {
            "kind": "catalog",
            "root": str(out / ".icefield"),
            "ident": f"{NAMESPACE}.{name}",
            "catalog_db": "catalog.db",
        },
        "info": {
            "batches": len(res.batches),
            "rows_committed": res.rows_committed,
            "quarantined": res.rows_quarantined,
        },
    }


def _adbc_orders(uri: str) -> Any:
    import adbc_driver_postgresql.dbapi as pgdb

    with pgdb.connect(uri) as con, con.cursor() as cur:
        cur.execute("select * from orders")
        return cur.fetch_arrow_table()


def _typed(t: Any) -> Any:
    """The source's types, by hand: ADBC gives NUMERIC as an opaque string extension type."""
    import pyarrow as pa

    cols = []
    for name in t.column_names:
        col = t.column(name)
        if isinstance(col.type, pa.ExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], col.type.storage_type)
        if name in COLUMNS and str(col.type) != COLUMNS[name]:
            col = col.cast(_arrow_type(COLUMNS[name]))
        cols.append(col)
    return pa.table(cols, names=t.column_names)


def _peer_pyiceberg(a: dict[str, Any], out: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    _warm_imports(a["case"])
    catalog = _catalog(out)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    ident = f"{NAMESPACE}.orders"
    t0 = time.perf_counter()
    data = pq.read_table(a["files"]) if a["case"] == "parquet" else _typed(_adbc_orders(a["adbc_uri"]))
    table = catalog.create_table(ident, schema=data.schema)
    table.append(data)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "locator": {"kind": "catalog", "root": str(out), "ident": ident, "catalog_db": "catalog.db"},
    }


def _peer_limit(a: dict[str, Any], out: Path) -> dict[str, Any]:
    _warm_imports(a["case"])
    target = out / "orders.parquet"
    out.mkdir(parents=True, exist_ok=True)
    if a["case"] == "parquet":
        import duckdb

        con = duckdb.connect()
        files = ", ".join(f"'{f}'" for f in a["files"])
        t0 = time.perf_counter()
        con.execute(
            f"copy (select * from read_parquet([{files}])) to '{target}' (format parquet, compression zstd)"
        )
        seconds = time.perf_counter() - t0
        con.close()
    else:
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        pq.write_table(_typed(_adbc_orders(a["adbc_uri"])), target, compression="zstd")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "locator": {"kind": "parquet", "paths": [str(target)]}}


def _peer_dlt(a: dict[str, Any], out: Path) -> dict[str, Any]:
    """Runs in dlt's own venv: only dlt, pyarrow and the standard library here."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DLT_DATA_DIR", str(out / "dlt-data"))
    import dlt
    from dlt.common.libs.pyiceberg import get_iceberg_tables
    from dlt.destinations import filesystem
    from dlt.sources.filesystem import filesystem as files_source
    from dlt.sources.filesystem import read_parquet
    from dlt.sources.sql_database import sql_database

    _warm_imports(a["case"])
    pipeline = dlt.pipeline(
        pipeline_name="w1",
        pipelines_dir=str(out / "dlt-pipelines"),
        destination=filesystem(bucket_url=str(out / "lake")),
        dataset_name=NAMESPACE,
    )
    t0 = time.perf_counter()
    if a["case"] == "parquet":
        folder = str(Path(a["files"][0]).parent)
        data = (
            files_source(bucket_url=folder, file_glob="*.parquet")
            | read_parquet(use_pyarrow=True, chunksize=BATCH_SIZE)
        ).with_name("orders")
    else:
        data = sql_database(credentials=a["pg_url"], table_names=["orders"], backend=a["backend"])
    info = pipeline.run(data, table_format="iceberg")
    seconds = time.perf_counter() - t0
    info.raise_on_failed_jobs()
    table = get_iceberg_tables(pipeline, "orders")["orders"]
    return {"seconds": seconds, "locator": {"kind": "metadata", "path": table.metadata_location}}


PEERS = {
    "icefield": _peer_icefield,
    "pyiceberg": _peer_pyiceberg,
    "limit": _peer_limit,
    "dlt": _peer_dlt,
    "dlt_cx": _peer_dlt,
}


# ------------------------------------------------------------------------------------ checking


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    return {
        "int64": pa.int64(),
        "string": pa.string(),
        "decimal128(12, 2)": pa.decimal128(12, 2),
        "date32[day]": pa.date32(),
        "timestamp[us]": pa.timestamp("us"),
    }[name]


def canonical(t: Any) -> tuple[Any, list[str], list[str]]:
    """The business columns cast to the source's types; the type differences and the extra columns."""
    import pyarrow as pa

    missing = [c for c in COLUMNS if c not in t.column_names]
    if missing:
        raise RuntimeError(f"result lacks columns {missing}; has {t.column_names}")
    extra = [c for c in t.column_names if c not in COLUMNS]
    diffs, cols = [], []
    for name, want in COLUMNS.items():
        col = t.column(name)
        if isinstance(col.type, pa.ExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], col.type.storage_type)
        got = "string" if col.type == pa.large_string() else str(col.type)
        if got != want:
            diffs.append(f"{name} {got}")
        cols.append(col.cast(_arrow_type(want), safe=False) if str(col.type) != want else col)
    return pa.table(cols, names=list(COLUMNS)), diffs, extra


def _read_result(loc: dict[str, Any]) -> tuple[Any, int]:
    """The stored rows and the number of data files."""
    if loc["kind"] == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(loc["paths"]), len(loc["paths"])
    if loc["kind"] == "metadata":
        from pyiceberg.table import StaticTable

        table: Any = StaticTable.from_metadata(loc["path"])
    else:
        root = Path(loc["root"])
        from icefield.catalog import sql_catalog

        catalog = sql_catalog(
            CATALOG, f"sqlite:///{root / loc['catalog_db']}", (root / "warehouse").resolve().as_uri()
        )
        table = catalog.load_table(loc["ident"])
    return table.scan().to_arrow(), len(list(table.scan().plan_files()))


def digest(loc: dict[str, Any]) -> dict[str, Any]:
    data, files = _read_result(loc)
    types = {f.name: str(f.type) for f in data.schema}
    data, diffs, extra = canonical(data)
    d = table_digest(data, "order_id")
    d.update(files=files, type_diffs=diffs, extra_columns=extra, types=types)
    return d


def own_peak_rss_mb() -> float | None:
    """This process's own peak RSS (``VmHWM``). ``getrusage``'s ``ru_maxrss``, which ``emit`` reports,
    carries the parent's peak over fork and exec on Linux, so a child of a driver that once held a big
    table would report at least that much."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def child(args: dict[str, Any]) -> None:
    if "digest" in args:
        emit(0.0, digest(args["digest"]))
        return
    out = Path(args["out"])
    with tuned_if(args["peer"] == "icefield"):
        res = PEERS[args["peer"]](args, out)
    emit(
        res["seconds"],
        {"locator": res["locator"], "info": res.get("info", {}), "peak_rss_mb": own_peak_rss_mb()},
    )


# ------------------------------------------------------------------------------------ driver


def _digest_in_child(locator: dict[str, Any]) -> dict[str, Any]:
    meas = measure_subprocess("bench.w1_load", {"digest": locator})
    assert meas is not None  # no timeout
    return meas.result


def _peer_run(
    root: Path, case: str, peer: str, r: int, base: dict[str, Any], python: Path | None, timeout: float | None
) -> Measurement | None:
    out = root / "runs" / case / f"{peer}-{r}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = {**base, "peer": peer, "case": case, "out": str(out)}
    if python is not None:
        return measure_with(python, args, timeout)
    return measure_subprocess("bench.w1_load", args, timeout=timeout)


def run() -> list[dict[str, Any]]:
    n = rows()
    root = work_dir("w1")
    slow_timeout = float(os.environ.get("BENCH_PEER_TIMEOUT", "1800"))
    print(f"W1 bulk load: {n:,} rows; machine {machine()}", flush=True)
    files = prepare_files(root, n)
    ref = _digest_in_child({"kind": "parquet", "paths": files})
    dlt_python, dlt_cx, dlt_note = dlt_venv()
    try:
        import adbc_driver_postgresql  # noqa: F401

        adbc_note = ""
    except ImportError:
        adbc_note = "needs ADBC: pip install 'icefield[postgres]'"
    pg, pg_started = None, False
    results: list[dict[str, Any]] = []
    wanted = os.environ.get("BENCH_W1_CASES", ",".join(CASES)).split(",")
    try:
        for case in wanted:
            peers = CASES[case]
            base: dict[str, Any] = {"files": files}
            out: dict[str, Any] = {"case": case, "rows": n, "reference": ref, "peers": []}
            results.append(out)
            if case == "postgres":
                try:
                    pg, started = prepare_postgres(root, n)
                except Exception as e:  # no PostgreSQL on this machine: say so, run the rest
                    out["skipped"] = f"PostgreSQL: {e}"
                    print(f"  postgres: skipped ({e})", flush=True)
                    continue
                pg_started = pg_started or started
                base.update(pg_url=pg.url(PG_DB), adbc_uri=adbc_uri(pg))
            for label, peer, speed in peers:
                row: dict[str, Any] = {"peer": label, "id": peer}
                out["peers"].append(row)
                skip = _skip_reason(case, peer, dlt_python, dlt_cx, dlt_note, adbc_note)
                if skip:
                    row["skipped"] = skip
                    _progress(case, row)
                    continue
                base["backend"] = "connectorx" if peer == "dlt_cx" else "pyarrow"
                python = dlt_python if peer.startswith("dlt") else None
                reps = runs() if speed == "fast" else 1
                times, rss, check = [], [], None
                for r in range(reps):
                    if pg is not None and case == "postgres":
                        # a test session on this machine may have stopped the shared server
                        pg_started = pg.up() or pg_started
                    try:
                        meas = _peer_run(
                            root, case, peer, r, base, python, None if speed == "fast" else slow_timeout
                        )
                    except RuntimeError as e:
                        row["error"] = str(e).strip().splitlines()[-1][:300]
                        break
                    if meas is None:
                        row["timeout"] = slow_timeout
                        break
                    times.append(meas.seconds)
                    rss.append(meas.result.get("peak_rss_mb") or meas.peak_rss_mb)
                    row["info"] = meas.result.get("info", {})
                    if r == reps - 1:  # the last run's table is checked
                        check = _digest_in_child(meas.result["locator"])
                    shutil.rmtree(root / "runs" / case / f"{peer}-{r}", ignore_errors=True)
                if times:
                    row.update(
                        seconds=round(median(times), 3),
                        all_seconds=[round(t, 3) for t in times],
                        rows_per_s=round(n / median(times)),
                        peak_rss_mb=max(rss),
                    )
                if check is not None:
                    row["check"] = check
                    row["same_result"] = check["rows"] == ref["rows"] and check["hash"] == ref["hash"]
                _progress(case, row)
            _ratios(out)
    finally:
        if pg is not None and pg_started:
            pg.stop()
    _print(results)
    (root / "results.json").write_text(
        json.dumps({"machine": machine(), "rows": n, "results": results}, indent=2)
    )
    return results


def _skip_reason(
    case: str, peer: str, dlt_python: Path | None, dlt_cx: bool, dlt_note: str, adbc_note: str
) -> str:
    if peer.startswith("dlt") and dlt_python is None:
        return dlt_note or "dlt venv unavailable"
    if peer == "dlt_cx" and not dlt_cx:
        return f"connectorx did not install ({DLT_CX_REQS.name})"
    if case == "postgres" and peer in ("pyiceberg", "limit"):
        return adbc_note
    return ""


def _ratios(out: dict[str, Any]) -> None:
    by = {p["id"]: p for p in out["peers"]}
    ice = by.get("icefield", {}).get("seconds")
    if not ice:
        return
    for p in out["peers"]:
        if p.get("seconds") and p["id"] != "icefield":
            p["x_vs_icefield"] = round(p["seconds"] / ice, 2)
    if by.get("dlt", {}).get("seconds"):
        out["dlt_over_icefield"] = round(by["dlt"]["seconds"] / ice, 2)
    if by.get("limit", {}).get("seconds"):
        out["icefield_over_limit"] = round(ice / by["limit"]["seconds"], 2)
    out["icefield_peak_rss_mb"] = by["icefield"].get("peak_rss_mb")


def _progress(case: str, p: dict[str, Any]) -> None:
    if p.get("seconds") is not None:
        same = (
            "unchecked"
            if "same_result" not in p
            else "same result"
            if p["same_result"]
            else "DIFFERENT RESULT"
        )
        print(
            f"  {case} / {p['peer']}: {p['seconds']} s (runs {p['all_seconds']}), {p['peak_rss_mb']} MB, {same}",
            flush=True,
        )
    else:
        print(f"  {case} / {p['peer']}: {p.get('skipped') or p.get('error') or 'timeout'}", flush=True)


def _print(results: list[dict[str, Any]]) -> None:
    cols = [
        "case",
        "peer",
        "s (median)",
        "rows/s",
        "peak MB",
        "peer/icefield",
        "files",
        "same result",
        "notes",
    ]
    table = []
    for out in results:
        ice = next((p.get("seconds") for p in out["peers"] if p["id"] == "icefield"), None)
        for p in out["peers"]:
            notes = []
            check = p.get("check") or {}
            if check.get("type_diffs"):
                notes.append("types: " + ", ".join(check["type_diffs"]))
            if check.get("extra_columns"):
                notes.append("extra: " + ", ".join(check["extra_columns"]))
            if check and not p.get("same_result"):
                notes.append(f"{check['rows']:,} rows")
            for k in ("skipped", "error"):
                if p.get(k):
                    notes.append(f"{k}: {p[k]}")
            if p.get("timeout"):
                notes.append(f"timeout > {p['timeout']:.0f} s")
            if p.get("info", {}).get("quarantined"):
                notes.append(f"{p['info']['quarantined']:,} quarantined")
            s = p.get("seconds")
            table.append(
                [
                    out["case"],
                    p["peer"],
                    s if s is not None else "-",
                    f"{p['rows_per_s']:,}" if p.get("rows_per_s") else "-",
                    p.get("peak_rss_mb", "-"),
                    round(s / ice, 2) if s and ice and p["id"] != "icefield" else "-",
                    check.get("files", "-"),
                    ("yes" if p["same_result"] else "NO") if "same_result" in p else "-",
                    "; ".join(notes),
                ]
            )
    print_table(
        f"W1 bulk load, {results[0]['rows']:,} rows (icefield: median of {runs()}; dlt: 1 run)", cols, table
    )
    for out in results:
        if "dlt_over_icefield" in out or "icefield_over_limit" in out:
            print(
                f"  {out['case']}: dlt/icefield = {out.get('dlt_over_icefield', '-')} (target >= 2), "
                f"icefield/limit = {out.get('icefield_over_limit', '-')} (target <= 1.3), "
                f"icefield peak {out.get('icefield_peak_rss_mb', '-')} MB (target <= 3072)"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        run()
