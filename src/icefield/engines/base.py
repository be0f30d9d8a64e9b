"""The engine contract: what the pipeline asks of an engine, and what an engine declares it can do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig


@dataclass(frozen=True)
class EngineCapabilities:
    supports_merge: bool = False
    supports_sql: bool = False
    distributed: bool = False


WriteFiles = Callable[..., list[Any]]
"""``write_files(table, data, rows=None, segments=None)``: writes ``data`` (or the rows ``rows`` of it, an
index array, each of the ``segments`` of ``rows`` in files of its own) as data files of ``table``, sorted
by the target's keys within each partition or segment (callers need not sort); returns the uncommitted
DataFiles."""


@dataclass
class MergePlan:
    """The outcome of a merge, ready to commit: data files to remove, data files written (uncommitted),
    the conflict filter for the commit, and counts. A merge-on-read merge also adds position delete
    files (``add_deletes``), may replace older ones (``remove_deletes``), and names the data files its
    deletes refer to (``referenced``), which must still be in the table when it commits."""

    remove: list[Any] = field(default_factory=list)
    add: list[Any] = field(default_factory=list)
    add_deletes: list[Any] = field(default_factory=list)
    remove_deletes: list[Any] = field(default_factory=list)
    referenced: list[Any] = field(default_factory=list)
    conflict_filter: Any = None
    rows_written: int = 0
    rows_deleted: int = 0
    rows_updated: int = 0
    rows_inserted: int = 0
    rows_stale: int = 0
    files_scanned: int = 0
    files_read: int = 0
    tombstones: pa.Table | None = None


class Engine:
    """Base class of engines."""

    name: ClassVar[str] = "base"
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities()

    def merge(
        self, table: Table, data: pa.Table, target: TargetConfig, write_files: WriteFiles, tombstones: Table | None = None,
        on_tombstones: Callable[[pa.Table], None] | None = None,
    ) -> MergePlan:
        """Merge ``data`` (already typed as the table) into ``table`` by ``target.keys``: write the new
        data files with ``write_files`` and return what the commit must remove and add. With
        ``target.keep_newest``, only strictly newer versions replace stored rows, and ``tombstones``
        (deleted keys with their version) stop older versions from resurrecting deleted keys; the
        batch's own deletes (the plan's ``tombstones``) are handed to ``on_tombstones`` as soon as they
        are known, so that the caller records them while the data files are written."""
        raise NotImplementedError
