"""W8 HTTP API: 1M records (x BENCH_SCALE) over 10k pages of 100, served by a local REST API on 127.0.0.1,
landed in Iceberg by icefield's ``http`` source and by dlt's ``rest_api`` source.

The server is :class:`icefield.examples.api.FakeApi` (page-number pagination, ``?page=N&per_page=100``,
records at ``data.items``, no auth, no rate limit), started once in a process of its own so that it shares
no GIL with a measured peer. Every record: ``id``, ``updated_at`` (ISO 8601 text), ``name``, ``amount``
(a float), ``customer`` (a nested object), ``tags`` (a list), ``deleted`` (a bool).

Peers, each in its own process (fresh catalog and warehouse every run), walking the same 10,001 pages
(the last one empty: neither knows the page count):
- icefield: a project with an ``http`` pipeline (``pagination: {type: page, size: 100}``, ``records:
  data.items``, incremental ``cursor: {field: updated_at, param: since}``, columns typed, ``customer`` and
  ``tags`` kept as JSON text), ``icefield.run_pipeline`` timed; append, batches of the default 100k records
  (one Iceberg commit each, the cursor position inside it);
- dlt 1.31 (isolated venv, the one W1 builds): ``rest_api_source`` with a ``page_number`` paginator
  (``base_page: 1``, no total, stop at the empty page), ``data_selector: data.items``,
  ``max_table_nesting=0`` (``customer`` and ``tags`` as JSON, no child table) into the ``filesystem``
  destination with ``table_format="iceberg"`` (Parquet load files), as W1's dlt peer writes Iceberg;
- limit: a plain ``httpx.Client`` loop that GETs every page and decodes its JSON (``resp.json()``), no
  typing, no writing: what the server and the client library cost.

Every table is read back in a separate process and reduced to the same columns and types (``updated_at`` as
epoch microseconds, ``customer``'s three fields extracted, ``tags`` joined; dlt's ``_dlt_*`` columns are
dropped), then hashed with ``bench.common.table_digest``; the reference is the digest of the server's own
records (``make_records`` with the same seed). A peer's time is trusted only when its digest equals it.

Peers run in rounds of ``BENCH_RUNS`` (each peer once per round: a busy spell of a shared machine falls on
all of them); the medians are reported, with the dlt/icefield ratio of each round and the server's CPU
seconds during each peer's runs (its throughput is not the bottleneck when it stays well under the limit's).

``BENCH_W8_PEERS`` (default ``icefield,dlt,limit``) picks peers; ``BENCH_W8_PROFILE=<file>`` writes a
cProfile of the icefield child's ``run_pipeline`` to that file (and of each of its threads to ``<file>.<thread name>``) (the run is then slower: do not report its time).

``python -m bench.w8_http`` runs it; children are ``python -m bench.w8_http '<json>'``. This module imports
only the standard library at the top: the dlt child runs it inside dlt's own venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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

NAMESPACE = "bench"
TABLE = "records"
PAGE_SIZE = 100
SEED = 0
BASE_RECORDS = 1_000_000

# label, peer id
PEERS_ORDER: list[tuple[str, str]] = [
    ("icefield http source (incremental, 100k-record batches)", "icefield"),
    ("dlt 1.31 rest_api -> filesystem iceberg", "dlt"),
    ("limit: httpx GET + resp.json() of every page", "limit"),
]

# The record's fields typed as icefield declares them (nested ones kept as JSON text).
ICEFIELD_COLUMNS = {
    "id": "long",
    "updated_at": "timestamptz",
    "name": "string",
    "amount": "double",
    "deleted": "bool",
    "customer": "json",
    "tags": "json",
}


def size() -> int:
    return int(BASE_RECORDS * scale())


# ------------------------------------------------------------------------------------ the server


def serve(n: int) -> None:
    """The server process: a :class:`FakeApi` of ``n`` records; prints its URL, serves until stdin closes."""
    from icefield.examples.api import ApiSettings, FakeApi

    api = FakeApi(ApiSettings(records=n, seed=SEED, pagination="page", page_size=PAGE_SIZE))
    api._listing(None)  # sorted before the first request, not inside a peer's clock
    api.start()
    print(json.dumps({"url": api.url}), flush=True)
    sys.stdin.read()
    api.stop()


def start_server(n: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.w8_http", json.dumps({"serve": n})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the W8 API server did not start")
    return proc, str(json.loads(line)["url"])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------ peers (children)


def _peer_icefield(a: dict[str, Any], out: Path) -> dict[str, Any]:
    import icefield
    from bench.w1_load import _warm_imports

    _warm_imports("http")
    import httpx  # noqa: F401 - imported lazily by the source: before the clock
    import orjson  # noqa: F401

    import icefield.ingest.http  # noqa: F401

    (out / "pipelines").mkdir(parents=True)
    (out / "icefield.yaml").write_text(json.dumps({"name": "w8", "catalog": {"name": "icefield"}}))
    pipe = {
        "name": TABLE,
        "source": {
            "type": "http",
            "base_url": a["url"],
            "path": "/records",
            "pagination": {"type": "page", "size": PAGE_SIZE},
            "records": "data.items",
            "cursor": {"field": "updated_at", "param": "since"},
            "columns": ICEFIELD_COLUMNS,
        },
        "target": {"table": f"{NAMESPACE}.{TABLE}", "mode": "append"},
    }
    (out / "pipelines" / f"{TABLE}.yaml").write_text(json.dumps(pipe))  # JSON is YAML
    project = icefield.load_project(out)
    profile = os.environ.get("BENCH_W8_PROFILE")
    t0, c0 = time.perf_counter(), time.process_time()
    if profile:
        import cProfile
        import threading

        # The source reads in a thread of its own (read-ahead): every thread gets a profile, <file>.<thread name>.
        thread_run = threading.Thread.run

        def profiled_run(self: threading.Thread) -> None:
            p = cProfile.Profile()
            try:
                p.runcall(thread_run, self)
            finally:
                p.dump_stats(f"{profile}.{self.name}")

        threading.Thread.run = profiled_run  # type: ignore[method-assign]
        prof = cProfile.Profile()
        res = prof.runcall(icefield.run_pipeline, project, TABLE)
        prof.dump_stats(profile)
    else:
        res = icefield.run_pipeline(project, TABLE)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "locator": {"kind": "catalog", "root": str(out / ".icefield"), "ident": f"{NAMESPACE}.{TABLE}", "catalog_db": "catalog.db"},
        "info": {"cpu_s": round(cpu, 2), "batches": len(res.batches), "rows_committed": res.rows_committed, "quarantined": res.rows_quarantined},
    }


def _peer_dlt(a: dict[str, Any], out: Path) -> dict[str, Any]:
    """Runs in dlt's own venv: only dlt, pyarrow and the standard library here."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DLT_DATA_DIR", str(out / "dlt-data"))
    import dlt
    from dlt.common.libs.pyiceberg import get_iceberg_tables
    from dlt.destinations import filesystem
    from dlt.sources.rest_api import rest_api_source

    from bench.w1_load import _warm_imports

    _warm_imports("http")
    pipeline = dlt.pipeline(
        pipeline_name="w8",
        pipelines_dir=str(out / "dlt-pipelines"),
        destination=filesystem(bucket_url=str(out / "lake")),
        dataset_name=NAMESPACE,
    )
    config: Any = {
        "client": {
            "base_url": a["url"],
            # The server's style: ?page=1.., no page count in the body ("total" counts records), an empty page ends it.
            "paginator": {"type": "page_number", "base_page": 1, "page_param": "page", "total_path": None, "stop_after_empty_page": True},
        },
        "resources": [
            {"name": TABLE, "endpoint": {"path": "records", "params": {"per_page": PAGE_SIZE}, "data_selector": "data.items"}},
        ],
    }
    t0, c0 = time.perf_counter(), time.process_time()
    source = rest_api_source(config, max_table_nesting=0)
    info = pipeline.run(source, table_format="iceberg", loader_file_format="parquet")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    info.raise_on_failed_jobs()
    table = get_iceberg_tables(pipeline, TABLE)[TABLE]
    return {"seconds": seconds, "locator": {"kind": "metadata", "path": table.metadata_location}, "info": {"cpu_s": round(cpu, 2)}}


