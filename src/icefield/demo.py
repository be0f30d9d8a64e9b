"""The shop demo behind ``icefield demo`` and ``make demo``.

It copies the example project, generates its sources, starts the shop's support API on 127.0.0.1
(:mod:`icefield.examples.shop.support`, landed by ``api/support_tickets.yaml``, stopped when the demo ends),
loads them, changes the sources (new and updated rows and tickets, a late clickstream file, a corrected rates
file), loads again incrementally, runs a third time to
show that nothing changes, builds the ``daily_revenue`` model and shows tables, snapshots, quarantined
rows and a query. Then orders arrive before their customer: the orders pipeline's referential-integrity
gate holds the batch on its audit branch (``main`` untouched) until the customer arrives; the last run of
the project (in plan order: customers, then orders, then the model) loads it, publishes the held batch and
rebuilds the model, so the demo ends with every table and model up to date (a rerun commits nothing). It
checks its own numbers against the generator's and reports ``ok``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from icefield.cli.output import Output
    from icefield.config import Project
    from icefield.examples.shop.generate import GenerateResult
    from icefield.examples.shop.support import SupportApi
    from icefield.observe.events import Observer
    from icefield.pipeline import RunResult


DEMO_MARKER = ".icefield-demo"
"""The file the demo writes into a folder it creates: ``--fresh`` deletes only a folder that holds it."""


def copy_example(directory: Path, fresh: bool) -> None:
    """Copy the shop example project into ``directory``.

    ``directory`` must be missing, empty, or a folder an earlier demo created (it holds
    :data:`DEMO_MARKER`). With ``fresh`` such a demo folder is deleted first; any other folder is refused
    with a :class:`ConfigError` (a real project is never deleted or overwritten)."""
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"--dir {directory}: is a file, not a folder; pick another --dir")
        ours = (directory / DEMO_MARKER).is_file()
        if not ours and any(directory.iterdir()):
            raise ConfigError(
                f"--dir {directory.resolve()}: the folder is not empty and was not created by `icefield demo` "
                f"(it has no {DEMO_MARKER} file), so the demo neither uses nor deletes it; pick a new or empty "
                "folder with --dir"
            )
        if fresh and ours:
            if directory.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
                raise ConfigError(
                    f"--dir {directory}: --fresh would delete the folder this command runs in; run it from outside "
                    f"{directory.resolve()}"
                )
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).write_text(
        "This folder was created by `icefield demo`; `icefield demo --fresh` may delete it.\n", encoding="utf-8"
    )
    template = resources.files("icefield.examples.shop").joinpath("project")
    with resources.as_file(template) as src:
        shutil.copytree(src, directory, dirs_exist_ok=True)


def prepare_demo(directory: Path, fresh: bool = False) -> tuple[Any, Any]:
    """The shop demo project in ``directory`` with its generated sources, ready to run (what ``icefield
    demo`` runs first; the same seed gives the same rows every time): :func:`copy_example`, then the shop
    database, the clickstream files, the rates CSV and the captured changes. Returns what the generator
    made (orders, customers, clickstream files...) and what the change capture wrote."""
    from icefield.examples.shop import cdc, generate

    copy_example(directory, fresh)
    gen = generate.create(directory)
    return gen, cdc.capture(directory)


def _run_all(project: Any, catalog: Any, observers: Sequence[Observer] = ()) -> list[RunResult]:
    """Run the project's plan as `icefield run` does: every pipeline and model, each after what it reads.
    Raises the first failure."""
    from icefield.pipeline import run_plan

    done = run_plan(project, catalog=catalog, observers=observers)
    if done.failures:
        raise done.failures[0][1]
    return done.results


def _summary(results: list[RunResult]) -> list[list[Any]]:
    return [
        [r.pipeline, r.table, r.rows_in, r.rows_committed, r.rows_quarantined, len(r.snapshots)]
        for r in results
    ]


def run_demo(directory: Path, fresh: bool, out: Output, observers: Sequence[Observer] = ()) -> dict[str, Any]:
    """Run the demo in ``directory``. Returns a JSON-able report with ``ok`` and the checks it made.
    ``observers`` receive the events of every run of the demo (:mod:`icefield.observe.events`)."""
    started = time.perf_counter()
    gen, snap = prepare_demo(directory, fresh)
    # The support API lives as long as the demo: stopped when the demo ends, whatever happens.
    with _support_api(directory, gen.customers) as api:
        return _steps(directory, gen, snap, api, out, observers, started)


def _steps(
    directory: Path, gen: GenerateResult, snap: Any, api: SupportApi, out: Output, observers: Sequence[Observer], started: float
) -> dict[str, Any]:
    """The demo's steps once its sources are prepared and its support API is up (see :func:`run_demo`)."""
    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.examples.shop import cdc, generate, support
    from icefield.inspect import describe_table
    from icefield.query import run_query

    project = _with_api_pipeline(load_project(directory), directory)
    catalog = open_catalog(project)
    cols = ["pipeline", "table", "rows in", "committed", "quarantined", "snapshots"]
    tickets_at_first = len(api.records)
    out.print("[bold]icefield demo[/] in {directory}: a shop database ({orders} orders, {customers} customers), "
              "{files} clickstream files, a rates CSV, a support API on {url} ({tickets} tickets, pages of 50, "
              "a bearer token, at most 20 requests a second)\n",
              directory=directory, orders=gen.orders, customers=gen.customers, files=len(gen.clickstream_files),
              url=api.url, tickets=tickets_at_first)

    first = _run_all(project, catalog, observers)
    out.table("1. First load", cols, _summary(first))

    mut = generate.mutate(directory)
    rates = generate.change_rates(directory)
    # The shop deletes its three bad orders: a cursor-based load cannot see a delete; change data capture does.
    cdc.delete_orders(gen.db_path, list(gen.bad_order_ids))
    changes = cdc.capture(directory)
    opened = api.add(12)
    changed = [7, 42, 99, 150, 201, 238]
    api.update(changed, status="solved")
    out.print("\nThe sources change: {inserted} new orders, {updated} updated orders, "
              "{bad} bad orders deleted, a late clickstream file ({late} events), "
              "a corrected rate ({currency} on {day}), {opened} support tickets opened and {solved} solved.\n"
              "Change data capture wrote {events} Debezium events: {inserts} inserts, {updates} updates, "
              "{deletes} deletes with their tombstones, {redelivered} delivered twice, two transactions interleaved.\n",
              inserted=len(mut.inserted_order_ids), updated=len(mut.updated_order_ids), bad=len(gen.bad_order_ids),
              late=mut.late_lines, currency=rates.currency, day=rates.day, events=changes.events, inserts=changes.inserts,
              updates=changes.updates, deletes=changes.deletes, redelivered=changes.redelivered,
              opened=len(opened), solved=len(changed))
    second = _run_all(project, catalog, observers)
    out.table("2. Incremental load", cols, _summary(second))

    nothing = cdc.capture(directory)
    third = _run_all(project, catalog, observers)
    out.table("3. Rerun with nothing new", cols, _summary(third))
    cdc_ok = _cdc_matches(project, catalog, gen.db_path)

    counts = {}
    for name in ("shop.customers", "shop.orders", "shop.order_items", "cdc.orders", "raw.clickstream", "raw.rates", "analytics.daily_revenue", "support.tickets"):
        counts[name] = run_query(project, f"select count(*) as n from {name}", catalog).column("n")[0].as_py()
    out.table("Tables", ["table", "rows"], [[k, v] for k, v in counts.items()])

    orders = describe_table(catalog, "shop.orders", max_snapshots=10)
    out.table(
        "Snapshots of shop.orders (each carries its pipeline, batch id and run id)",
        ["snapshot", "operation", "records", "batch id", "run id"],
        [[s["snapshot_id"], s["operation"], s["total_records"], s["icefield"].get("icefield.batch-id", "")[:12], s["icefield"].get("icefield.run-id")] for s in orders["snapshots"]],
    )
    quarantine = run_query(
        project,
        "select 'shop.orders' as tbl, \"check\", reason, source from shop.orders__quarantine "
        "union all select 'raw.clickstream', \"check\", reason, source from raw.clickstream__quarantine order by 1, 4",
        catalog,
    )
    out.table("Quarantined rows (raw record kept; `icefield sql` shows it)", quarantine.column_names, [list(r.values()) for r in quarantine.to_pylist()])
    revenue = run_query(project, "select * from analytics.daily_revenue order by day desc limit 5", catalog)
    out.table("Query: select * from analytics.daily_revenue order by day desc limit 5", revenue.column_names, [list(r.values()) for r in revenue.to_pylist()])

    gated = _held_batch_and_fix(directory, project, catalog, out, observers)
    tickets = _tickets_match(project, catalog, api.expected())

    expected_orders = mut.orders - len(gen.bad_order_ids)
    checks = {
        "orders committed equal source orders minus the bad ones": counts["shop.orders"] == expected_orders,
        "order items equal source items": counts["shop.order_items"] == mut.order_items,
        "customers equal source customers": counts["shop.customers"] == mut.customers,
        "clickstream rows equal good lines plus the late file": counts["raw.clickstream"] == gen.clickstream_good_lines + mut.late_lines,
        "rates replaced, not doubled": counts["raw.rates"] == rates.rows,
        "bad orders quarantined": sum(r.rows_quarantined for r in first if r.pipeline == "orders") == len(gen.bad_order_ids),
        "bad clickstream lines quarantined": sum(r.rows_quarantined for r in first if r.pipeline == "clickstream") == gen.clickstream_bad_lines,
        "the CDC table equals the source orders, row by row": cdc_ok,
        "the snapshot captured every source order": snap.snapshot == gen.orders,
        "the third run committed nothing": nothing.events == 0 and all(not r.snapshots for r in third),
        "every run conserved rows": all(r.conserved for r in first + second + third),
        "the first load landed every support ticket": _committed(first, "support_tickets") == tickets_at_first,
        "the second load landed only the opened and changed tickets": _committed(second, "support_tickets") == len(opened) + len(changed),
        "support.tickets equals the API's tickets, row by row": tickets["equal"],
        "no support ticket landed twice": tickets["duplicates"] == 0,
        **gated.pop("checks"),
    }
    ok = all(checks.values())
    out.table("Checks", ["check", "result"], [[k, "ok" if v else "FAILED"] for k, v in checks.items()])
    seconds = time.perf_counter() - started
    out.print("\n" + ("[green]Demo ok[/]" if ok else "[red]Demo FAILED[/]") + " in {seconds:.1f}s. Explore it:\n"
              "  cd {directory} && icefield tables && icefield show shop.orders && icefield checks shop.orders && "
              "icefield sql \"select * from raw.rates limit 5\"\n"
              "The support API was up only while the demo ran: its pipeline, {pipeline}, is not under pipelines/, so "
              "`icefield run` there leaves it out.", seconds=seconds, directory=directory, pipeline=support.PIPELINE_FILE)
    return {
        "ok": ok,
        "checks": checks,
        "directory": str(directory),
        "seconds": round(seconds, 2),
        "tables": {**counts, "shop.orders": gated["orders"], "shop.customers": gated["customers"], "analytics.daily_revenue": gated["daily_revenue"]},
        "gates": gated,
        "runs": {"first": [r.to_dict() for r in first], "second": [r.to_dict() for r in second], "third": [r.to_dict() for r in third]},
    }


