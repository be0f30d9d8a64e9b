"""The engine contract: what the pipeline asks of an engine, and what an engine declares it can do.

**The seam.** For each batch the writer (:class:`icefield.write.TableWriter`) asks the engine one thing:
*stage this batch in this table under this mode, as one transaction* (:meth:`Engine.stage`, given a
:class:`WriteRequest`). The engine returns the transaction uncommitted (:class:`StagedWrite`); icefield then
puts the source position into that same transaction (the table property ``icefield.state.<pipeline>``) and
commits it through the one commit path (:mod:`icefield.iceberg.commits`). So the data and the position land
in one atomic metadata swap whatever the engine, and every engine gets the same batch-id check, conflict
replans and unknown-outcome resolution: a conflict calls :meth:`Engine.stage` again on the fresh table.
Everything else about a batch is the writer's and engine-neutral: creating the table, schema contracts and
evolution, the batch id and position checks, CDC preparation (truncates, unchanged values, column defaults)
and the tombstone table.

What an engine can do is data (:class:`EngineCapabilities`), read by the core (``supports_merge`` for merge
targets), never its class or name.

**The local engine** (:class:`icefield.engines.local.LocalEngine`) writes the data files in this process
(DuckDB and Arrow) and stages them with pyiceberg's snapshot producers
(:class:`icefield.engines.files.FileEngine`).

**A distributed engine (Spark)** cannot hand pyiceberg data files back to this process, and it need not:
its :meth:`Engine.stage` writes the batch on a staging branch of the table (``icefield-stage-<pipeline>``,
cut from the ``main`` the request's table is at), with Spark's own writer (``INSERT INTO`` / ``MERGE INTO``
``... .branch_<name>``, the request's ``summary`` as snapshot properties, so the staged snapshot carries the
batch id). It then returns a transaction that fast-forwards ``main`` to that branch head: pyiceberg's
``_set_ref_snapshot`` with the requirement that ``main`` is still where it was, exactly as write-audit-publish
publishes (:func:`icefield.write.branches.publish`). icefield adds the position to that transaction and commits
it: the batch and the position become visible on ``main`` in one commit. A conflict (``main`` moved) fails the
compare-and-swap; the commit path calls ``stage`` again, which cuts the staging branch again from the new
``main`` and reruns the write; a batch whose fast-forward landed is found by its batch id in ``main``'s history.
The staging branch is left for the next batch to move. A request for an audit branch (``request.branch``
is not ``main``: write-audit-publish) is written on that branch directly (its snapshot carries the summary,
the position included) and answered with an empty transaction; the publish moves ``main`` later. See
``docs/architecture.md``, section "Engines".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from icefield.iceberg.history import MAIN

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa
    from pyiceberg.table import Table, Transaction

    from icefield.config import Project
    from icefield.config.models import TargetConfig


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, as data the core reads (never ``if engine == ...``)."""

    supports_merge: bool = False
    """Lands batches of ``merge`` targets (upserts and deletes by key)."""
    supports_sql: bool = False
    """Runs SQL over the tables itself (today every query runs on the query seam, :mod:`icefield.query`)."""
    distributed: bool = False
    """Runs beyond this process (a cluster): worth its start-up only for big batches."""
    dialect: str | None = None
    """The SQL dialect (sqlglot's name) of the conditions :meth:`Engine.split` takes."""
    replaces_windows: bool = False
    """Stages a :attr:`WriteRequest.replace_window`: the rows of a date window removed and the batch added in
    one transaction (a window backfill, :mod:`icefield.config.window`)."""
    reads: frozenset[str] = frozenset()
    """Source types whose rows the engine reads itself, in parallel, keeping them out of this process
    (:class:`Frame`): ``sql`` is a JDBC read split by the cursor range (:meth:`Engine.read_jdbc`), ``kafka`` a read of
    offset ranges (:meth:`Engine.read_kafka`), ``files`` a read of chosen files (:meth:`Engine.read_files`)."""


