"""Snapshot producers icefield needs beyond pyiceberg's own.

``MergeOverwrite`` is pyiceberg's copy-on-write overwrite plus the conflict check Iceberg's Java API
calls ``validateNoConflictingData``: when another writer committed data files that may hold the merged
keys since the merge was planned, the commit fails with ``ValidationException`` instead of silently
keeping both versions of a key. pyiceberg already refuses when a file this commit removes was removed
by someone else. Together they make concurrent merges serializable: the loser replans on the new
snapshot or fails loudly, and no update is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyiceberg.table.update.snapshot import _OverwriteFiles  # pinned pyiceberg==0.12.0
from pyiceberg.table.update.validate import _validate_added_data_files

if TYPE_CHECKING:
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Transaction


class MergeOverwrite(_OverwriteFiles):
    """An overwrite that also fails when concurrently added files match ``conflict_filter``."""

    conflict_filter: BooleanExpression | None = None

    def _validate_concurrency(self) -> None:
        super()._validate_concurrency()
        window = self._commit_window
        if self.conflict_filter is None or window is None or window.is_empty() or window.head is None:
            return
        _validate_added_data_files(self._transaction._table, window.head, self.conflict_filter, window.base)


def merge_overwrite(
    tx: Transaction, snapshot_properties: dict[str, str], conflict_filter: BooleanExpression | None, branch: str = "main"
) -> Any:
    """A :class:`MergeOverwrite` producer on ``tx``'s ``branch`` (default main; use it as a context manager)."""
    from pyiceberg.table.snapshots import Operation

    producer = MergeOverwrite(
        operation=Operation.OVERWRITE if tx.table_metadata.current_snapshot() is not None else Operation.APPEND,
        transaction=tx,
        io=tx._table.io,
        branch=branch,
        snapshot_properties=snapshot_properties,
    )
    producer.conflict_filter = conflict_filter
    return producer