def _committed(results: list[RunResult], pipeline: str) -> int:
    return sum(r.rows_committed for r in results if r.pipeline == pipeline)


@contextlib.contextmanager
def _support_api(directory: Path, customers: int) -> Iterator[SupportApi]:
    """Start the shop's support API on a free port of 127.0.0.1 for the ``with`` block: its bearer token in
    the project's secrets file, its address in the environment variable the pipeline reads. Both are undone and
    the server stopped when the block ends, whatever happens."""
    from icefield.examples.shop.support import ADDRESS_ENV, TOKEN_FILE, SupportApi

    token_file = directory / TOKEN_FILE
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    before = os.environ.get(ADDRESS_ENV)
    api = SupportApi(customers=customers, token=token)
    api.start()
    try:
        os.environ[ADDRESS_ENV] = api.url.removeprefix("http://")
        yield api
    finally:
        api.stop()
        if before is None:
            os.environ.pop(ADDRESS_ENV, None)
        else:
            os.environ[ADDRESS_ENV] = before


def _with_api_pipeline(project: Project, directory: Path) -> Project:
    """``project`` with the support API's pipeline (:data:`~icefield.examples.shop.support.PIPELINE_FILE`),
    which is not under ``pipelines/`` (the API is up only while the demo runs)."""
    import dataclasses

    import yaml

    from icefield.config import PipelineConfig
    from icefield.config.scheduling import merge_scheduling
    from icefield.examples.shop.support import PIPELINE_FILE

    pipe = PipelineConfig.model_validate(yaml.safe_load((directory / PIPELINE_FILE).read_text(encoding="utf-8")))
    pipe = pipe.model_copy(update={"scheduling": merge_scheduling(project.config.scheduling, pipe.scheduling)})
    return dataclasses.replace(project, pipelines={**project.pipelines, pipe.name: pipe})


