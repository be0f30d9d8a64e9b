"""Snapshot expiry with file cleanup: the storage side of retention.

Every copy-on-write merge, overwrite and compaction leaves the files it replaced in the table's history,
so that time travel and readers of older snapshots keep working; without expiry a table's storage only
grows (a streaming merge rewrites files every few seconds). ``expire_table`` removes the snapshots older
than ``older_than`` from the table's metadata, as Iceberg's ``expireSnapshots`` does, and then deletes
the files that only those snapshots reached: data and delete files, manifests and manifest lists, and
the statistics (Puffin) and partition-statistics files that only those snapshots' entries name (Trino
and Spark write them; their entries leave the metadata in the same commit).

Always kept: the newest ``retain_last`` snapshots of ``main``; the head of every branch and tag; every
snapshot of an audit branch that ``main`` has not published; every snapshot newer than the cutoff. A file
is deleted only when no kept snapshot lists it as live, checked again against the table after the commit.

icefield's positions live in table properties, so a pipeline resumes where it was after its history is
expired; a batch id older than the kept history is no longer found by ``find_batch``, which is why the
default keeps seven days (no retry waits that long).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icefield.config.ages import DEFAULT_AGE, parse_age
from icefield.errors import ConfigError
from icefield.iceberg.commits import Retry, commit, commit_transaction
from icefield.iceberg.tables import load_existing

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

ATTEMPTS = 4


@dataclass
class ExpireResult:
    """What an expiry did (or, with ``dry_run``, would do)."""

    table: str
    snapshots_expired: int = 0
    snapshots_kept: int = 0
    data_files_deleted: int = 0
    metadata_files_deleted: int = 0
    bytes_deleted: int = 0
    seconds: float = 0.0
    dry_run: bool = False


def expire_table(
    catalog: Catalog,
    table_name: str,
    *,
    older_than: str | int | float = DEFAULT_AGE,
    retain_last: int = 1,
    dry_run: bool = False,
) -> ExpireResult:
    """Expire ``table_name``'s snapshots older than ``older_than`` (see the module doc) and delete the
    files only they reached. Returns what was done."""
    if retain_last < 1:
        raise ConfigError(f"retain_last={retain_last}: keep at least 1 snapshot (the current one)")
    age = parse_age(older_than)
    started = time.perf_counter()
    tried: list[_Expiry] = []  # the plan of the attempt in flight

    def attempt(table: Table) -> _Expiry:
        from pyiceberg.table.update import RemovePartitionStatisticsUpdate
        from pyiceberg.table.update.snapshot import ExpireSnapshots

        cutoff_ms = int((time.time() - age) * 1000)
        expired = expirable(table, cutoff_ms, retain_last)
        result = ExpireResult(table=table_name, dry_run=dry_run)
        result.snapshots_expired = len(expired)
        result.snapshots_kept = len(table.metadata.snapshots) - len(expired)
        planned = {s.snapshot_id for s in table.metadata.snapshots}
        if not expired:
            return _Expiry(result, expired, planned, {})
        doomed = _unreachable(table, expired)
        doomed.update(_statistics_only_of(table, expired))
        if dry_run:
            _count(result, doomed)
            return _Expiry(result, expired, planned, {})
        tried[:] = [_Expiry(result, expired, planned, doomed)]
        tx = table.transaction()
        ExpireSnapshots(transaction=tx).by_ids(sorted(expired)).commit()
        # pyiceberg drops the expired snapshots' statistics entries, not their partition statistics.
        gone_stats = sorted({p.snapshot_id for p in table.metadata.partition_statistics if p.snapshot_id in expired})
        if gone_stats:
            tx._apply(tuple(RemovePartitionStatisticsUpdate.model_validate({"snapshot-id": i}) for i in gone_stats))
        commit_transaction(tx)
        return tried[0]

    def landed(table: Table) -> _Expiry | None:
        # After an unknown outcome: it landed when none of the snapshots it expired is left (their files are
        # then deleted as after any expiry); when it did not, none is.
        left = {s.snapshot_id for s in table.metadata.snapshots}
        return tried[0] if tried and not tried[0].expired & left else None

    expiry = commit(
        f"expiry of {table_name}",
        lambda: load_existing(catalog, table_name),
        attempt,
        retry=Retry(ATTEMPTS, delay=0.1),
        landed=landed,
        advice="run it again",
    )
    result = expiry.result
    if expiry.expired and not dry_run:
        # The commit landed on the metadata we planned from, or on a newer one that only added snapshots:
        # never delete what one of those reaches (the kept ones were accounted for in the plan).
        table = load_existing(catalog, table_name)
        still = _reachable(table, [s for s in table.metadata.snapshots if s.snapshot_id not in expiry.planned])
        still.update(_statistics_paths(table))
        doomed = {p: v for p, v in expiry.doomed.items() if p not in still}
        _count(result, doomed)
        delete_paths(table, list(doomed))
        log.info(
            "expired %d snapshots of %s (kept %d): deleted %d data/delete files and %d metadata files, %d bytes",
            result.snapshots_expired, table_name, result.snapshots_kept, result.data_files_deleted,
            result.metadata_files_deleted, result.bytes_deleted,
        )
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class _Expiry:
    """An attempt's outcome: the result so far, the snapshots it expired, those the table had when it was
    planned, and the files only the expired ones reached (to delete once the commit landed)."""

    result: ExpireResult
    expired: set[int]
    planned: set[int]
    doomed: dict[str, tuple[bool, int]]


def expirable(table: Table, cutoff_ms: int, retain_last: int) -> set[int]:
    """The ids of the snapshots to expire: older than ``cutoff_ms`` and not kept by the rules above."""
    from icefield.iceberg.history import MAIN, ancestors, head_id, unpublished

    md = table.metadata
    keep = {s.snapshot_id for s in ancestors(md, head_id(table))[:retain_last]}
    for name, ref in md.refs.items():
        keep.add(ref.snapshot_id)
        if name != MAIN:
            keep.update(s.snapshot_id for s in unpublished(table, name))
    return {s.snapshot_id for s in md.snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep}


def _unreachable(table: Table, expired: set[int]) -> dict[str, tuple[bool, int]]:
    """The files only the ``expired`` snapshots reach: path -> (is a data or delete file, size)."""
    kept = [s for s in table.metadata.snapshots if s.snapshot_id not in expired]
    gone = [s for s in table.metadata.snapshots if s.snapshot_id in expired]
    reached = _reachable(table, kept)
    out: dict[str, tuple[bool, int]] = {}
    done: set[str] = set()
    for snap in gone:
        if snap.manifest_list not in reached:
            out[snap.manifest_list] = (False, 0)
        for manifest in snap.manifests(table.io):
            if manifest.manifest_path in done:
                continue
            done.add(manifest.manifest_path)
            if manifest.manifest_path not in reached:
                out[manifest.manifest_path] = (False, manifest.manifest_length)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                path = entry.data_file.file_path
                if path not in reached:
                    out[path] = (True, entry.data_file.file_size_in_bytes)
    return out


def _statistics_paths(table: Table) -> set[str]:
    """The statistics (Puffin) and partition-statistics files the table's metadata names."""
    md = table.metadata
    return {s.statistics_path for s in [*md.statistics, *md.partition_statistics]}


