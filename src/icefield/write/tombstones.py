"""The tombstone horizon: prune ``<table>__tombstones`` of the tombstones older than a declared age.

A merge fed by change data capture (``keep_newest`` with a ``delete_column``) records each deleted key
with the version that deleted it in ``<table>__tombstones``, so that an older version of the row,
redelivered late, does not bring it back. Without pruning that table only grows. ``prune_tombstones``
deletes the tombstones older than ``older_than`` (the *horizon*), in one commit to the tombstone table.

**What "older" means.** A tombstone's age is counted from the time icefield recorded it: the column
``_tombstoned_at`` (UTC) that the writer stamps on each tombstone it records, before the data commit of
its batch (a key deleted again at a newer version gets a new stamp). The alternatives are not robust:

- the commit time of the snapshot that added a tombstone's file is lost or moved by the table's own
  life: a merge into the tombstone table copies untouched tombstones into new files (they look younger),
  and once snapshot expiry removed that snapshot its time is gone;
- the CDC event's source time (``_cdc_ts_ms``, or the order columns) says when the row was deleted in the
  source database, not when icefield saw the delete; a redelivery window is counted in delivery time, and
  an initial snapshot or a connector that catches up delivers events much older than they are.

So the horizon must be longer than the longest time a source may redeliver an event after icefield
first recorded its delete (a Kafka topic's retention, a replayed backfill, a restarted connector).

**The trade-off.** Inside the horizon the guarantee holds: a redelivered older version of a key deleted
less than ``older_than`` ago is dropped. Past it the key's tombstone is gone, and a redelivered older
version of a deleted key is merged like any new row: it comes back. (An older version of a key whose
stored row is still there is still dropped as stale: that check reads the data table.)

Tombstones recorded before ``_tombstoned_at`` existed have no stamp: the first prune that sees them
stamps them with its own time (in the same commit), so they are pruned one horizon later. A tombstone
table still without the column (nothing recorded since) is left as it is.

The commit removes each file that holds a pruned (or unstamped) tombstone, with its position delete
files, and adds the file of its remaining tombstones; it is an ``overwrite`` that fails, and replans, when
a concurrent recording added a file or removed or deleted from one of those files meanwhile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.config.ages import parse_age
from icefield.config.ownership import TOMBSTONE_SUFFIX, TOMBSTONED_AT
from icefield.iceberg.commits import Retry, commit, commit_transaction
from icefield.iceberg.deletes import is_file_scoped
from icefield.iceberg.tables import load_existing, load_table, table_identifier
from icefield.write.compact import SUMMARY_OPERATION
from icefield.write.expire import delete_paths

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

__all__ = ["PruneResult", "prune_tombstones"]

ATTEMPTS = 4
OPERATION = "tombstones"
"""The ``icefield.operation`` of a prune's snapshot, and the operation of its ``MaintenanceDone`` event."""


@dataclass
class PruneResult:
    """What a prune did (or, with ``dry_run``, would do) to ``table``'s tombstone table
    (``tombstones_table``): ``tombstones_removed`` older than the horizon deleted; ``tombstones_kept``
    newer ones written again because they shared a file with a removed one (files of newer tombstones only
    are not read); ``tombstones_stamped`` of those without a recorded time, stamped now; ``snapshot_id`` is
    the tombstone table's new snapshot (None: nothing was older, or ``dry_run``)."""

    table: str
    tombstones_table: str
    tombstones_removed: int = 0
    tombstones_kept: int = 0
    tombstones_stamped: int = 0
    files_removed: int = 0
    files_added: int = 0
    snapshot_id: int | None = None
    seconds: float = 0.0
    dry_run: bool = False


