"""The CLI command of storage cost: ``icefield cost`` (:mod:`icefield.iceberg.cost`)."""

from __future__ import annotations

from typing import Any

import click

from icefield.cli import cli, guarded
from icefield.cli.commands import TABLE, json_option, pass_out
from icefield.cli.output import Output

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _size(n: int) -> str:
    """``n`` bytes for people: ``812 B``, ``3.4 MiB``."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _money(v: float, currency: str) -> str:
    """A monthly price for people: cents above 1, four decimals above 0.0001, else its magnitude."""
    if v >= 1:
        return f"{v:,.2f} {currency}"
    return f"{v:.4f} {currency}" if v >= 0.0001 or v == 0 else f"{v:.1e} {currency}"


@cli.command()
@click.argument("tables", nargs=-1, type=TABLE)
@click.option("--namespace", "namespaces", multiple=True, help="Only the tables of this namespace (repeatable).")
@click.option("--owner", "owners", multiple=True, help="Only the tables of this owner (repeatable; '' for tables without one).")
@json_option
@pass_out
@guarded
def cost(out: Output, tables: tuple[str, ...], namespaces: tuple[str, ...], owners: tuple[str, ...]) -> None:
    """Storage of TABLES (default: every table of the catalog) and its monthly price: bytes of the current
    snapshot, bytes only history keeps (time travel), metadata, orphan files, small files; totals per
    namespace and per owner. Prices come from the `cost:` block of icefield.yaml (docs/cost.md)."""
    from icefield.catalog import list_tables, open_catalog
    from icefield.iceberg.cost import grand_total, storage_costs, totals

    project = out.project()
    catalog = open_catalog(project)
    names: list[str] | None = list(tables) or None
    if names is None and namespaces:
        names = [".".join(ident) for ident in list_tables(catalog, lambda ns: ".".join(ns) in namespaces)]
    costs = [c for c in storage_costs(catalog, project, names) if (not namespaces or c.namespace in namespaces) and (not owners or c.owner in owners)]
    currency = project.config.cost.currency
    by_ns, by_owner, total = totals(costs, "namespace"), totals(costs, "owner"), grand_total(costs)
    if out.as_json:
        out.emit({
            "currency": currency,
            "prices": project.config.cost.prices,
            "tables": [c.as_dict() for c in costs],
            "namespaces": {k: v.as_dict() for k, v in by_ns.items()},
            "owners": {k: v.as_dict() for k, v in by_owner.items()},
            "total": total.as_dict(),
        })
        return
    if not costs:
        out.print("No tables" + (" match --namespace or --owner." if namespaces or owners else " in the catalog."))
        return
    out.table(
        f"Storage per table (prices per month, {currency})",
        ["table", "owner", "class", "current", "history", "metadata", "orphans", "small files", "total", "per month"],
        [
            [c.table, c.owner or "-", c.storage_class, _size(c.current_bytes), _size(c.history_bytes), _size(c.metadata_bytes),
             f"{_size(c.orphan_bytes)} ({c.orphan_files})", f"{_size(c.small_bytes)} ({c.small_files})", _size(c.total_bytes),
             _money(c.total_cost, currency)]
            for c in costs
        ],
    )
    for title, groups in (("namespace", by_ns), ("owner", by_owner)):
        out.table(f"Per {title}", _total_columns(title), [_total_row(k or "-", v, currency) for k, v in groups.items()] + [_total_row("(all)", total, currency)])


def _total_columns(title: str) -> list[str]:
    return [title, "tables", "current", "history", "metadata", "orphans", "small files", "total", "per month"]


def _total_row(key: str, t: Any, currency: str) -> list[Any]:
    return [key, t.tables, _size(t.current_bytes), _size(t.history_bytes), _size(t.metadata_bytes), _size(t.orphan_bytes),
            _size(t.small_bytes), _size(t.total_bytes), _money(t.total_cost, currency)]