def _tickets_match(project: Project, catalog: Any, expected: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Whether ``support.tickets`` holds exactly the API's tickets ``expected`` (id, customer, status,
    updated_at), and how many ids it holds more than once."""
    from datetime import UTC

    from icefield.query import run_query

    rows = run_query(project, "select id, customer_id, status, updated_at from support.tickets", catalog).to_pylist()
    landed = sorted((r["id"], r["customer_id"], r["status"], r["updated_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) for r in rows)
    want = sorted((t["id"], t["customer_id"], t["status"], t["updated_at"]) for t in expected.values())
    return {"equal": landed == want, "duplicates": len(rows) - len({r["id"] for r in rows})}


def _cdc_matches(project: Any, catalog: Any, db_path: Path) -> bool:
    """True if ``cdc.orders`` holds exactly the source database's orders, column by column."""
    from datetime import datetime
    from decimal import Decimal

    from icefield.examples.shop.cdc import source_rows
    from icefield.query import run_query

    def norm(row: dict[str, Any]) -> tuple[Any, ...]:
        amount = row["amount"]
        amount = None if amount is None else Decimal(str(amount)).quantize(Decimal("0.01"))
        times = [t.strftime("%Y-%m-%d %H:%M:%S") if isinstance(t, datetime) else t for t in (row["created_at"], row["updated_at"])]
        return (row["order_id"], row["customer_id"], row["status"], amount, row["currency"], *times)

    cols = "order_id, customer_id, status, amount, currency, created_at, updated_at"
    landed = run_query(project, f"select {cols} from cdc.orders", catalog).to_pylist()
    want = sorted(norm(r) for r in source_rows(db_path).values())
    return sorted(norm(r) for r in landed) == want