def _statistics_only_of(table: Table, expired: set[int]) -> dict[str, tuple[bool, int]]:
    """The statistics and partition-statistics files only the ``expired`` snapshots' entries name (Trino
    and Spark write them; a path another kept snapshot's entry names stays): path -> (False, size)."""
    md = table.metadata
    kept = {s.statistics_path for s in [*md.statistics, *md.partition_statistics] if s.snapshot_id not in expired}
    return {
        s.statistics_path: (False, s.file_size_in_bytes)
        for s in [*md.statistics, *md.partition_statistics]
        if s.snapshot_id in expired and s.statistics_path not in kept
    }


def _reachable(table: Table, snapshots: list[Any]) -> set[str]:
    """Every file ``snapshots`` reach: manifest lists, manifests, and their live data and delete files."""
    seen: set[str] = set()
    done: set[str] = set()
    for snap in snapshots:
        seen.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            seen.add(manifest.manifest_path)
            if manifest.manifest_path in done:
                continue
            done.add(manifest.manifest_path)
            seen.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True))
    return seen


def _count(result: ExpireResult, doomed: dict[str, tuple[bool, int]]) -> None:
    result.data_files_deleted = sum(1 for is_data, _ in doomed.values() if is_data)
    result.metadata_files_deleted = len(doomed) - result.data_files_deleted
    result.bytes_deleted = sum(size for _, size in doomed.values())


def delete_paths(table: Table, paths: list[str]) -> list[str]:
    """Delete ``paths`` through the table's file IO, in parallel; a file that cannot be deleted is logged
    and left (it costs space, not correctness). Returns the paths left."""

    def one(path: str) -> str | None:
        try:
            table.io.delete(path)
        except FileNotFoundError:
            pass  # already gone: the goal holds
        except OSError as e:  # left behind costs space, not correctness
            log.warning("could not delete %s: %s", path, e)
            return path
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [p for p in pool.map(one, paths) if p is not None]
