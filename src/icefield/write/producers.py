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

from pyiceberg.manifest import (
    DataFileContent,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestWriterV2,
)
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
    tx: Transaction,
    snapshot_properties: dict[str, str],
    conflict_filter: BooleanExpression | None,
    branch: str = "main",
    referenced: set[Any] | None = None,
) -> Any:
    """A :class:`MergeOverwrite` producer on ``tx``'s ``branch`` (default main; use it as a context
    manager); a :class:`RowDelta` when ``referenced`` is given (the commit adds or removes delete files,
    and its new deletes refer to those data files)."""
    from pyiceberg.table.snapshots import Operation

    producer = (MergeOverwrite if referenced is None else RowDelta)(
        operation=Operation.OVERWRITE if tx.table_metadata.current_snapshot() is not None else Operation.APPEND,
        transaction=tx,
        io=tx._table.io,
        branch=branch,
        snapshot_properties=snapshot_properties,
    )
    producer.conflict_filter = conflict_filter
    if isinstance(producer, RowDelta):
        producer.referenced = referenced or set()
    return producer


class RowDelta(MergeOverwrite):
    """A merge commit that may also add and remove position delete files (merge-on-read).

    pyiceberg 0.12 writes only data manifests: here added and removed delete files go to delete
    manifests (content ``deletes``), and a delete manifest that still lists a removed delete file is
    rewritten without it. The data files the new deletes refer to (``referenced``) must still be in the
    table at commit time, as Iceberg's ``RowDelta.validateDataFilesExist`` checks: a concurrent rewrite of
    one of them (a compaction, a copy-on-write merge) fails this commit, which then replans, instead of
    leaving deletes that point at a file that is gone while its rows live on in another.
    """

    referenced: set[Any]

    def _validate_concurrency(self) -> None:
        from pyiceberg.table.update.validate import _validate_data_files_exist

        super()._validate_concurrency()
        window = self._commit_window
        if not self.referenced or window is None or window.is_empty() or window.head is None:
            return
        _validate_data_files_exist(self._transaction._table, window.head, self.referenced, window.base)

    def _deleted_entries(self) -> list[Any]:
        from pyiceberg.exceptions import ValidationException

        if self._parent_snapshot_id is None:
            entries: list[Any] = []
        else:
            parent = self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id)
            assert parent is not None
            entries = [
                _restamped(entry, ManifestEntryStatus.DELETED, self._snapshot_id)
                for manifest in parent.manifests(self._io)
                if self._may_list_deleted(manifest)
                for entry in manifest.fetch_manifest_entry(self._io, discard_deleted=True)
                if entry.data_file in self._deleted_data_files
            ]
        found = {e.data_file for e in entries}
        if missing := sorted(f.file_path for f in self._deleted_data_files if f not in found):
            raise ValidationException(f"Missing required files to delete: {', '.join(missing)}")
        return entries

    def _may_list_deleted(self, manifest: Any) -> bool:
        """False when ``manifest`` surely lists none of the files this commit removes (by partition)."""
        if not self._deleted_data_files:
            return False
        if not hasattr(self, "_evaluators"):
            from pyiceberg.typedef import KeyDefaultDict

            self._evaluators = KeyDefaultDict(self._build_manifest_evaluator)
        return bool(self._evaluators[manifest.partition_spec_id](manifest))

    def _writer(self, spec: Any, content: Any) -> Any:
        if content == ManifestContent.DELETES:
            return _DeleteManifestWriter(spec, self.schema(), self.new_manifest_output(), self._snapshot_id, self._compression)
        return self.new_manifest_writer(spec)

    def _existing_manifests(self) -> list[Any]:
        out: list[Any] = []
        parent = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch) if self._target_branch else None
        if parent is None:
            return out
        for manifest in parent.manifests(io=self._io):
            if not manifest.has_added_files() and not manifest.has_existing_files():
                continue  # only entries an earlier commit deleted
            if not self._may_list_deleted(manifest):
                out.append(manifest)
                continue
            entries = manifest.fetch_manifest_entry(io=self._io, discard_deleted=True)
            kept = [e for e in entries if e.data_file not in self._deleted_data_files]
            if len(kept) == len(entries):
                out.append(manifest)
                continue
            if not kept:
                continue
            with self._writer(self.spec(manifest.partition_spec_id), manifest.content) as writer:
                for e in kept:
                    writer.add_entry(_restamped(e, ManifestEntryStatus.EXISTING, e.snapshot_id))
            out.append(writer.to_manifest_file())
        return out

    def _manifests(self) -> list[Any]:
        from collections import defaultdict

        self._build_delete_files_partition_predicate()
        deleted = self._deleted_entries()
        groups: dict[tuple[Any, int], list[Any]] = defaultdict(list)
        for f in self._added_data_files:
            entry = ManifestEntry.from_args(
                status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id, sequence_number=None, file_sequence_number=None, data_file=f
            )
            # files pyiceberg just wrote carry no spec id yet: they are written with the current spec
            spec_id = getattr(f, "_spec_id", self._transaction.table_metadata.default_spec_id)
            groups[(f.content != DataFileContent.DATA, spec_id)].append(entry)
        for entry in deleted:
            groups[(entry.data_file.content != DataFileContent.DATA, entry.data_file.spec_id)].append(entry)
        manifests = []
        for (is_delete, spec_id), entries in groups.items():
            content = ManifestContent.DELETES if is_delete else ManifestContent.DATA
            with self._writer(self.spec(spec_id), content) as writer:
                for entry in entries:
                    writer.add_entry(entry)
            manifests.append(writer.to_manifest_file())
        return self._process_manifests(manifests + self._existing_manifests())


class Rewrite(RowDelta):
    """A compaction's commit (operation ``replace``: no row changes): removes data files and their delete
    files and adds the rewritten files. Concurrent appends do not conflict; it fails when a file it
    removes was removed meanwhile, or got new deletes (Iceberg's ``RewriteFiles`` validation), since
    either change would be lost."""

    def _validate_concurrency(self) -> None:
        from pyiceberg.table.update.validate import (
            _validate_data_files_exist,
            _validate_no_new_deletes_for_data_files,
        )

        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        table = self._transaction._table
        removed = set(self._deleted_data_files)
        _validate_data_files_exist(table, window.head, removed, window.base)
        data = {f for f in removed if f.content == DataFileContent.DATA}
        _validate_no_new_deletes_for_data_files(table, window.head, None, data, window.base)

    def _summary(self, snapshot_properties: dict[str, str] | None = None) -> Any:
        from pyiceberg.table.snapshots import Operation, Summary

        # pyiceberg totals the summary only for append, overwrite and delete: count as an overwrite.
        self._operation = Operation.OVERWRITE
        try:
            summary = super()._summary(snapshot_properties or {})
        finally:
            self._operation = Operation.REPLACE
        return Summary(operation=Operation.REPLACE, **summary.additional_properties)


def _restamped(entry: Any, status: Any, snapshot_id: int | None) -> Any:
    """``entry`` (its file and sequence numbers) with a new status, as of ``snapshot_id``."""
    return ManifestEntry.from_args(
        status=status,
        snapshot_id=snapshot_id,
        sequence_number=entry.sequence_number,
        file_sequence_number=entry.file_sequence_number,
        data_file=entry.data_file,
    )


class _DeleteManifestWriter(ManifestWriterV2):
    """pyiceberg's v2 manifest writer for delete files (content ``deletes``)."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}
