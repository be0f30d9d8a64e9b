"""Typed results of a run. Observability turns these into metrics, logs and lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from icefield.quality.results import CheckResult

__all__ = ["BatchResult", "CheckResult", "PendingBatch", "RunResult"]

@dataclass
class BatchResult:
    """One batch: what came in, where each row went, and the commit that holds it."""

    batch_id: str
    rows_in: int
    rows_committed: int
    rows_quarantined: int
    rows_filtered: int
    rows_deleted: int = 0
    snapshot_id: int | None = None
    skipped: bool = False
    seconds: float = 0.0
    replaced_file: str | None = None
    failures_by_check: dict[str, int] = field(default_factory=dict)


@dataclass
class PendingBatch:
    """The batch a failed run was writing: nothing of it is committed and the position is not advanced,
    so the next run reads and writes it again (exactly once: its batch id is deterministic).
    ``source_range`` is the source's description of the rows (the batch id derives from it)."""

    batch_id: str
    source_range: str
    rows_in: int
    error: str
    error_type: str


@dataclass
class RunResult:
    """A pipeline (or model) run. Conservation: ``rows_in == rows_committed + rows_quarantined + rows_filtered``
    (rows of skipped batches count in none of them)."""

    pipeline: str
    table: str
    run_id: str
    # success | failed | held (a gate held a batch on its audit branch) | skipped (not run: a pipeline or model
    # it reads failed or was held in the same run, see icefield.pipeline.plan; ``reason`` says which)
    status: str = "success"
    batches: list[BatchResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    pending: PendingBatch | None = None
    compactions: int = 0  # compactions that ran between batches (target.maintenance)
    reason: str | None = None  # why a skipped run did not run

    @property
    def rows_in(self) -> int:
        return sum(b.rows_in for b in self.batches if not b.skipped)

    @property
    def rows_committed(self) -> int:
        return sum(b.rows_committed for b in self.batches if not b.skipped)

    @property
    def rows_quarantined(self) -> int:
        return sum(b.rows_quarantined for b in self.batches if not b.skipped)

    @property
    def rows_filtered(self) -> int:
        return sum(b.rows_filtered for b in self.batches if not b.skipped)

    @property
    def snapshots(self) -> list[int]:
        return [b.snapshot_id for b in self.batches if b.snapshot_id is not None and not b.skipped]

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.rows_committed + self.rows_quarantined + self.rows_filtered

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            rows_in=self.rows_in,
            rows_committed=self.rows_committed,
            rows_quarantined=self.rows_quarantined,
            rows_filtered=self.rows_filtered,
            snapshots=self.snapshots,
            conserved=self.conserved,
        )
        return d