def _peer_limit(a: dict[str, Any], out: Path) -> dict[str, Any]:
    import httpx

    records = pages = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    with httpx.Client(timeout=30) as client:
        page = 1
        while True:
            resp = client.get(f"{a['url']}/records", params={"page": page, "per_page": PAGE_SIZE})
            resp.raise_for_status()
            items = resp.json()["data"]["items"]
            pages += 1
            if not items:
                break
            records += len(items)
            page += 1
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"seconds": seconds, "locator": None, "info": {"records": records, "pages": pages, "cpu_s": round(cpu, 2)}}


PEERS = {"icefield": _peer_icefield, "dlt": _peer_dlt, "limit": _peer_limit}


# ------------------------------------------------------------------------------------ checking

# Both tables reduced to one shape: nested values as JSON text (icefield) or dlt's JSON column.
CANONICAL = """
    select id::bigint as id,
           epoch_us(updated_at::timestamptz) as updated_at_us,
           name::varchar as name,
           amount::double as amount,
           deleted::boolean as deleted,
           json_extract(customer::varchar, '$.id')::bigint as customer_id,
           json_extract_string(customer::varchar, '$.name') as customer_name,
           json_extract_string(customer::varchar, '$.country') as customer_country,
           coalesce(array_to_string(from_json(tags::varchar, '["VARCHAR"]'), ','), '') as tags
    from t
"""


