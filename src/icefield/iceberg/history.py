"""A table's refs and history, and what icefield's commits leave in them.

Every batch commit carries the snapshot summary entries ``icefield.pipeline``, ``icefield.batch-id`` and
``icefield.run-id``, and sets the table property ``icefield.state.<pipeline>`` to the source position after
the batch, in the same atomic metadata swap as the data (a commit on an audit branch carries the position
in its summary, ``icefield.position``, until it is published). A batch id is found by walking the history of
a ref (:func:`find_batch`): that is how a retry skips a batch that landed, and how an unknown commit outcome
is resolved. See ``docs/architecture.md``, section "The write path".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.table.snapshots import Snapshot

MAIN = "main"
STATE_PREFIX = "icefield.state."
SUMMARY_PIPELINE = "icefield.pipeline"
SUMMARY_BATCH_ID = "icefield.batch-id"
SUMMARY_RUN_ID = "icefield.run-id"
SUMMARY_POSITION = "icefield.position"


def head_id(table: Table, ref: str = MAIN) -> int | None:
    """The snapshot id ``ref`` points at, or None when the ref does not exist."""
    r = table.metadata.refs.get(ref)
    return r.snapshot_id if r is not None else None


def ancestors(metadata: TableMetadata, snapshot_id: int | None) -> list[Snapshot]:
    """``snapshot_id`` and its ancestors, newest first (stops where history was expired)."""
    by_id = {s.snapshot_id: s for s in metadata.snapshots}
    out: list[Snapshot] = []
    current = by_id.get(snapshot_id) if snapshot_id is not None else None
    while current is not None:
        out.append(current)
        current = by_id.get(current.parent_snapshot_id) if current.parent_snapshot_id is not None else None
    return out


def unpublished(table: Table, branch: str) -> list[Snapshot]:
    """The snapshots on ``branch`` that ``main``'s history lacks, oldest first ([] when none)."""
    if branch == MAIN or branch not in table.metadata.refs:
        return []
    published = {s.snapshot_id for s in ancestors(table.metadata, head_id(table))}
    out = []
    for s in ancestors(table.metadata, head_id(table, branch)):
        if s.snapshot_id in published:
            break
        out.append(s)
    return list(reversed(out))


def is_held(table: Table, branch: str) -> bool:
    """True when ``branch`` holds commits that are not on ``main``."""
    return bool(unpublished(table, branch))


def branches(table: Table) -> list[str]:
    """The table's branches other than ``main``."""
    return sorted(name for name, ref in table.metadata.refs.items() if name != MAIN and str(ref.snapshot_ref_type) == "branch")


def held_branches(table: Table) -> list[str]:
    """The branches (other than ``main``) that hold commits ``main`` lacks."""
    return [b for b in branches(table) if is_held(table, b)]


def find_batch(table: Table, batch_id: str, ref: str = MAIN) -> int | None:
    """Return the id of the snapshot that committed ``batch_id`` in the history of ``ref`` (default
    ``main``), or None. Snapshots outside that history (a discarded audit branch, a rolled-back commit)
    do not count: their batch was never published and must be written again."""
    for snap in ancestors(table.metadata, head_id(table, ref)):
        summary = snap.summary
        if summary is not None and summary[SUMMARY_BATCH_ID] == batch_id:
            return snap.snapshot_id
    return None


def read_position(table: Table | None, pipeline: str) -> dict[str, Any] | None:
    """The source position committed by ``pipeline`` into ``table`` (None if it never committed)."""
    if table is None:
        return None
    raw = table.metadata.properties.get(STATE_PREFIX + pipeline)
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


def encode_position(position: Any) -> str:
    """``position`` as the table property and summary entry hold it (canonical JSON: equal positions are
    equal strings)."""
    return json.dumps(position, sort_keys=True, separators=(",", ":"))
