"""One writer per table: which pipeline or model writes each table of a project.

A table written by two writers loses rows without a word: a model that overwrites a pipeline's table
erases rows the pipeline never loads again (its position says they are loaded), and two pipelines reading
the same files into one table double every row. So a project refuses, when it loads, a table that two of
its pipelines or models write, unless every one of them declares ``target.shared: true``. The tables
icefield keeps beside a pipeline's (``<table>__quarantine``, ``<table>__tombstones``) are its own: no
pipeline or model may target them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from icefield.errors import ConfigError

QUARANTINE_SUFFIX = "__quarantine"
TOMBSTONE_SUFFIX = "__tombstones"
# The column of ``<table>__tombstones`` that says when icefield recorded each tombstone (UTC): the age
# the tombstone horizon (``target.maintenance.tombstones_older_than``) is counted from.
TOMBSTONED_AT = "_tombstoned_at"
RESERVED_SUFFIXES = (QUARANTINE_SUFFIX, TOMBSTONE_SUFFIX)


def check_writers(writers: Iterable[tuple[str, Path, str, bool]]) -> None:
    """Refuse two writers of one table, and targets with a reserved suffix.

    ``writers`` are ``(what, file, table, shared)``: ``what`` names the writer (``pipeline orders``,
    ``model daily``), ``file`` the file that declares it. Raises :class:`ConfigError` naming every writer of
    the table and the fix.
    """
    by_table: dict[str, list[tuple[str, Path, bool]]] = {}
    for what, file, table, shared in writers:
        for suffix in RESERVED_SUFFIXES:
            if table.endswith(suffix):
                raise ConfigError(
                    f"{file}: target table {table!r}: names ending in {suffix!r} are icefield's own (the table kept "
                    f"beside {table.removesuffix(suffix)!r}); {what} cannot write it. Pick another table name"
                )
        by_table.setdefault(table, []).append((what, file, shared))
    for table, found in sorted(by_table.items()):
        if len(found) < 2 or all(shared for _, _, shared in found):
            continue
        names = "; ".join(f"{what} ({file})" for what, file, _ in found)
        raise ConfigError(
            f"table {table!r} has {len(found)} writers: {names}. One writer per table: a second one overwrites or "
            f"doubles the first one's rows. Give each its own table, or set `shared: true` under `target:` in "
            f"every one of them if they really write disjoint rows"
        )
