"""The CLI commands: init, run, plan, tables, show, sql, checks, publish, discard, compact, expire, quarantine,
metrics, demo."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from icefield.cli import EXIT_FAILED, cli, guarded
from icefield.cli.output import Output, _json_default
from icefield.config.ages import DEFAULT_AGE

pass_out = click.make_pass_decorator(Output)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Output).as_json = True  # type: ignore[union-attr]


class TableName(click.ParamType):
    """A table argument: ``namespace.table`` (refused at once, exit 2, when it cannot name a table)."""

    name = "NAMESPACE.TABLE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        parts = str(value).split(".")
        if len(parts) < 2 or not all(p.strip() for p in parts):
            self.fail(f"{value!r} is not a table name: write namespace.table, e.g. raw.events (`icefield tables` lists them)", param, ctx)
        return str(value)


TABLE = TableName()


class WindowRange(click.ParamType):
    """A ``--window`` value: ``START..END``, ISO dates or timestamps, the end exclusive (refused at once,
    exit 2, when it is not one)."""

    name = "START..END"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from icefield.config.window import Window, parse_window

        if isinstance(value, Window):
            return value
        try:
            return parse_window(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)

json_option = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_set_json, help="Machine-readable JSON on stdout.")


# ---------------------------------------------------------------------------------------------- init


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--name", default=None, help="Project name (default: the folder name).")
@json_option
@pass_out
@guarded
def init(out: Output, directory: Path, name: str | None) -> None:
    """Scaffold a project: icefield.yaml, pipelines/, models/, data/."""
    from icefield.scaffold import init_project

    created = init_project(directory, name)
    if out.as_json:
        out.emit({"status": "ok", "project": str(directory.resolve()), "created": created})
    else:
        out.print("Created project in [bold]{directory}[/] ({n} files). Next: edit pipelines/*.yaml, then `icefield run`.", directory=directory, n=len(created))


# ---------------------------------------------------------------------------------------------- run


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--no-models", is_flag=True, help="Run only pipelines, not the SQL models after them.")
@click.option(
    "--follow", is_flag=True,
    help="Keep consuming a streaming source (kafka, debezium) and commit every batch; stop with Ctrl-C or SIGTERM.",
)
@click.option(
    "--wait", "wait", default="0", show_default=True,
    help="How long to wait for another run writing the same table (30s, 10m, 1h); 0 refuses at once (exit 75).",
)
@click.option(
    "--window", "window", type=WindowRange(), default=None,
    help="Backfill one pipeline for START..END (ISO dates or timestamps, UTC, end exclusive, aligned to the "
    "pipeline's window.size): replace exactly that window's rows, leaving its position alone.",
)
@click.option(
    "--metrics-port", "metrics_port", type=click.IntRange(min=0, max=65535), default=None,
    help="With --follow: serve Prometheus metrics on http://127.0.0.1:PORT/metrics (default: metrics.port "
    "of icefield.yaml; 0 picks a free port).",
)
@json_option
@pass_out
@guarded
def run(
    out: Output, names: tuple[str, ...], no_models: bool, follow: bool, wait: str, window: Any, metrics_port: int | None
) -> None:
    """Run pipelines and models in plan order (`icefield plan` shows it). Without NAMES: every pipeline and
    every model; with NAMES: only those.

    A model runs after the pipelines and models whose tables it reads, a pipeline after those whose
    tables its gates read; a node that fails skips the nodes that read what it writes, and the others run
    on. The exit code is the first failure's. One run at a time writes a table: a run whose table another
    run is writing waits up to --wait, then stops before reading anything (exit 75).

    With --window START..END one pipeline (named) is backfilled for that interval instead: the rows whose
    window column (its `window:` key) lies in it are read again and replace the table's rows of the
    interval, one commit per window of its size; its position, and what a regular run loads, are untouched.

    With metrics.pushgateway in icefield.yaml the run pushes its metrics there when it ends (a push that
    fails is logged, never fails the run); a --follow run serves them on /metrics (metrics.port or
    --metrics-port)."""
    from icefield.catalog import open_catalog
    from icefield.cli import INTERRUPTED
    from icefield.errors import ConfigError, InterruptedRunError
    from icefield.pipeline.plan import build_plan, run_plan

    project = out.project()
    if window is not None:
        if len(names) != 1 or names[0] not in project.pipelines:
            raise ConfigError(
                "--window backfills one pipeline: name exactly one pipeline, e.g. icefield run orders --window 2026-01-01..2026-01-08"
            )
        if follow:
            raise ConfigError("--window reads a fixed interval and ends: drop --follow")
        no_models = True
    the_plan = build_plan(project, names, models=not no_models)
    if follow and (len(the_plan) != 1 or the_plan.nodes[0].kind != "pipeline"):
        raise ConfigError("--follow runs one streaming pipeline: name exactly one pipeline, e.g. icefield run orders_cdc --follow")
    from icefield.config.ages import parse_age

    wait_s = parse_age(wait)
    catalog = open_catalog(project)
    if metrics_port is not None and not follow:
        raise ConfigError("--metrics-port serves the metrics of a following run: add --follow, or drop --metrics-port")
    from icefield.observe.configured import configured_observers
    from icefield.observe.metrics import run_metrics

    lineage = configured_observers(project)
    with (
        _stop_on_signals(follow) as stop,
        run_metrics(project.config.metrics, project.root, follow=follow, port=metrics_port) as metrics,
        _Progress(out) as progress,
    ):
        try:
            done = run_plan(
                project, the_plan, catalog, wait=wait_s, follow=follow, stop=stop,
                on_start=progress.start, on_batch=progress.batch, on_result=progress.done, window=window,
                observers=[*lineage, *metrics],
            )
        except InterruptedRunError as stopped:
            done = stopped.result  # type: ignore[attr-defined]
    # The CLI's own words for an interruption; every other error as the node raised it.
    failures = [(node, InterruptedRunError(INTERRUPTED) if isinstance(e, InterruptedRunError) else e) for node, e in done.failures]
    doc: dict[str, Any] = {"status": done.status, "run_id": done.run_id, "results": [r.to_dict() for r in done.results]}
    ending = done.error
    if ending is not None:
        # One line on stderr per failure, or one JSON document on stdout: the results and the errors together.
        label, failed = failures[done.failures.index(ending)]
        doc.update(error=f"{label}: {failed}", type=type(failed).__name__)
        doc["errors"] = [{"node": n, "error": str(e), "type": type(e).__name__} for n, e in failures]
        if out.verbose:
            for _, e in done.failures:
                logging.getLogger("icefield.cli").error("details", exc_info=e)
    if out.as_json:
        out.emit(doc)
    else:
        for label, failed in failures:
            out.error(f"{label}: {failed}", kind=type(failed).__name__)
        _print_results(out, done.results)
    if ending is not None:
        raise SystemExit(done.exit_code)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--no-models", is_flag=True, help="Plan only pipelines, not the SQL models.")
@json_option
@pass_out
@guarded
def plan(out: Output, names: tuple[str, ...], no_models: bool) -> None:
    """Show the order `icefield run` runs pipelines and models in, and what each waits for (runs nothing).

    A model waits for the pipelines and models that write the tables its SQL reads; a pipeline for those
    that write the tables its gates read (references, sql). A cycle is refused (exit 2)."""
    from icefield.pipeline.plan import build_plan

    the_plan = build_plan(out.project(), names, models=not no_models)
    if out.as_json:
        out.emit({"status": "ok", **the_plan.to_dict()})
        return
    rows = [
        [i + 1, n.id, n.table, ", ".join(f"{u} ({', '.join(n.tables_from(u))})" for u in n.upstream), ", ".join(n.reads)]
        for i, n in enumerate(the_plan.nodes)
    ]
    out.table("Plan", ["#", "node", "writes", "runs after (tables it reads of them)", "reads"], rows)


class _Progress:
    """A spinner per running pipeline or model on a terminal (nothing with --json or without a terminal)."""

    def __init__(self, out: Output) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress: Any = None
        if not out.as_json and sys.stderr.isatty():
            # The description holds names from the project: plain text, never markup.
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=out.err_console, transient=True)
        self.task: Any = None
        self.rows = 0

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, node: Any) -> None:
        if self.progress is not None:
            self.task, self.rows = self.progress.add_task(f"{node.id}: starting", total=None), 0

    def batch(self, node: Any, b: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.rows += b.rows_committed
            self.progress.update(self.task, description=f"{node.id}: {self.rows:,} rows committed")

    def done(self, node: Any, result: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


@contextlib.contextmanager
def _stop_on_signals(enabled: bool = True) -> Iterator[threading.Event | None]:
    """An event set by SIGINT or SIGTERM during the block (a following run commits its batch in progress,
    then ends); the handlers before it are given back when the block ends (a command run in-process, by a
    test or a program, leaves its process as it found it). ``None`` and no handler when not ``enabled``."""
    import signal

    if not enabled:
        yield None
        return
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _print_results(out: Output, results: list[Any]) -> None:
    """The run's table; with a status column when some pipeline or model did not succeed, and a line
    per skipped one saying why."""
    rows = []
    statuses = any(r.status != "success" for r in results)
    for r in results:
        committed_batches = sum(1 for b in r.batches if not b.skipped)
        rows.append(
            [r.pipeline, r.table, *([r.status] if statuses else []), committed_batches, r.rows_in, r.rows_committed, r.rows_quarantined,
             r.rows_filtered, len(r.snapshots), _gates_summary(r), f"{r.seconds:.2f}s"]
        )
    columns = ["pipeline", "table", *(["status"] if statuses else []), "batches", "rows in", "committed", "quarantined", "filtered", "snapshots", "gates", "time"]
    out.table("Run", columns, rows)
    for r in results:
        if r.status == "skipped":
            out.print("{pipeline} skipped: {reason}", pipeline=r.pipeline, reason=r.reason)
        if getattr(r, "window", None) and r.status == "success":
            replaced = sum(b.rows_deleted for b in r.batches)
            out.print(
                "{pipeline}: window {window} backfilled ({n} windows; {replaced} stored rows replaced); its position is unchanged",
                pipeline=r.pipeline, window=r.window, n=len(r.batches), replaced=replaced,
            )


def _gates_summary(r: Any) -> str:
    """``3 pass, 1 warn`` over the gate results of a run ('' without gates)."""
    counts: dict[str, int] = {}
    for c in getattr(r, "checks", []):
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


# ---------------------------------------------------------------------------------------------- tables / show


@cli.command()
@json_option
@pass_out
@guarded
def tables(out: Output) -> None:
    """List the Iceberg tables of the catalog with their row counts and snapshots."""
    from icefield.catalog import list_tables, open_catalog

    catalog = open_catalog(out.project())
    docs = []
    for ident in list_tables(catalog):
        t = catalog.load_table(ident)
        snap = t.current_snapshot()
        rows, note = _live_rows(t, snap)
        doc = {"table": ".".join(ident), "rows": rows, "snapshots": len(t.metadata.snapshots), "current_snapshot": snap.snapshot_id if snap else None, "location": t.metadata.location}
        docs.append({**doc, "rows_note": note} if note else doc)
    if out.as_json:
        out.emit({"tables": docs})
    else:
        out.table(
            "Tables", ["table", "rows", "snapshots", "current snapshot"],
            [[d["table"], d["rows"] if d["rows"] is not None else "unknown", d["snapshots"], d["current_snapshot"]] for d in docs],
        )
        for d in docs:
            if d["rows"] is None:
                out.print("{table}: rows unknown, {note}", table=d["table"], note=d["rows_note"])


def _live_rows(table: Any, snap: Any) -> tuple[int | None, str | None]:
    """The rows a reader of ``table``'s current snapshot sees, and None or why they are unknown.

    The snapshot summary's ``total-records`` counts the rows of the data files, deleted ones included. A
    merge-on-read table (icefield's ``write.merge.mode: merge-on-read``, Spark, Trino) marks deleted rows
    in position delete files: their distinct positions within live data files are subtracted (only the
    small delete files are read). Equality delete files (Flink, Iceberg's Java API) say which rows they
    delete by value, which takes reading the data: the count is unknown (None) and the note says so."""
    summary = snap.summary if snap is not None else None
    if summary is None:
        return 0, None

    def total(key: str) -> int:
        return int(summary[key] or 0)

    if total("total-equality-deletes"):
        return None, (
            f"{total('total-equality-deletes'):,} rows are deleted by equality delete files (written by Flink or Iceberg's Java API), "
            "which icefield cannot apply; rewrite the table with Spark's rewrite_data_files to fold them"
        )
    if not total("total-position-deletes"):
        return total("total-records"), None
    from icefield.errors import ConfigError
    from icefield.quality.gates import snapshot_row_count

    try:
        return snapshot_row_count(table, snap.snapshot_id), None
    except ConfigError as e:  # equality delete files the summary did not count
        return None, str(e)


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--snapshots", "max_snapshots", default=20, show_default=True, type=click.IntRange(min=0), help="How many recent snapshots to list.")
@json_option
@pass_out
@guarded
def show(out: Output, table: str, max_snapshots: int) -> None:
    """Schema, partition spec, properties and snapshots (with their icefield entries) of TABLE."""
    from icefield.catalog import open_catalog
    from icefield.inspect import describe_table

    doc = describe_table(open_catalog(out.project()), table, max_snapshots)
    if out.as_json:
        out.emit(doc)
        return
    out.print("[bold]{table}[/]  {location}", table=doc["table"], location=doc["location"])
    st = doc["storage"]
    out.print(
        "{data_files} data files, {delete_files} delete files ({position_deletes} deleted rows), {bytes:,} bytes, {snapshots} snapshots"
        + ("; `icefield compact` folds the deletes away" if st["delete_files"] else ""),
        **{k: st[k] for k in ("data_files", "delete_files", "position_deletes", "bytes", "snapshots")},
    )
    out.table("Schema", ["id", "column", "type", "required"], [[f["id"], f["name"], f["type"], f["required"]] for f in doc["schema"]])
    out.table("Partition spec", ["field", "source", "transform"], [[p["name"], p["source"], p["transform"]] for p in doc["partition_spec"]] or [["(unpartitioned)", "", ""]])
    out.table("Properties", ["key", "value"], [[k, v] for k, v in sorted(doc["properties"].items())])
    if any(b["branch"] != "main" for b in doc["branches"]):
        out.table("Branches", ["branch", "snapshot", "holds a batch main lacks"], [[b["branch"], b["snapshot_id"], "yes" if b["held"] else ""] for b in doc["branches"]])
    out.table(
        "Snapshots (newest last)",
        ["snapshot", "time", "operation", "records", "pipeline", "batch", "run"],
        [[s["snapshot_id"], s["timestamp"], s["operation"], s["total_records"], s["icefield"].get("icefield.pipeline"), (s["icefield"].get("icefield.batch-id") or "")[:12], s["icefield"].get("icefield.run-id")] for s in doc["snapshots"]],
    )


# ---------------------------------------------------------------------------------------------- sql


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--limit", default=1000, show_default=True, help="Most rows to print in table format.")
@click.option(
    "--unrestricted", is_flag=True,
    help="Trusted local use only: run any DuckDB SQL (several statements, files, URLs, extensions, settings) instead of one read-only query over the tables; with --engine trino, send any statement.",
)
@click.option(
    "--engine", type=click.Choice(["duckdb", "trino"]), default="duckdb", show_default=True,
    help="Where the query runs: DuckDB in this process, or the Trino server named by trino: in icefield.yaml.",
)
@json_option
@pass_out
@guarded
def sql(out: Output, query: str, fmt: str, limit: int, unrestricted: bool, engine: str) -> None:
    """Run a SQL QUERY on DuckDB over the Iceberg tables (name them as namespace.table).

    QUERY is one read-only statement (SELECT, WITH ... SELECT, VALUES, DESCRIBE, SUMMARIZE) that reads
    only the project's tables: no other file, URL, database or extension. Output columns that share a
    name are shown as name, name_1, name_2 ... in every format; JSON is {"columns": [...], "rows":
    [{column: value}, ...]} with those names. With --engine trino the query, in Trino's SQL, goes to the
    project's Trino server (trino: in icefield.yaml) and its catalog for this project."""
    from icefield.query import distinct_names, query_rows

    def catalog() -> Any:  # opened only for a query that names a table
        from icefield.catalog import open_catalog

        return open_catalog(out.project())

    table_format = not out.as_json and fmt == "table"
    if engine == "trino":
        from icefield.query.trino import trino_rows

        result = trino_rows(out.project(), query, unrestricted=unrestricted, limit=limit if table_format else None)
    else:
        result = query_rows(query, catalog, unrestricted=unrestricted, limit=limit if table_format else None)
    names = distinct_names(result.columns)
    # Rows are built by position: two output columns of one name (select * over a join) stay two.
    rows = [list(r) for r in result.rows]
    if out.as_json or fmt == "json":
        out.emit({"columns": names, "rows": [dict(zip(names, r, strict=True)) for r in rows]})
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(names)
        for row in rows:
            w.writerow([_json_default(v) if v is not None and not isinstance(v, (int, float, str)) else v for v in row])
        out.write(buf.getvalue())
    else:
        out.table(None, names, rows)
        if result.total > limit:
            out.print(f"({result.total - limit} more rows; use --format csv for all)")


# ---------------------------------------------------------------------------------------------- gates


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--history", default=1, show_default=True, type=click.IntRange(min=1), help="How many recent evaluations per pipeline to show.")
@json_option
@pass_out
@guarded
def checks(out: Output, table: str, history: int) -> None:
    """The latest gate results of TABLE (from icefield.quality_results)."""
    from icefield.catalog import open_catalog
    from icefield.iceberg.tables import load_existing
    from icefield.quality.results import latest_results

    catalog = open_catalog(out.project())
    load_existing(catalog, table)  # a misspelt table is an error, not "no results yet"
    rows = latest_results(catalog, table, history)
    if out.as_json:
        out.emit({"table": table, "results": rows})
        return
    if not rows:
        out.print("No gate results for {table} yet: add `gates:` to its pipeline and run it.", table=table)
        return
    out.table(
        f"Gates of {table}",
        ["check", "status", "severity", "value", "threshold", "snapshot", "branch", "checked at", "message"],
        [
            [r["check"], _status(r["status"]), r["severity"], _value(r["value"]), r["threshold"], r["snapshot_id"], r["branch"], f"{r['checked_at']:%Y-%m-%d %H:%M:%S}", r["message"]]
            for r in rows
        ],
    )


def _status(status: str) -> Text:
    colour = {"pass": "green", "warn": "yellow", "fail": "red", "error": "red"}.get(status, "white")
    return Text(status, style=colour)


def _value(v: float | None) -> str:
    if v is None:
        return ""
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4g}"


def _held_branch(table: Any, name: str, branch: str | None) -> str | None:
    """``branch``, or the one branch of ``table`` holding unpublished commits (None when none does)."""
    from icefield.errors import ConfigError
    from icefield.iceberg.history import held_branches

    if branch is not None:
        return branch
    held = held_branches(table)
    if len(held) > 1:
        raise ConfigError(f"table {name} has several held branches ({', '.join(held)}); name one with --branch")
    return held[0] if held else None


def _load(out: Output, name: str) -> Any:
    from icefield.catalog import open_catalog
    from icefield.iceberg.tables import load_existing

    return load_existing(open_catalog(out.project()), name)


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--branch", default=None, help="The branch to publish (default: the table's one held branch).")
@json_option
@pass_out
@guarded
def publish(out: Output, table: str, branch: str | None) -> None:
    """Fast-forward TABLE's main to a held audit branch as it is (without re-running its gates).

    Refuses when main has commits the branch lacks; then discard the branch and rerun the pipeline."""
    from icefield.write.branches import publish as publish_branch

    t = _load(out, table)
    chosen = _held_branch(t, table, branch)
    if chosen is None:
        if out.as_json:
            out.emit({"status": "ok", "table": table, "published": False, "reason": "no held branch"})
        else:
            out.print("Nothing to publish: {table} has no held branch.", table=table)
        return
    res = publish_branch(t, chosen)
    if out.as_json:
        out.emit({"status": "ok", "table": table, "branch": chosen, "published": res.moved, "main": res.snapshot_id, "previous": res.previous, "snapshots": res.snapshots, "positions": res.positions})
    elif res.moved:
        out.print(
            "Published {table}: main {previous} -> {snapshot} ({n} snapshot(s) from {branch}); positions of {pipelines} moved with it.",
            table=table, previous=res.previous, snapshot=res.snapshot_id, n=len(res.snapshots), branch=chosen,
            pipelines=", ".join(res.positions) or "no pipeline",
        )
    else:
        out.print("Nothing to publish: branch {branch} of {table} holds no commit main lacks.", branch=chosen, table=table)


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--branch", default=None, help="The branch to drop (default: the table's one held branch).")
@json_option
@pass_out
@guarded
def discard(out: Output, table: str, branch: str | None) -> None:
    """Drop a held audit branch of TABLE. main and its source positions are untouched, so the next run of
    the pipeline reads the discarded batch again from its source."""
    from icefield.write.branches import discard as discard_branch

    t = _load(out, table)
    chosen = _held_branch(t, table, branch)
    if chosen is None:
        if out.as_json:
            out.emit({"status": "ok", "table": table, "discarded": False, "reason": "no held branch"})
        else:
            out.print("Nothing to discard: {table} has no held branch.", table=table)
        return
    dropped = discard_branch(t, chosen)
    if out.as_json:
        out.emit({"status": "ok", "table": table, "branch": chosen, "discarded": True, "snapshots": dropped})
    else:
        out.print(
            "Discarded branch {branch} of {table} ({n} unpublished snapshot(s)); main is unchanged. The next run reads the batch again from its source.",
            branch=chosen, table=table, n=len(dropped),
        )


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--target-file-size", type=click.IntRange(min=1), default=None, help="Bytes per file on disk (default: the table's write.target-file-size-bytes, 512 MB).")
@click.option("--min-input-files", type=click.IntRange(min=1), default=2, show_default=True, help="Small files a partition needs to be rewritten (a file with deletes always is).")
@click.option("--sort-by", default=None, help="Comma-separated columns to sort each new file by (default: the keys of the project's merge pipelines into TABLE).")
@click.option("--dry-run", is_flag=True, help="Show what would be rewritten; commit nothing.")
@json_option
@pass_out
@guarded
def compact(out: Output, table: str, target_file_size: int | None, min_input_files: int, sort_by: str | None, dry_run: bool) -> None:
    """Rewrite TABLE's small data files, and those with delete files, into fewer files (one 'replace'
    snapshot: no row changes). Safe beside running pipelines: a merge that touches a file meanwhile wins,
    and the compaction replans."""
    from icefield.catalog import open_catalog
    from icefield.write.compact import compact_table

    project = out.project()
    if sort_by is not None:
        columns = [c.strip() for c in sort_by.split(",") if c.strip()]
    else:
        columns = next((list(p.target.keys) for p in project.pipelines.values() if p.target.table == table and p.target.mode == "merge" and p.target.keys), [])
    res = compact_table(open_catalog(project), table, target_file_size=target_file_size, min_input_files=min_input_files, sort_by=columns, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
        return
    if not res.files_removed:
        out.print("Nothing to compact in {table}: no partition has {n} small files or a file with deletes.", table=table, n=max(min_input_files, 2))
    elif dry_run:
        out.print(
            "Would rewrite {files_removed} files ({bytes_before:,} bytes) in {partitions} partition(s) of {table}; nothing committed.",
            **{**vars(res), "table": table},
        )
    else:
        out.print(
            "Compacted {table}: {files_removed} files and {delete_files_removed} delete files -> {files_added} "
            "({bytes_before:,} -> {bytes_after:,} bytes) in {partitions} partition(s); {rows:,} rows, "
            "{rows_purged:,} deleted rows purged; snapshot {snapshot_id} ({seconds:.2f} s).",
            **{**vars(res), "table": table},
        )


@cli.command()
@click.argument("table", type=TABLE)
@click.option("--older-than", default=DEFAULT_AGE, show_default=True, help="Expire snapshots older than this age (7d, 12h, 30m, 0).")
@click.option("--retain-last", type=int, default=1, show_default=True, help="Always keep this many of main's newest snapshots.")
@click.option("--dry-run", is_flag=True, help="Show what would be expired and deleted; change nothing.")
@json_option
@pass_out
@guarded
def expire(out: Output, table: str, older_than: str, retain_last: int, dry_run: bool) -> None:
    """Expire TABLE's old snapshots and delete the files only they reached (data, delete and metadata
    files). Branch and tag heads, held audit batches and the newest --retain-last snapshots stay."""
    from icefield.catalog import open_catalog
    from icefield.write.expire import expire_table

    res = expire_table(open_catalog(out.project()), table, older_than=older_than, retain_last=retain_last, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    elif not res.snapshots_expired:
        out.print(
            "Nothing to expire in {table}: no snapshot older than {older_than} beyond the {retain_last} newest.",
            table=table, older_than=older_than, retain_last=retain_last,
        )
    else:
        out.print(
            ("Would expire" if dry_run else "Expired") + " {snapshots_expired} snapshot(s) of {table} (kept {snapshots_kept}); "
            + ("would delete" if dry_run else "deleted") + " {data_files_deleted} data/delete files and "
            "{metadata_files_deleted} metadata files ({bytes_deleted:,} bytes).",
            **{**vars(res), "table": table},
        )


# ---------------------------------------------------------------------------------------------- demo


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("icefield-demo"), show_default=True)
@click.option("--fresh", is_flag=True, help="Delete the folder first (only a folder an earlier `icefield demo` created: it holds .icefield-demo).")
@json_option
@pass_out
@guarded
def demo(out: Output, directory: Path, fresh: bool) -> None:
    """Run the shop demo: generate sources, load, change, reload incrementally, rerun, build a model."""
    from icefield.demo import run_demo

    report = run_demo(directory, fresh=fresh, out=out)
    if out.as_json:
        out.emit(report)
    if not report.get("ok", False):
        raise SystemExit(EXIT_FAILED)


# ---------------------------------------------------------------------------------------------- quarantine


@cli.group()
def quarantine() -> None:
    """Quarantined rows: which tables have them, what they are, and their replay into the table."""


@quarantine.command("list")
@json_option
@pass_out
@guarded
def quarantine_list(out: Output) -> None:
    """Tables with a quarantine: rows by check and by pipeline, rows a replay holds."""
    from icefield.catalog import open_catalog
    from icefield.pipeline.replay import list_quarantines

    infos = list_quarantines(open_catalog(out.project()))
    if out.as_json:
        out.emit({"quarantines": [i.to_dict() for i in infos]})
        return
    rows = [
        [i.table, i.rows, _counts(i.by_check), _counts(i.by_pipeline), i.replaying or "", i.newest.strftime("%Y-%m-%d %H:%M:%S") if i.newest else ""]
        for i in infos
    ]
    out.table("Quarantines", ["table", "rows", "by check", "by pipeline", "replaying", "newest"], rows)


@quarantine.command("show")
@click.argument("table", type=TABLE)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0), help="Most rows to show (newest first).")
@click.option("--check", default=None, help="Only rows that failed this check (decode, type, not_null, ...).")
@click.option("--pipeline", default=None, help="Only rows of this pipeline.")
@json_option
@pass_out
@guarded
def quarantine_show(out: Output, table: str, limit: int, check: str | None, pipeline: str | None) -> None:
    """The quarantined rows of TABLE: raw record, check and reason, source coordinates, batch, time."""
    import base64

    from icefield.catalog import open_catalog
    from icefield.pipeline.replay import show_quarantine

    total, rows = show_quarantine(open_catalog(out.project()), table, limit=limit, check=check, pipeline=pipeline)
    if out.as_json:
        docs = []
        for r in rows:
            exact = r.pop("raw_bytes", None)
            docs.append({**r, "raw_bytes_base64": base64.b64encode(exact).decode() if exact is not None else None})
        out.emit({"table": table, "total": total, "rows": docs})
        return
    shown = [
        [
            r["quarantined_at"].strftime("%Y-%m-%d %H:%M:%S") if r.get("quarantined_at") else "",
            r["check"],
            r["source"],
            r["reason"],
            _clip(r["raw"]),
            (r.get("batch_id") or "")[:12],
        ]
        for r in rows
    ]
    out.table(f"Quarantine of {table}", ["time", "check", "source", "reason", "raw", "batch"], shown)
    if total > len(rows):
        out.print("({n} more rows; raise --limit or filter with --check/--pipeline)", n=total - len(rows))


@quarantine.command("replay")
@click.argument("table", type=TABLE)
@click.option("--pipeline", default=None, help="Only rows of this pipeline.")
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@json_option
@pass_out
@guarded
def quarantine_replay(out: Output, table: str, pipeline: str | None, dry_run: bool) -> None:
    """Re-validate the quarantined rows of TABLE with the pipeline's current rules; move those that pass
    into the table, exactly once (rerun safely after an interruption)."""
    from icefield.pipeline.replay import replay_quarantine

    res = replay_quarantine(out.project(), table, pipeline=pipeline, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", "result": res.to_dict()})
        return
    title = "Replay (dry run: nothing written)" if dry_run else "Replay"
    out.table(
        title,
        ["table", "rows", "committed", "still quarantined", "filtered", "released (earlier replay)", "skipped", "time"],
        [[res.table, res.rows_considered, res.rows_committed, res.rows_quarantined, res.rows_filtered, res.rows_resumed, res.rows_skipped, f"{res.seconds:.2f}s"]],
    )
    if res.failures_by_check:
        out.print("still failing: {counts}", counts=_counts(res.failures_by_check))


# ---------------------------------------------------------------------------------------------- metrics


@cli.group()
def metrics() -> None:
    """Prometheus metrics of the tables (docs/metrics.md): data files, delete files, small files, bytes,
    records and snapshots per table, read from the manifests."""


COST_EVERY_DEFAULT = 900.0
"""``icefield.inspect.COST_EVERY``, repeated so that the CLI's help needs no import of the module."""


def _table_stats_registry(out: Output, cost_every: float | None) -> Any:
    """The tables' statistics, and their storage cost recomputed every ``cost_every`` seconds (``None``: none)."""
    from prometheus_client import CollectorRegistry

    from icefield.catalog import open_catalog
    from icefield.inspect import CostCollector, TableStatsCollector
    from icefield.write.compact import MIN_FILE_RATIO

    catalog = open_catalog(out.project())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TableStatsCollector(catalog, MIN_FILE_RATIO))  # type: ignore[arg-type]
    if cost_every is not None:
        registry.register(CostCollector(catalog, out.project(), cost_every))  # type: ignore[arg-type]
    return registry


@metrics.command("serve")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=9465, show_default=True, help="The port of /metrics (0: a free one).")
@click.option("--host", default=None, help="The address to bind (default: metrics.host of icefield.yaml, 127.0.0.1).")
@click.option(
    "--cost-every", type=click.FloatRange(min=0), default=COST_EVERY_DEFAULT, show_default=True,
    help="Seconds between two computations of the storage cost metrics (they list every table's folders); 0: no cost metrics.",
)
@pass_out
@guarded
def metrics_serve(out: Output, port: int, host: str | None, cost_every: float) -> None:
    """Serve the tables' statistics on http://HOST:PORT/metrics until Ctrl-C or SIGTERM; every scrape reads
    the catalog and the current snapshot's manifests of each table. The storage cost per table, part and
    owner (the figures of `icefield cost`) is served too, recomputed every --cost-every seconds."""
    from icefield.observe.metrics import serve

    registry = _table_stats_registry(out, cost_every or None)
    with _stop_on_signals() as stop, serve(registry, host or out.project().config.metrics.host, port) as server:
        out.print("Serving table statistics on {url} (Ctrl-C stops)", url=server.url)
        assert stop is not None
        stop.wait()


@metrics.command("show")
@click.option("--cost/--no-cost", default=True, show_default=True, help="With the storage cost metrics (they list every table's folders).")
@pass_out
@guarded
def metrics_show(out: Output, cost: bool) -> None:
    """Print the tables' statistics (and their storage cost) once, in Prometheus' text format (for
    node_exporter's textfile collector, or a look)."""
    from prometheus_client import generate_latest

    click.echo(generate_latest(_table_stats_registry(out, 0.0 if cost else None)).decode(), nl=False)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _clip(text: str | None, width: int = 80) -> str:
    if text is None:
        return ""
    return text if len(text) <= width else text[: width - 3] + "..."