def canonical(arrow_table: Any) -> Any:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.register("t", arrow_table)
        return con.sql(CANONICAL).to_arrow_table()
    finally:
        con.close()


def reference(n: int) -> dict[str, Any]:
    """The digest of the server's records, built from them directly."""
    import pyarrow as pa

    from icefield.examples.api import make_records

    recs = make_records(n, SEED)
    cols = {k: [r[k] for r in recs] for k in ("id", "updated_at", "name", "amount", "deleted")}
    cols["customer"] = [json.dumps(r["customer"]) for r in recs]
    cols["tags"] = [json.dumps(r["tags"]) for r in recs]
    return table_digest(canonical(pa.table(cols)), "id")


def digest(loc: dict[str, Any]) -> dict[str, Any]:
    from bench.w1_load import _read_result

    data, files = _read_result(loc)
    types = {f.name: str(f.type) for f in data.schema}
    d = table_digest(canonical(data), "id")
    d.update(files=files, types=types, extra_columns=[c for c in data.column_names if c not in ICEFIELD_COLUMNS])
    return d


def child(args: dict[str, Any]) -> None:
    if "serve" in args:
        serve(int(args["serve"]))
        return
    if "reference" in args:
        emit(0.0, reference(int(args["reference"])))
        return
    if "digest" in args:
        emit(0.0, digest(args["digest"]))
        return
    from bench.w1_load import own_peak_rss_mb

    out = Path(args["out"])
    with tuned_if(args["peer"] == "icefield"):
        res = PEERS[args["peer"]](args, out)
    emit(res["seconds"], {"locator": res["locator"], "info": res.get("info", {}), "peak_rss_mb": own_peak_rss_mb()})


# ------------------------------------------------------------------------------------ driver


def _in_child(args: dict[str, Any]) -> dict[str, Any]:
    meas = measure_subprocess("bench.w8_http", args)
    assert meas is not None  # no timeout
    return meas.result


def run() -> dict[str, Any]:
    from bench.w1_load import dlt_venv

    n = size()
    root = work_dir("w8")
    timeout = float(os.environ.get("BENCH_PEER_TIMEOUT", "1800"))
    wanted = os.environ.get("BENCH_W8_PEERS", "icefield,dlt,limit").split(",")
    print(f"W8 HTTP API: {n:,} records, {PAGE_SIZE} per page; machine {machine()}", flush=True)
    ref = _in_child({"reference": n})
    dlt_python, _, dlt_note = dlt_venv() if "dlt" in wanted else (None, False, "")
    out: dict[str, Any] = {"records": n, "page_size": PAGE_SIZE, "reference": ref, "peers": []}
    rows: dict[str, dict[str, Any]] = {}
    for label, peer in PEERS_ORDER:
        if peer in wanted:
            rows[peer] = {"peer": label, "id": peer, "times": [], "rss": [], "server_s": []}
            out["peers"].append(rows[peer])
    if "dlt" in rows and dlt_python is None:
        rows["dlt"]["skipped"] = dlt_note or "dlt venv unavailable"
    reps = runs()
    server, url = start_server(n)
    try:
        # Rounds, each peer once per round: a busy spell of a shared machine falls on every peer alike.
        for r in range(reps):
            for peer, row in rows.items():
                if row.get("skipped") or row.get("error") or row.get("timeout"):
                    continue
                meas, server_s = _one_run(root, peer, r, url, server, dlt_python if peer == "dlt" else None, timeout, row)
                if meas is None:
                    continue
                row["times"].append(meas.seconds)
                row["server_s"].append(server_s)
                row["rss"].append(meas.result.get("peak_rss_mb") or meas.peak_rss_mb)
                row["info"] = meas.result.get("info", {})
                print(f"  round {r + 1}: {peer} {meas.seconds:.2f} s", flush=True)
                if r == reps - 1 and meas.result.get("locator"):
                    row["check"] = _in_child({"digest": meas.result["locator"]})
                shutil.rmtree(root / "runs" / f"{peer}-{r}", ignore_errors=True)
    finally:
        stop_server(server)
    for peer, row in rows.items():
        times, rss, server_s = row.pop("times"), row.pop("rss"), row.pop("server_s")
        if times:
            row.update(
                seconds=round(median(times), 3),
                all_seconds=[round(t, 3) for t in times],
                records_per_s=round(n / median(times)),
                peak_rss_mb=max(rss),
                server_cpu_s=round(median(server_s), 2),
            )
        if "check" in row:
            row["same_result"] = row["check"]["rows"] == ref["rows"] and row["check"]["hash"] == ref["hash"]
        elif peer == "limit" and times:
            row["same_result"] = row["info"].get("records") == n
        _progress(row)
    by = {p["id"]: p for p in out["peers"]}
    ice = by.get("icefield", {}).get("seconds")
    if ice and by.get("dlt", {}).get("seconds"):
        out["dlt_over_icefield"] = round(by["dlt"]["seconds"] / ice, 2)
        pairs = zip(by["dlt"]["all_seconds"], by["icefield"]["all_seconds"], strict=False)
        out["dlt_over_icefield_by_round"] = [round(d / i, 2) for d, i in pairs]
    if ice and by.get("limit", {}).get("seconds"):
        out["icefield_over_limit"] = round(ice / by["limit"]["seconds"], 2)
    _print(out)
    (root / "results.json").write_text(json.dumps({"machine": machine(), "result": out}, indent=2))
    return out