def _orders_before_their_customer(directory: Path, n: int = 5) -> tuple[int, list[int]]:
    """Insert ``n`` orders of a customer the shop database does not have yet. Returns (customer id, order ids)."""
    import contextlib
    import datetime as dt
    import sqlite3

    with contextlib.closing(sqlite3.connect(directory / "data" / "shop.db")) as con, con:
        newest = max(str(con.execute(f"select max(updated_at) from {t}").fetchone()[0]) for t in ("customers", "orders"))
        at = (dt.datetime.strptime(newest, "%Y-%m-%d %H:%M:%S") + dt.timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        customer = int(con.execute("select max(customer_id) from customers").fetchone()[0]) + 1
        first = int(con.execute("select max(order_id) from orders").fetchone()[0]) + 1
        ids = list(range(first, first + n))
        con.executemany(
            "insert into orders (order_id, customer_id, status, amount, currency, created_at, updated_at) values (?, ?, 'placed', 25.00, 'EUR', ?, ?)",
            [(i, customer, at, at) for i in ids],
        )
    return customer, ids


def _customer_arrives(directory: Path, customer_id: int) -> None:
    import contextlib
    import datetime as dt
    import sqlite3

    with contextlib.closing(sqlite3.connect(directory / "data" / "shop.db")) as con, con:
        newest = str(con.execute("select max(updated_at) from customers").fetchone()[0])
        at = (dt.datetime.strptime(newest, "%Y-%m-%d %H:%M:%S") + dt.timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        con.execute(
            "insert into customers (customer_id, name, email, country, created_at, updated_at) values (?, 'Late Customer', ?, 'DE', ?, ?)",
            (customer_id, f"customer{customer_id}@example.org", at, at),
        )


def _held_batch_and_fix(directory: Path, project: Any, catalog: Any, out: Output, observers: Sequence[Observer]) -> dict[str, Any]:
    """Step 4 and 5 of the demo: a batch held by a gate, then its fix. Returns counts and self-checks."""
    from icefield.errors import GateFailedError
    from icefield.iceberg.history import head_id, is_held
    from icefield.pipeline import run_pipeline
    from icefield.quality.results import latest_results
    from icefield.query import run_query
    from icefield.write.branches import audit_branch

    branch = audit_branch("orders")
    customer, order_ids = _orders_before_their_customer(directory)
    before = head_id(catalog.load_table("shop.orders"))
    failing: list[str] = []
    try:
        run_pipeline(project, "orders", catalog, observers=observers)
    except GateFailedError as e:
        failing = [getattr(c, "check", "") for c in e.checks]
    held = catalog.load_table("shop.orders")
    held_snapshot = head_id(held, branch)
    out.print(
        "\n4. {n} orders arrive for customer {customer}, whom shop.customers does not know yet. The orders pipeline "
        "writes the batch on branch {branch}, runs its gates there, and holds it: main stays at snapshot {before}.",
        n=len(order_ids), customer=customer, branch=branch, before=before,
    )
    rows = latest_results(catalog, "shop.orders")
    out.table("`icefield checks shop.orders`", ["check", "status", "value", "message"], [[r["check"], r["status"], "" if r["value"] is None else f"{r['value']:.4g}", r["message"]] for r in rows])

    def in_main(ids: list[int]) -> int:
        sql = f"select count(*) as n from shop.orders where order_id in ({', '.join(map(str, ids))})"
        return int(run_query(project, sql, catalog).column("n")[0].as_py())

    visible_while_held = in_main(order_ids)
    _customer_arrives(directory, customer)
    # `icefield run`: the plan loads customers before orders (the orders' gate reads shop.customers) and
    # rebuilds daily_revenue after orders, so every table and model is up to date when the demo ends.
    rerun = {r.pipeline: r for r in _run_all(project, catalog, observers)}["orders"]
    final = catalog.load_table("shop.orders")
    out.print(
        "\n5. The customer arrives. `icefield run` loads it first (the orders' gate reads shop.customers), then checks the "
        "held batch again: the gate passes and main is fast-forwarded to it (snapshot {snapshot}): {visible} held orders are "
        "now visible, and analytics.daily_revenue is rebuilt from them.\n",
        snapshot=head_id(final), visible=in_main(order_ids),
    )
    count = lambda t: int(run_query(project, f"select count(*) as n from {t}", catalog).column("n")[0].as_py())  # noqa: E731
    return {
        "held_snapshot": held_snapshot,
        "failing": failing,
        "orders": count("shop.orders"),
        "customers": count("shop.customers"),
        "daily_revenue": count("analytics.daily_revenue"),
        "checks": {
            "the gate held the orders of an unknown customer": failing == ["references(customer_id)"],
            "main kept its snapshot while the batch was held": head_id(held) == before and is_held(held, branch) and visible_while_held == 0,
            "the rerun published the held batch itself, once": head_id(final) == held_snapshot and in_main(order_ids) == len(order_ids)
            and rerun.status == "success",
        },
    }