SUSPECT_COLUMN = "__icefield_suspect"
"""A frame's column that marks rows its reader hands back itself (:meth:`Engine.split` returns them with the
rows a check may refuse): rows the engine could not decode as the table is."""


@dataclass
class Frame:
    """Rows of a batch the engine holds (read by its own readers, never brought into this process):
    ``handle`` is the engine's (Spark: a temporary view of a checkpointed DataFrame), ``rows`` how many.
    ``order`` names the columns that order the rows as the source did (a merge keeps the last of a key).

    The core treats a frame as part of a batch: :meth:`Engine.split` takes out the rows a check or a type
    could refuse (as Arrow, for the same checks and quarantine as every batch), the rest is written with the
    batch (:attr:`WriteRequest.frame`), and :meth:`Engine.release` frees it."""

    handle: Any
    rows: int
    order: tuple[str, ...] = ()


@dataclass
class WriteRequest:
    """What the pipeline asks of an engine for one batch: stage ``data`` in the table under ``target.mode``
    (``append``, ``overwrite`` or ``merge`` by ``target.keys``), as one transaction on ``branch`` whose
    snapshots carry ``summary`` (``icefield.pipeline``, ``icefield.batch-id``, ``icefield.run-id``; on an audit
    branch also the position, ``icefield.position``).

    ``data`` is typed as the table and prepared by the writer (schema evolved, CDC values filled, versions a
    truncate erased dropped); it may hold the target's delete flag column (``target.delete_column``).
    ``replace_file`` (append) is ``(column, value)``: rows whose column holds the value are replaced (a source
    file that changed). ``truncate`` (merge) empties the table in the same transaction first.
    ``tombstones`` (merge with ``target.keep_newest``) is the table of deleted keys and the version that
    deleted them: an older version of such a key is not written. The batch's own deletes are handed to
    ``on_tombstones`` as soon as the engine knows them (the writer records them in the tombstone table
    before the data commit), or returned in :attr:`StagedWrite.tombstones`. ``memo`` is the engine's own,
    kept across the attempts of one batch (e.g. files an attempt wrote that the next can stage again).
    """

    data: pa.Table
    target: TargetConfig
    summary: dict[str, str]
    branch: str = MAIN
    replace_file: tuple[str, str] | None = None
    truncate: bool = False
    tombstones: Table | None = None
    on_tombstones: Callable[[pa.Table], None] | None = None
    memo: dict[str, Any] = field(default_factory=dict)
    frame: Frame | None = None
    """More rows of the batch, held by the engine (:class:`Frame`), already checked: written with ``data``."""
    replace_window: tuple[str, datetime, datetime] | None = None
    """(append) ``(column, start, end)``: the stored rows with ``start <= column < end`` (UTC instants; a date
    column compares with their dates) are removed in the same transaction as ``data`` is added (a window
    backfill). Only engines whose capabilities say ``replaces_windows`` are asked."""


@dataclass
class StagedWrite:
    """An engine's answer to a :class:`WriteRequest`: the batch as one uncommitted ``transaction`` of the
    table (icefield adds the position and commits it), whether it changes data (``changed``: False when it
    holds nothing, and then only the position moves), and counts of what it did."""

    transaction: Transaction
    changed: bool
    rows_written: int = 0
    rows_deleted: int = 0
    rows_updated: int = 0
    rows_inserted: int = 0
    rows_stale: int = 0
    files_added: int = 0
    files_removed: int = 0
    files_scanned: int = 0
    files_read: int = 0
    bytes_read: int = 0
    """Bytes of the data files read (``files_read`` of them)."""
    tombstones: pa.Table | None = None
    """The batch's deletes (keys and version) when they were not handed to ``on_tombstones``."""


