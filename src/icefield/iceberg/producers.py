"""Snapshot producers icefield needs beyond pyiceberg's own.

``MergeOverwrite`` is pyiceberg's copy-on-write overwrite plus the conflict check Iceberg's Java API
calls ``validateNoConflictingData``: when another writer committed data files that may hold the merged
keys since the merge was planned, the commit fails with ``ValidationException`` instead of silently
keeping both versions of a key. It also fails when a file this commit removes was removed by someone
else, or got a new delete file (another engine's merge-on-read ``DELETE``, ``UPDATE`` or ``MERGE``).
Together they make concurrent merges serializable: the loser replans on the new snapshot or fails
loudly, and no update is lost.

Every check looks at each snapshot committed between the operation's base (the snapshot it planned on)
and the branch's head at commit time, whoever wrote it (:func:`validate_no_new_deletes` says why this
matters for deletes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyiceberg.manifest import (
    INITIAL_SEQUENCE_NUMBER,
    DataFileContent,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestWriterV2,
)
from pyiceberg.table.update.snapshot import _OverwriteFiles  # pinned pyiceberg==0.12.0
from pyiceberg.table.update.validate import _validate_added_data_files, _validate_data_files_exist

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table, Transaction
    from pyiceberg.table.update.snapshot import CommitWindow

EQUALITY_IDS_FIELD_ID = 135  # data_file.equality_ids in Iceberg's manifest schema


def validate_no_new_deletes(table: Table, window: CommitWindow, data_files: Iterable[Any]) -> None:
    """Raise ``ValidationException`` when a delete file committed after ``window.base`` (in any snapshot up
    to ``window.head``, by any writer) applies to one of ``data_files``: a commit that replaces such a
    file with a rewrite of the rows it read at the base would bring the deleted rows back.

    As Iceberg's Java ``MergingSnapshotProducer.validateNoNewDeletesForDataFiles``, the deletes that count
    are those with a sequence number after the *base* snapshot's. pyiceberg 0.12 compares with the head's,
    so a delete followed by any other commit (an insert, another delete) escapes its check. A position
    delete applies to a data file when it may name its path (its bounds) in its partition; an equality
    delete when it is in the file's partition or unpartitioned (global)."""
    from pyiceberg.exceptions import ValidationException
    from pyiceberg.table.update.validate import _added_delete_files

    files = [f for f in data_files if f.content == DataFileContent.DATA]
    if table.format_version < 2 or window.head is None or not files:
        return
    added = _added_delete_files(table, window.head, None, None, window.base)
    if added.is_empty():
        return
    base_seq = (window.base.sequence_number if window.base is not None else None) or INITIAL_SEQUENCE_NUMBER
    specs = table.specs()
    global_deletes = {
        d for d in added.referenced_delete_files()
        if d.content == DataFileContent.EQUALITY_DELETES and (spec := specs.get(d.spec_id)) is not None and spec.is_unpartitioned()
    }
    for f in files:
        found = added.for_data_file(base_seq + 1, f, f.partition) | global_deletes
        if found:
            raise ValidationException(
                f"Cannot commit, found new delete for replaced data file {f.file_path}: "
                f"{', '.join(sorted(d.file_path for d in found))} (committed since snapshot "
                f"{window.base.snapshot_id if window.base is not None else None})"
            )


class MergeOverwrite(_OverwriteFiles):
    """An overwrite that also fails when concurrently added files match ``conflict_filter``."""

    conflict_filter: BooleanExpression | None = None

    def _validate_concurrency(self) -> None:
        """Check this commit against every snapshot since its base (pyiceberg's own check of new deletes
        for the removed files misses some, see :func:`validate_no_new_deletes`, so it is not called)."""
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        self._validate_window(self._transaction._table, window)

    def _validate_window(self, table: Table, window: CommitWindow) -> None:
        """The checks of a merge: no data file added meanwhile that may hold the merged keys (any added data
        file under serializable isolation, the default of the table property pyiceberg reads for these
        commits, ``write.delete.isolation-level``); every data file removed here still in the table, and
        without new deletes."""
        from pyiceberg.expressions import AlwaysFalse
        from pyiceberg.table.snapshots import IsolationLevel

        head = window.head
        assert head is not None  # an empty window is not validated
        serializable = table.metadata.isolation_level(self._isolation_operation) == IsolationLevel.SERIALIZABLE
        if serializable or self.conflict_filter is not None:
            _validate_added_data_files(table, head, None if serializable else self.conflict_filter, window.base)
        if self._predicate != AlwaysFalse():  # rows removed by a filter (icefield names its files instead)
            from pyiceberg.table.update.validate import (
                _validate_deleted_data_files,
                _validate_no_new_delete_files,
            )

            _validate_no_new_delete_files(table, head, self._predicate, None, window.base)
            _validate_deleted_data_files(table, head, self._predicate, window.base)
        removed = {f for f in self._deleted_data_files if f.content == DataFileContent.DATA}
        if removed:
            _validate_data_files_exist(table, head, removed, window.base)
            validate_no_new_deletes(table, window, removed)


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

    def _validate_window(self, table: Table, window: CommitWindow) -> None:
        super()._validate_window(table, window)
        if self.referenced and window.head is not None:
            _validate_data_files_exist(table, window.head, self.referenced, window.base)

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
    removes was removed meanwhile, or got new deletes in any snapshot since the compaction planned
    (Iceberg's ``RewriteFiles`` validation), since either change would be lost."""

    def _validate_window(self, table: Table, window: CommitWindow) -> None:
        removed = {f for f in self._deleted_data_files if f.content == DataFileContent.DATA}
        if window.head is not None:
            _validate_data_files_exist(table, window.head, removed, window.base)
            validate_no_new_deletes(table, window, removed)

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
    """pyiceberg's v2 manifest writer for delete files (content ``deletes``). ``equality_ids`` is written as
    the spec's ``list<int>``: pyiceberg 0.12 writes ``list<long>``, which Java's reader cannot load
    (``ClassCastException``) once a rewritten manifest carries an equality delete file of another engine."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    def _with_partition(self, format_version: Any) -> Any:
        from pyiceberg.schema import Schema
        from pyiceberg.types import IntegerType, ListType, NestedField, StructType

        def fixed(field: Any) -> Any:
            if field.field_id == EQUALITY_IDS_FIELD_ID:
                t = field.field_type
                return NestedField(field.field_id, field.name, ListType(t.element_id, IntegerType(), t.element_required), field.required, field.doc)
            if isinstance(field.field_type, StructType):
                return NestedField(field.field_id, field.name, StructType(*[fixed(f) for f in field.field_type.fields]), field.required, field.doc)
            return field

        schema = super()._with_partition(format_version)
        return Schema(*[fixed(f) for f in schema.fields], schema_id=schema.schema_id)

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}