def prune_tombstones(
    catalog: Catalog,
    table_name: str,
    *,
    older_than: str | int | float,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneResult:
    """Delete the tombstones of ``table_name`` (kept in ``<table_name>__tombstones``) recorded more than
    ``older_than`` before ``now`` (default: the current time, seconds since the epoch), in one commit (see
    the module doc). Returns what was done; no commit when nothing is older. A table without a tombstone
    table has nothing to prune.

    Raises :class:`ConfigError` when ``older_than`` is not an age or ``table_name`` is not a table,
    :class:`CommitConflictError` when concurrent recordings outlast the retries (run it again).
    """
    age = parse_age(older_than)
    load_existing(catalog, table_name)  # a typo names the table, not its tombstones
    graves_name = table_name + TOMBSTONE_SUFFIX
    started = time.perf_counter()
    result = PruneResult(table=table_name, tombstones_table=graves_name, dry_run=dry_run)
    graves = load_table(catalog, table_identifier(graves_name))
    if graves is None or TOMBSTONED_AT not in graves.schema().column_names:
        result.seconds = time.perf_counter() - started
        return result
    written: list[tuple[Table, list[Any]]] = []  # the file of the attempt in flight

    def attempt(table: Table) -> PruneResult:
        clock = time.time() if now is None else now
        cutoff = pa.scalar(int((clock - age) * 1_000_000), pa.timestamp("us", tz="UTC"))
        stamp = pa.scalar(int(clock * 1_000_000), pa.timestamp("us", tz="UTC"))
        res = PruneResult(table=table_name, tombstones_table=graves_name, dry_run=dry_run)
        removed, kept = _plan(table, cutoff, stamp, res)
        if dry_run or not removed:
            return res
        written[:] = [(table, [])]
        if kept:
            from icefield.iceberg.datafiles import write_data_files
            from icefield.iceberg.schema import conform_to_table

            keys = [f.name for f in table.schema().fields if f.name != TOMBSTONED_AT]
            written[0][1].extend(write_data_files(table, conform_to_table(table, pa.concat_tables(kept)), sort_by=keys, split=False))
        _commit(table, removed, written[0][1], res)
        return res

    def forget() -> None:
        # Nothing landed: the file written for it is no one's.
        for table, files in written:
            delete_paths(table, [f.file_path for f in files])
        written.clear()

    done = commit(
        f"tombstone prune of {graves_name}",
        lambda: load_existing(catalog, graves_name),
        attempt,
        retry=Retry(ATTEMPTS, delay=0.1),
        table=graves,
        on_conflict=forget,
        advice="run it again",
    )
    done.seconds = time.perf_counter() - started
    if done.snapshot_id is not None:
        log.info(
            "pruned %d tombstones of %s older than %s (%d kept, %d stamped), snapshot %s",
            done.tombstones_removed, table_name, older_than, done.tombstones_kept, done.tombstones_stamped, done.snapshot_id,
        )
    return done


def _plan(table: Table, cutoff: pa.Scalar, stamp: pa.Scalar, res: PruneResult) -> tuple[list[Any], list[pa.Table]]:
    """The scan tasks whose files hold a tombstone older than ``cutoff`` or without a stamp, and the
    tombstones of those files to keep (unstamped ones stamped with ``stamp``); counts into ``res``."""
    from pyiceberg.expressions import AlwaysTrue, IsNull, LessThan, Or
    from pyiceberg.io.pyarrow import ArrowScan

    from icefield.iceberg.planning import plan_files

    if table.current_snapshot() is None:
        return [], []
    # The column's bounds skip the files whose every tombstone is younger, unread.
    where = Or(LessThan(TOMBSTONED_AT, cutoff.value), IsNull(TOMBSTONED_AT))  # type: ignore[call-arg,arg-type]
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    removed: list[Any] = []
    kept: list[pa.Table] = []
    for task in plan_files(table, "prune its tombstones", row_filter=where):
        rows = scan.to_table([task])
        at = rows.column(TOMBSTONED_AT)
        old = pc.fill_null(pc.less(at, cutoff), False)
        unstamped = pc.is_null(at)
        if not (pc.any(old).as_py() or pc.any(unstamped).as_py()):
            continue
        removed.append(task)
        keep = rows.filter(pc.invert(old))
        n_unstamped = pc.sum(pc.is_null(keep.column(TOMBSTONED_AT))).as_py() or 0
        keep = keep.set_column(keep.column_names.index(TOMBSTONED_AT), TOMBSTONED_AT, pc.fill_null(keep.column(TOMBSTONED_AT), stamp))
        res.tombstones_removed += rows.num_rows - keep.num_rows
        res.tombstones_kept += keep.num_rows
        res.tombstones_stamped += n_unstamped
        if keep.num_rows:
            kept.append(keep)
    res.files_removed = len(removed)
    return removed, kept


def _commit(table: Table, removed: list[Any], added: list[Any], res: PruneResult) -> None:
    """Remove the files of ``removed`` (with their file-scoped delete files) and add ``added``, in one
    overwrite that fails on a concurrent change to them (see the module doc)."""
    from icefield.iceberg.producers import merge_overwrite

    deletes = {d.file_path: d for t in removed for d in t.delete_files or () if is_file_scoped(d) == t.file.file_path}
    tx = table.transaction()
    with merge_overwrite(tx, {SUMMARY_OPERATION: OPERATION}, None, referenced=set()) as p:
        for f in [*(t.file for t in removed), *deletes.values()]:
            p.delete_data_file(f)
        for f in added:
            p.append_data_file(f)
    committed = commit_transaction(tx)
    snap = committed.current_snapshot()
    res.snapshot_id = snap.snapshot_id if snap else None
    res.files_added = len(added)