def _one_run(
    root: Path, peer: str, r: int, url: str, server: subprocess.Popen[str], python: Path | None, timeout: float, row: dict[str, Any]
) -> tuple[Any, float]:
    """Run ``r`` of ``peer`` in a fresh folder: its measurement and the server's CPU seconds during it (None
    and the reason in ``row`` when it failed or timed out)."""
    run_dir = root / "runs" / f"{peer}-{r}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    before = process_cpu_seconds(server.pid)
    try:
        meas = measure_subprocess("bench.w8_http", {"peer": peer, "out": str(run_dir), "url": url}, timeout=timeout, python=python)
    except RuntimeError as e:
        row["error"] = str(e).strip().splitlines()[-1][:300]
        return None, 0.0
    if meas is None:
        row["timeout"] = timeout
    return meas, process_cpu_seconds(server.pid) - before


def _progress(p: dict[str, Any]) -> None:
    if p.get("seconds") is not None:
        same = "unchecked" if "same_result" not in p else "same result" if p["same_result"] else "DIFFERENT RESULT"
        print(
            f"  {p['peer']}: {p['seconds']} s (runs {p['all_seconds']}), {p['peak_rss_mb']} MB, "
            f"server CPU {p['server_cpu_s']} s, {same}",
            flush=True,
        )
    else:
        print(f"  {p['peer']}: {p.get('skipped') or p.get('error') or 'timeout'}", flush=True)


def _print(out: dict[str, Any]) -> None:
    ice = next((p.get("seconds") for p in out["peers"] if p["id"] == "icefield"), None)
    table = []
    for p in out["peers"]:
        check = p.get("check") or {}
        notes = []
        if check.get("extra_columns"):
            notes.append("dropped: " + ", ".join(check["extra_columns"]))
        if check and not p.get("same_result"):
            notes.append(f"{check['rows']:,} rows")
        for k in ("skipped", "error"):
            if p.get(k):
                notes.append(f"{k}: {p[k]}")
        if p.get("timeout"):
            notes.append(f"timeout > {p['timeout']:.0f} s")
        s = p.get("seconds")
        table.append(
            [
                p["peer"],
                s if s is not None else "-",
                f"{p['records_per_s']:,}" if p.get("records_per_s") else "-",
                p.get("peak_rss_mb", "-"),
                p.get("server_cpu_s", "-"),
                round(s / ice, 2) if s and ice and p["id"] != "icefield" else "-",
                ("yes" if p["same_result"] else "NO") if "same_result" in p else "-",
                "; ".join(notes),
            ]
        )
    print_table(
        f"W8 HTTP API, {out['records']:,} records in pages of {out['page_size']} (median of {runs()})",
        ["peer", "s (median)", "records/s", "peak MB", "server CPU s", "peer/icefield", "same result", "notes"],
        table,
    )
    print(
        f"  dlt/icefield = {out.get('dlt_over_icefield', '-')} (target >= 2; by round "
        f"{out.get('dlt_over_icefield_by_round', '-')}), "
        f"icefield/limit = {out.get('icefield_over_limit', '-')}",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        run()
