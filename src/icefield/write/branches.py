"""Branch refs for write-audit-publish (``docs/architecture.md``, "The write path", rule 6).

A pipeline with error-severity gates writes each batch on its audit branch ``icefield-audit-<pipeline>``,
cut from ``main``'s head. The batch's commit carries its source position in the snapshot summary
(``icefield.position``), not in the table property, so ``main``'s position never runs ahead of ``main``'s
data. Publishing fast-forwards ``main`` to the branch head and copies the positions into the table
properties, in one atomic metadata swap that also asserts ``main`` has not moved: a commit another writer
made on ``main`` meanwhile is never lost; the publish fails instead.

A branch *holds* a batch when its head has commits that are not in ``main``'s history. A held branch blocks
its pipeline until its gates pass on a rerun, or someone runs ``icefield publish`` or ``icefield discard``.
Discarding only drops the ref: ``main`` and its position are as before, so the next run re-reads the batch
from the source, and because batch ids are looked up in ``main``'s history only, it is written again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icefield.errors import ConfigError, PublishConflictError
from icefield.iceberg.commits import Retry, commit, commit_transaction
from icefield.iceberg.history import (
    MAIN,
    STATE_PREFIX,
    SUMMARY_PIPELINE,
    SUMMARY_POSITION,
    ancestors,
    branches,
    encode_position,
    head_id,
    is_held,
    unpublished,
)

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

AUDIT_BRANCH_PREFIX = "icefield-audit-"
REF_RETRY = Retry(8)
"""Attempts of a commit that moves a ref (cut, publish, discard) when other commits to the table win."""


def audit_branch(pipeline: str) -> str:
    """The audit branch of ``pipeline``."""
    return AUDIT_BRANCH_PREFIX + pipeline


def cut_branch(table: Table, branch: str, force: bool = False) -> Table:
    """Point ``branch`` at ``main``'s head so the next commit on it is a child of ``main``. Commits only
    when the ref must move. A table without any snapshot first gets an empty one on ``main`` (Iceberg
    refuses branch commits on a table with no snapshot; readers of the empty table see no difference).
    Refuses to move a branch that holds unpublished commits unless ``force`` (the caller owns them: its own
    batch being rebased). Returns the table as committed."""
    from pyiceberg.table.update.snapshot import ManageSnapshots

    def attempt(t: Table) -> Table:
        if not t.metadata.snapshots:
            tx = t.transaction()
            with tx.update_snapshot().fast_append():
                pass
            t = commit_transaction(tx)
        main = head_id(t)
        if head_id(t, branch) == main:
            return t
        if not force and is_held(t, branch):
            raise ConfigError(
                f"table {_name(t)}: branch {branch!r} holds unpublished commits; `icefield publish` or "
                f"`icefield discard` it first"
            )
        tx = t.transaction()
        ms = ManageSnapshots(transaction=tx)
        if main is None:
            ms.remove_branch(branch)
        else:
            ms.create_branch(main, branch)
        ms.commit()
        return commit_transaction(tx)

    def landed(t: Table) -> Table | None:
        return t if t.metadata.snapshots and head_id(t, branch) == head_id(t) else None

    return commit(f"cutting branch {branch} of {_name(table)}", table.refresh, attempt, table=table, landed=landed, retry=REF_RETRY)


@dataclass(frozen=True)
class Published:
    """What a publish did: ``main`` moved from ``previous`` to ``snapshot_id`` (equal when nothing was held)
    and the positions it copied into the table properties."""

    table: str
    branch: str
    snapshot_id: int | None
    previous: int | None
    snapshots: list[int] = field(default_factory=list)
    positions: dict[str, Any] = field(default_factory=dict)

    @property
    def moved(self) -> bool:
        return self.snapshot_id != self.previous


def publish(table: Table, branch: str) -> Published:
    """Fast-forward ``main`` to ``branch``'s head and set the positions its unpublished commits carry, in
    one commit that asserts ``main`` is where it was read (a commit that lost to another, on a table whose
    ``main`` did not move, is made again). Returns :class:`Published` (``moved`` False when the branch held
    nothing).

    Raises :class:`PublishConflictError` when ``main`` has commits the branch lacks (another writer
    committed after the branch was cut): fast-forwarding would drop them.
    """
    from pyiceberg.table.refs import SnapshotRefType

    if branch not in table.metadata.refs:
        raise ConfigError(f"table {_name(table)} has no branch {branch!r} (branches: {', '.join(branches(table)) or 'none'})")
    name = _name(table)
    tried: list[Published] = []  # what the attempt in flight publishes

    def attempt(t: Table) -> Published:
        main = head_id(t)
        head = head_id(t, branch)
        todo = unpublished(t, branch)
        if not todo or head is None:
            return Published(name, branch, main, main)
        if main is not None and main not in {s.snapshot_id for s in ancestors(t.metadata, head)}:
            raise _not_fast_forward(t, branch, main)
        positions: dict[str, Any] = {}
        for snap in todo:
            summary = snap.summary
            raw = summary[SUMMARY_POSITION] if summary is not None else None
            pipeline = summary[SUMMARY_PIPELINE] if summary is not None else None
            if raw is not None and pipeline is not None:
                positions[pipeline] = json.loads(raw)
        tx = t.transaction()
        if positions:
            tx.set_properties({STATE_PREFIX + p: encode_position(v) for p, v in positions.items()})
        # The requirement that comes with it asserts main still points where we read it: compare-and-swap.
        tx._stage(*tx._set_ref_snapshot(snapshot_id=head, ref_name=MAIN, type=SnapshotRefType.BRANCH))
        tried[:] = [Published(name, branch, head, main, [s.snapshot_id for s in todo], positions)]
        commit_transaction(tx)
        log.info("published %s: main %s -> %s (%d snapshots from %s)", name, main, head, len(todo), branch)
        return tried[0]

    def landed(t: Table) -> Published | None:
        return tried[0] if tried and head_id(t) == tried[0].snapshot_id else None

    return commit(f"publishing branch {branch} of {name}", table.refresh, attempt, table=table, landed=landed, retry=REF_RETRY)


def discard(table: Table, branch: str) -> list[int]:
    """Drop ``branch``'s ref. Returns the ids of the unpublished snapshots it held (no longer reachable;
    snapshot expiry removes them). ``main`` and its positions are untouched."""
    from pyiceberg.table.update.snapshot import ManageSnapshots

    if branch == MAIN:
        raise ConfigError("refusing to discard 'main'; name an audit branch with --branch")
    if branch not in table.metadata.refs:
        raise ConfigError(f"table {_name(table)} has no branch {branch!r} (branches: {', '.join(branches(table)) or 'none'})")
    dropped = [s.snapshot_id for s in unpublished(table, branch)]

    def attempt(t: Table) -> list[int]:
        if branch in t.metadata.refs:
            tx = t.transaction()
            ManageSnapshots(transaction=tx).remove_branch(branch).commit()
            commit_transaction(tx)
        return dropped

    def landed(t: Table) -> list[int] | None:
        return dropped if branch not in t.metadata.refs else None

    commit(f"discarding branch {branch} of {_name(table)}", table.refresh, attempt, table=table, landed=landed, retry=REF_RETRY)
    log.info("discarded branch %s of %s (%d unpublished snapshots)", branch, _name(table), len(dropped))
    return dropped


def _not_fast_forward(table: Table, branch: str, main: int | None) -> PublishConflictError:
    name = _name(table)
    return PublishConflictError(
        f"table {name}: cannot publish branch {branch!r}: main (now snapshot {main}) has commits the branch "
        f"lacks, so a fast-forward would drop them. Run `icefield discard {name} --branch {branch}` and rerun "
        "the pipeline: the batch is read again from the source position on main and written on top of the new main"
    )


def _name(table: Table) -> str:
    return ".".join(table.name())