class Engine:
    """Base class of engines: :meth:`stage` lands batches. (SQL over the tables, for ``icefield sql``, models
    and gates, runs on the query seam, :mod:`icefield.query`.)"""

    name: ClassVar[str] = "base"
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities()

    @classmethod
    def for_project(cls, project: Project | None) -> Engine:
        """The engine for ``project`` (``None``: no project, e.g. a writer used on its own); engines that need
        settings of the project override this."""
        return cls()

    def stage(self, table: Table, request: WriteRequest) -> StagedWrite:
        """Stage the batch of ``request`` in ``table`` (as loaded for this attempt) as one uncommitted
        transaction (see the module doc). Raises pyiceberg's ``CommitFailedException`` or
        ``ValidationException`` when the table moved under it (the commit path calls it again on the fresh
        table), icefield errors for what no retry can fix."""
        raise NotImplementedError(f"engine {self.name!r} cannot land batches")

    def read_jdbc(self, url: str, select: str, column: str | None, bounds: tuple[str, str] | None, extra: pa.Table | None) -> Frame:
        """Read the rows of ``select`` (SQL of the source database, a SELECT) from the database at ``url``
        (a SQLAlchemy URL) with the engine's own readers, split into ranges of ``column`` between ``bounds``
        (``(lower, upper)`` as text; None: one reader), plus the rows of ``extra`` read here; hold them as one
        :class:`Frame`. Only engines whose :attr:`EngineCapabilities.reads` holds ``sql`` implement it."""
        raise NotImplementedError(f"engine {self.name!r} does not read sources")

    def read_kafka(
        self, options: dict[str, str], ranges: dict[tuple[str, int], tuple[int, int]], decode: Callable[..., Any], schema: pa.Schema
    ) -> Frame:
        """Read the messages of ``ranges`` (``(topic, partition) -> (first offset, end offset)``) from Kafka
        (consumer ``options``, librdkafka's names) with the engine's own readers, decoded where they are read by
        ``decode`` (given Arrow batches of ``topic``, ``partition``, ``offset``, ``value`` and ``schema``, the
        Arrow schema of the frame's rows as the engine holds them: it yields batches of that schema); hold them as
        one :class:`Frame`. Only engines whose :attr:`EngineCapabilities.reads` holds ``kafka`` implement it."""
        raise NotImplementedError(f"engine {self.name!r} does not read sources")

    def read_files(
        self, paths: list[str], decode: Callable[..., Any], schema: pa.Schema, by: str
    ) -> tuple[Frame, dict[Any, int]]:
        """Read the files ``paths`` (``file://`` URIs) whole with the engine's own readers, decoded where they are
        read by ``decode`` (given Arrow batches of ``path``, the file's URI as the engine names it, and ``content``,
        its bytes; it yields batches of ``schema``, the Arrow schema of the frame's rows); hold them as one
        :class:`Frame`, and return with it how many rows each value of the column ``by`` has. Only engines whose
        :attr:`EngineCapabilities.reads` holds ``files`` implement it."""
        raise NotImplementedError(f"engine {self.name!r} does not read sources")

    def take(self, frame: Frame, where: str) -> Frame:
        """The rows of ``frame`` for which ``where`` (a boolean SQL expression of the engine's dialect over the
        frame's columns) is true, as a frame of their own (``frame`` stays as it is)."""
        raise NotImplementedError(f"engine {self.name!r} does not read sources")

    def split(self, frame: Frame, table: Table, suspect: str | None, columns: list[str]) -> tuple[Frame, pa.Table]:
        """Take out of ``frame`` the rows that a row check may refuse (``suspect``: a boolean SQL expression of
        the engine's dialect over the frame's columns, window functions allowed; None: none) or whose value
        does not fit the type of ``table``'s column (a cast that fails), and return them as Arrow, as read;
        the other rows are a new frame typed as ``table`` with ``columns`` (those of the batch, the delete flag
        included), which the batch writes. ``frame`` is released."""
        raise NotImplementedError(f"engine {self.name!r} does not read sources")

    def release(self, frame: Frame) -> None:  # noqa: B027 - engines that hold frames free them here
        """Free what ``frame`` holds (no-op when released already)."""
