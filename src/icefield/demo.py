"""The shop demo behind ``icefield demo`` and ``make demo``.

It copies the example project, generates its sources, loads them, changes the sources (new and updated
rows, a late clickstream file, a corrected rates file), loads again incrementally, runs a third time to
show that nothing changes, builds the ``daily_revenue`` model and shows tables, snapshots, quarantined
rows and a query. It checks its own numbers against the generator's and reports ``ok``.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.cli.output import Output
    from icefield.pipeline import RunResult


def copy_example(directory: Path, fresh: bool) -> None:
    """Copy the shop example project into ``directory``."""
    if fresh and directory.exists():
        if not (directory / "icefield.yaml").exists() and any(directory.iterdir()):
            raise ConfigError(f"{directory} is not empty and is not an icefield project; pick another --dir")
        shutil.rmtree(directory)
    template = resources.files("icefield.examples.shop").joinpath("project")
    with resources.as_file(template) as src:
        shutil.copytree(src, directory, dirs_exist_ok=True)


def _run_all(project: Any, catalog: Any) -> list[RunResult]:
    from icefield.pipeline import run_model, run_pipeline
    from icefield.pipeline.runner import new_run_id

    run_id = new_run_id()
    results = [run_pipeline(project, name, catalog, run_id) for name in sorted(project.pipelines)]
    results += [run_model(project, name, catalog, run_id) for name in sorted(project.models)]
    return results


def _summary(results: list[RunResult]) -> list[list[Any]]:
    return [
        [r.pipeline, r.table, r.rows_in, r.rows_committed, r.rows_quarantined, len(r.snapshots)]
        for r in results
    ]


def run_demo(directory: Path, fresh: bool, out: Output) -> dict[str, Any]:
    """Run the demo in ``directory``. Returns a JSON-able report with ``ok`` and the checks it made."""
    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.examples.shop import cdc, generate
    from icefield.inspect import describe_table, run_query

    started = time.perf_counter()
    copy_example(directory, fresh)
    gen = generate.create(directory)
    snap = cdc.capture(directory)
    project = load_project(directory)
    catalog = open_catalog(project)
    cols = ["pipeline", "table", "rows in", "committed", "quarantined", "snapshots"]
    out.print(f"[bold]icefield demo[/] in {directory}: a shop database ({gen.orders} orders, {gen.customers} customers), "
              f"{len(gen.clickstream_files)} clickstream files, a rates CSV\n")

    first = _run_all(project, catalog)
    out.table("1. First load", cols, _summary(first))

    mut = generate.mutate(directory)
    rates = generate.change_rates(directory)
    # The shop deletes its three bad orders: a cursor-based load cannot see a delete; change data capture does.
    cdc.delete_orders(gen.db_path, list(gen.bad_order_ids))
    changes = cdc.capture(directory)
    out.print(f"\nThe sources change: {len(mut.inserted_order_ids)} new orders, {len(mut.updated_order_ids)} updated orders, "
              f"{len(gen.bad_order_ids)} bad orders deleted, a late clickstream file ({mut.late_lines} events), "
              f"a corrected rate ({rates.currency} on {rates.day}).\n"
              f"Change data capture wrote {changes.events} Debezium events: {changes.inserts} inserts, {changes.updates} updates, "
              f"{changes.deletes} deletes with their tombstones, {changes.redelivered} delivered twice, two transactions interleaved.\n")
    second = _run_all(project, catalog)
    out.table("2. Incremental load", cols, _summary(second))

    nothing = cdc.capture(directory)
    third = _run_all(project, catalog)
    out.table("3. Rerun with nothing new", cols, _summary(third))

    counts = {}
    for name in ("shop.customers", "shop.orders", "shop.order_items", "cdc.orders", "raw.clickstream", "raw.rates", "analytics.daily_revenue"):
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

    expected_orders = mut.orders - len(gen.bad_order_ids)
    checks = {
        "orders committed equal source orders minus the bad ones": counts["shop.orders"] == expected_orders,
        "order items equal source items": counts["shop.order_items"] == mut.order_items,
        "customers equal source customers": counts["shop.customers"] == mut.customers,
        "clickstream rows equal good lines plus the late file": counts["raw.clickstream"] == gen.clickstream_good_lines + mut.late_lines,
        "rates replaced, not doubled": counts["raw.rates"] == rates.rows,
        "bad orders quarantined": sum(r.rows_quarantined for r in first if r.pipeline == "orders") == len(gen.bad_order_ids),
        "bad clickstream lines quarantined": sum(r.rows_quarantined for r in first if r.pipeline == "clickstream") == gen.clickstream_bad_lines,
        "the CDC table equals the source orders, row by row": _cdc_matches(project, catalog, gen.db_path),
        "the snapshot captured every source order": snap.snapshot == gen.orders,
        "the third run committed nothing": nothing.events == 0 and all(not r.snapshots for r in third),
        "every run conserved rows": all(r.conserved for r in first + second + third),
    }
    ok = all(checks.values())
    out.table("Checks", ["check", "result"], [[k, "ok" if v else "FAILED"] for k, v in checks.items()])
    seconds = time.perf_counter() - started
    out.print(f"\n{'[green]Demo ok[/]' if ok else '[red]Demo FAILED[/]'} in {seconds:.1f}s. Explore it:\n"
              f"  cd {directory} && icefield tables && icefield show shop.orders && icefield sql \"select * from raw.rates limit 5\"")
    return {
        "ok": ok,
        "checks": checks,
        "directory": str(directory),
        "seconds": round(seconds, 2),
        "tables": counts,
        "runs": {"first": [r.to_dict() for r in first], "second": [r.to_dict() for r in second], "third": [r.to_dict() for r in third]},
    }


def _cdc_matches(project: Any, catalog: Any, db_path: Path) -> bool:
    """True if ``cdc.orders`` holds exactly the source database's orders, column by column."""
    from datetime import datetime
    from decimal import Decimal

    from icefield.examples.shop.cdc import source_rows
    from icefield.inspect import run_query

    def norm(row: dict[str, Any]) -> tuple[Any, ...]:
        amount = row["amount"]
        amount = None if amount is None else Decimal(str(amount)).quantize(Decimal("0.01"))
        times = [t.strftime("%Y-%m-%d %H:%M:%S") if isinstance(t, datetime) else t for t in (row["created_at"], row["updated_at"])]
        return (row["order_id"], row["customer_id"], row["status"], amount, row["currency"], *times)

    cols = "order_id, customer_id, status, amount, currency, created_at, updated_at"
    landed = run_query(project, f"select {cols} from cdc.orders", catalog).to_pylist()
    want = sorted(norm(r) for r in source_rows(db_path).values())
    return sorted(norm(r) for r in landed) == want
