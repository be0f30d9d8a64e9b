"""Write-audit-publish for one pipeline run (``docs/architecture.md``, "The write path", rule 6).

Semantics (what a user can rely on):

- Gates run on the snapshot each batch just wrote. Results go to ``icefield.quality_results`` and to the
  run result, whatever their outcome.
- With at least one ``error`` gate, each batch is committed on the audit branch ``icefield-audit-<pipeline>``
  cut from ``main``'s head; its source position rides in that snapshot's summary. When every error gate
  passes, ``main`` is fast-forwarded to the branch head and the position is set in the same atomic swap:
  readers of ``main`` see the batch only then, whole. When one fails (or cannot be evaluated), ``main``
  and its position stay as they were, the branch keeps the batch for inspection and the run stops with
  :class:`GateFailedError` (CLI exit code 1).
- A held branch blocks its pipeline: the next run first re-checks the held snapshot with the gates as
  configured then (a fixed rule, or a referenced table loaded since) and publishes it if they pass, then
  goes on; if they still fail it stops again without reading the source. ``icefield publish`` publishes the
  held batch as it is; ``icefield discard`` drops it, and the next run re-reads it from ``main``'s
  position and writes it again (batch ids are looked up in ``main``'s history only).
- If another writer commits to ``main`` between the cut and the publish, the publish fails its
  compare-and-swap; the run then cuts the branch again from the new ``main``, rewrites the batch (it is
  still in memory), re-runs the gates and publishes: nothing another writer committed is lost. A held
  batch whose ``main`` moved cannot be published by hand; discard it and rerun.
- With only ``warn`` gates, batches are committed on ``main`` directly and the gates only report.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from icefield import failpoints
from icefield.config.gates import blocking
from icefield.config.models import TargetConfig
from icefield.errors import BranchMovedError, GateFailedError, PublishConflictError
from icefield.iceberg.commits import Retry, commit
from icefield.iceberg.history import SUMMARY_BATCH_ID, head_id, is_held
from icefield.observe.events import BatchHeld, BatchPublished, EventStream, GateEvaluated
from icefield.quality.gates import GateContext, run_gates
from icefield.quality.results import QUALITY_RESULTS_TABLE, CheckResult, evaluation_key, results_table
from icefield.write import TableWriter, WriteResult, batch_id_for
from icefield.write.branches import audit_branch, cut_branch, publish

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from icefield.config import PipelineConfig, Project
    from icefield.engines import Engine
    from icefield.engines.base import Frame

log = logging.getLogger(__name__)

REBASE_ATTEMPTS = 5


class Auditor:
    """Runs a pipeline's gates and, when it has error gates, writes through its audit branch."""

    def __init__(
        self,
        project: Project,
        catalog: Catalog,
        engine: Engine,
        pipe: PipelineConfig,
        run_id: str,
        events: EventStream | None = None,
    ) -> None:
        self.project = project
        self.catalog = catalog
        self.engine = engine
        self.pipe = pipe
        self.run_id = run_id
        self.gates = list(pipe.gates)
        self.branch = audit_branch(pipe.name)
        self.wap = blocking(self.gates)
        self.checks: list[CheckResult] = []
        self.events = events if events is not None else EventStream(run_id, pipe.name)

    # ---------------------------------------------------------------------------------------- gates

    def evaluate(self, table: Table, snapshot_id: int | None, previous_id: int | None, branch: str) -> list[CheckResult]:
        """Run the gates on ``table`` at ``snapshot_id``, store and keep the results. Returns them."""
        ctx = GateContext(
            catalog=self.catalog,
            table=table,
            table_name=self.pipe.target.table,
            snapshot_id=snapshot_id,
            previous_id=previous_id,
            branch=branch,
            pipeline=self.pipe.name,
            run_id=self.run_id,
            root=self.project.root,
        )
        results = run_gates(self.gates, ctx)
        store_results(self.catalog, self.engine, results)
        self.checks.extend(results)
        for r in results:
            self.events.emit(
                GateEvaluated,
                table=r.table,
                gate=r.check,
                status=r.status,
                blocking=r.blocking,
                snapshot_id=r.snapshot_id,
                branch=r.branch,
                message=r.message,
                severity=r.severity,
            )
        return results

    def _held(
        self,
        results: list[CheckResult],
        snapshot_id: int | None,
        main: int | None,
        rerun: bool,
        batch_id: str | None = None,
    ) -> GateFailedError:
        failing = [r for r in results if r.blocking]
        table = self.pipe.target.table
        self.events.emit(
            BatchHeld,
            table=table,
            batch_id=batch_id,
            snapshot_id=snapshot_id,
            branch=self.branch,
            gates=tuple(r.check for r in failing),
        )
        lines = "\n".join(
            f"  - {r.check} ({r.status}): {r.message} (threshold {r.threshold})" for r in failing
        )
        when = "still fail on the held batch" if rerun else "failed"
        return GateFailedError(
            f"{len(failing)} error gate(s) {when} on snapshot {snapshot_id} of {table} (branch {self.branch}); "
            f"main is untouched at snapshot {main} and this pipeline is held:\n{lines}\n"
            f"Fix the rule or what it depends on and rerun (the held batch is checked again and published if it "
            f"passes), or `icefield publish {table} --branch {self.branch}` to publish it as is, or "
            f"`icefield discard {table} --branch {self.branch}` to drop it and read it again from the source",
            checks=failing,
        )

    # ---------------------------------------------------------------------------------------- held branch

    def resolve_held(self, table: Table | None) -> Table | None:
        """Before reading the source: if this pipeline's branch holds a batch, check it again and publish
        it when its error gates pass. Returns the (refreshed) table. Raises :class:`GateFailedError` when
        they still fail and :class:`PublishConflictError` when ``main`` moved under it."""
        if table is None or not is_held(table, self.branch):
            return table
        head = head_id(table, self.branch)
        main = head_id(table)
        log.info(
            "pipeline %s: branch %s holds snapshot %s; checking it again", self.pipe.name, self.branch, head
        )
        snap = table.snapshot_by_id(head) if head is not None else None
        batch_id = (
            snap.summary.additional_properties.get(SUMMARY_BATCH_ID)
            if snap is not None and snap.summary is not None
            else None
        )
        results = self.evaluate(table, head, main, self.branch)
        if any(r.blocking for r in results):
            raise self._held(results, head, main, rerun=True, batch_id=batch_id)
        publish(table, self.branch)
        self.events.emit(
            BatchPublished,
            table=self.pipe.target.table,
            batch_id=batch_id,
            snapshot_id=head,
            branch=self.branch,
        )
        return table.refresh()

    # ---------------------------------------------------------------------------------------- one batch

    def commit(
        self,
        writer: TableWriter,
        data: pa.Table,
        batch_id: str,
        position: dict[str, Any] | None,
        replace_file: tuple[str, str] | None,
        table: Table,
        truncate_at: list[Any] | None = None,
        frame: Frame | None = None,
        window: tuple[str, datetime, datetime] | None = None,
    ) -> WriteResult:
        """Commit one batch: straight to ``main`` (then report the gates) without error gates; else through
        the audit branch, published only when the error gates pass. Raises :class:`GateFailedError` when a
        batch is held. ``frame``: more rows of the batch, held by the engine; ``window``: the date window the batch
        replaces (see :meth:`TableWriter.commit`)."""
        if not self.wap:
            wr = writer.commit(
                data, batch_id, position, self.run_id, replace_file=replace_file, table=table, truncate_at=truncate_at, frame=frame, window=window
            )
            if self.gates and wr.snapshot_id is not None and not wr.skipped:
                committed = writer.load()
                assert committed is not None
                snap = committed.snapshot_by_id(wr.snapshot_id)
                self.evaluate(committed, wr.snapshot_id, snap.parent_snapshot_id if snap else None, "main")
            return wr
        from pyiceberg.table import StagedTable

        if isinstance(table, StagedTable):  # just created: a staged table cannot be refreshed
            table = _reload(writer)
        rebase = [False]  # a rebase moves the branch off our own audited, unpublished batch: allowed

        def attempt(table: Table) -> WriteResult:
            table = cut_branch(table, self.branch, force=rebase[0])
            rebase[0] = True
            main = head_id(table)
            # A BranchMovedError (main moved since the cut) or a PublishConflictError (main moved during the
            # audit) replans: the branch is cut again from the new main and the batch, still in memory,
            # written, audited and published again.
            wr = writer.commit(
                data, batch_id, position, self.run_id, replace_file=replace_file, table=table, branch=self.branch, truncate_at=truncate_at,
                frame=frame, window=window,
            )
            if wr.skipped or wr.snapshot_id is None:
                return wr  # already published, or nothing but a position to move (set on main directly)
            audited = _reload(writer)
            results = self.evaluate(audited, wr.snapshot_id, main, self.branch)
            if any(r.blocking for r in results):
                raise self._held(results, wr.snapshot_id, main, rerun=False, batch_id=batch_id)
            failpoints.hit("before-publish")
            publish(audited, self.branch)
            self.events.emit(
                BatchPublished,
                table=self.pipe.target.table,
                batch_id=batch_id,
                snapshot_id=wr.snapshot_id,
                branch=self.branch,
            )
            return wr

        return commit(
            f"the audit of batch {batch_id} of {self.pipe.target.table}",
            lambda: _reload(writer),
            attempt,
            table=table,
            retry=Retry(REBASE_ATTEMPTS),
            replan=(BranchMovedError, PublishConflictError),
            advice="rerun when fewer writers commit to the table",
        )


def store_results(catalog: Catalog, engine: Engine, results: list[CheckResult]) -> None:
    """Append ``results`` (one evaluation of one pipeline's gates) to ``icefield.quality_results`` in one
    commit, through the writer as any batch; its batch id derives from the evaluation
    (:func:`~icefield.quality.results.evaluation_key`), so a retry of the same evaluation is not stored twice."""
    if not results:
        return
    first = results[0]
    target = TargetConfig(table=QUALITY_RESULTS_TABLE, mode="append")
    writer = TableWriter(catalog, target, first.pipeline, engine)
    writer.commit(results_table(results), batch_id_for("quality", evaluation_key(results)), None, first.run_id)


def _reload(writer: TableWriter) -> Table:
    table = writer.load()
    assert table is not None
    return table
