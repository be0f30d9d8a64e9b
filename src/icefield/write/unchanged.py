"""Values a change did not carry: PostgreSQL's unchanged TOAST values, taken from the row's previous version.

A batch of a ``debezium`` source names, in the column ``_cdc_unchanged``, the columns of each update
whose value the connector replaced by its placeholder (:mod:`icefield.ingest.debezium_unchanged`): the
value did not change. Before a merge, :func:`fill_unchanged` puts back the value the row had just
before the change, taken from, in turn:

- the previous version of the same key in the batch (an insert and its update in one batch);
- for a change of the primary key, which the connector sends as a delete of the old key and an insert
  of the new one at the same position (``[commit LSN, LSN]``): the old key's previous version, in the
  batch or in the table;
- the row the table holds for the key.

A value found nowhere (the row never reached the table, or its key changed in an earlier batch) is
stored as NULL, and a warning names the table, the columns and how many rows. The column
``_cdc_unchanged`` itself is dropped here and never reaches the table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.config.models import CDC_OP, CDC_UNCHANGED

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from icefield.config.models import TargetConfig

log = logging.getLogger(__name__)

IN_LIST_LIMIT = 5_000

__all__ = ["fill_unchanged"]


def fill_unchanged(table: Table, data: pa.Table, target: TargetConfig, stored: bool = True) -> pa.Table:
    """``data`` with the values its column ``_cdc_unchanged`` names taken from each row's previous
    version (see the module doc), and without that column. ``table`` holds the stored rows, read only
    with ``stored`` (not after a truncate in the batch); ``target`` gives the keys, the version columns
    and the delete flag column."""
    if CDC_UNCHANGED not in data.column_names:
        return data
    keys, order, delete_column = list(target.keys), target.order_columns, target.delete_column
    marks = data.column(CDC_UNCHANGED)
    data = data.drop([CDC_UNCHANGED])
    if marks.null_count == len(marks) or not keys or not all(k in data.column_names for k in keys):
        return data
    marked = {i: {c for c in names if c in data.column_names} for i, names in enumerate(marks.to_pylist()) if names}
    sources = _sources(data, marked, keys, order, delete_column)
    columns = sorted(set().union(*marked.values()))
    resolved: dict[tuple[int, str], tuple[str, Any]] = {}
    for i, names in marked.items():
        for c in names:
            s = sources[i]
            while s[0] == "row" and c in marked.get(s[1], ()):
                s = sources[s[1]]  # that version did not carry it either: look further back
            resolved[(i, c)] = s
    source = table if stored else None
    moved = _moved_keys(source, {ref for kind, ref in resolved.values() if kind == "moved"}, keys, order)
    by_key = {ref for kind, ref in resolved.values() if kind == "stored"}
    now, now_at = _stored_rows(source, by_key, keys, columns)
    then, then_at = _rows_before_deletion(source, set(moved.values()), keys, columns)
    n = data.num_rows
    missing: dict[str, int] = {}
    for c in columns:
        index: list[int | None] = list(range(n))
        for (i, col), (kind, ref) in resolved.items():
            if col != c:
                continue
            if kind == "row":
                index[i] = ref
            elif kind == "stored" and ref in now_at:
                index[i] = n + now_at[ref]
            elif kind == "moved" and ref in moved and moved[ref] in then_at:
                index[i] = n + _height(now) + then_at[moved[ref]]
            elif kind == "moved" and ref not in moved:
                pass  # an insert of its own, not the new key of a change: its text is its value
            else:
                index[i] = None
                missing[c] = missing.get(c, 0) + 1
        current = data.column(c).combine_chunks()
        parts = [current, *(t.column(c).combine_chunks().cast(current.type) for t in (now, then) if t is not None)]
        filled = pa.concat_arrays(parts).take(pa.array(index, pa.int64()))
        data = data.set_column(data.schema.get_field_index(c), data.schema.field(c), filled)
    if missing:
        log.warning(
            "%s: %s held PostgreSQL's unchanged-TOAST placeholder and no earlier version of the row was found "
            "(the row never reached the table); stored as NULL. Give the PostgreSQL table REPLICA IDENTITY FULL "
            "to have every value sent",
            target.table, ", ".join(f"{count} value(s) of column {c!r}" for c, count in sorted(missing.items())),
        )
    return data


def _sources(data: pa.Table, marked: dict[int, set[str]], keys: list[str], order: list[str], delete_column: str | None) -> dict[int, tuple[str, Any]]:
    """For each marked row, where its row was just before the change: ``("row", position)`` of an earlier
    version in ``data``; ``("stored", key)``, the key of the stored row (an update); ``("moved",
    version)``, an insert with no earlier version in the batch, which is the new key of a key change at
    that version when an earlier batch deleted the old key there."""
    n = data.num_rows
    key_of = list(zip(*(data.column(k).to_pylist() for k in keys), strict=True))
    version = list(zip(*(data.column(c).to_pylist() for c in order), strict=True)) if order else [()] * n
    ops = data.column(CDC_OP).to_pylist() if CDC_OP in data.column_names else ["u"] * n
    if delete_column and delete_column in data.column_names:
        deleted = pc.fill_null(data.column(delete_column).cast(pa.bool_()), False).to_pylist()
    else:
        deleted = [False] * n
    # In version order (NULL oldest, as a merge compares them), ties in batch order: a key change's delete
    # comes before its insert.
    sequence = sorted(range(n), key=lambda i: (tuple((v is not None, v) for v in version[i]), i))
    live: dict[Any, int] = {}  # key -> its newest version so far
    gone: dict[Any, tuple[Any, int | None]] = {}  # version of a delete -> (its key, that key's version before it)
    sources: dict[int, tuple[str, Any]] = {}
    for i in sequence:
        k = key_of[i]
        if deleted[i]:
            gone[version[i]] = (k, live.pop(k, None))
            continue
        if i in marked:
            if k in live:
                sources[i] = ("row", live[k])
            elif order and version[i] in gone and gone[version[i]][0] != k:
                old_key, before = gone[version[i]]
                sources[i] = ("row", before) if before is not None else ("stored", old_key)
            elif ops[i] == "c" and order:
                sources[i] = ("moved", version[i])
            else:
                sources[i] = ("stored", k)
        live[k] = i
    return sources


def _height(t: pa.Table | None) -> int:
    return 0 if t is None else t.num_rows


def _key_filter(keys: list[str], wanted: set[Any]) -> Any:
    """A pyiceberg filter that holds for the rows whose first key is one of ``wanted``'s (a superset)."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThanOrEqual

    firsts = {k[0] for k in wanted if k[0] is not None}
    if not firsts:
        return AlwaysTrue()
    if len(firsts) <= IN_LIST_LIMIT:
        return In(keys[0], firsts)  # type: ignore[call-arg,arg-type]
    return And(GreaterThanOrEqual(keys[0], min(firsts)), LessThanOrEqual(keys[0], max(firsts)))  # type: ignore[call-arg,arg-type]


def _stored_rows(table: Table | None, wanted: set[Any], keys: list[str], columns: list[str], snapshot_id: int | None = None) -> tuple[pa.Table | None, dict[Any, int]]:
    """The rows ``table`` holds (at ``snapshot_id``, default its current one) for the ``wanted`` keys
    (``keys`` and ``columns``), and where each key's row is."""
    if table is None or not wanted or table.current_snapshot() is None:
        return None, {}
    names = set(table.schema().column_names)
    if not all(c in names for c in [*keys, *columns]):
        return None, {}
    fields = tuple(dict.fromkeys([*keys, *columns]))
    try:
        rows = table.scan(row_filter=_key_filter(keys, wanted), selected_fields=fields, snapshot_id=snapshot_id).to_arrow()
    except (TypeError, ValueError):  # a key value pyiceberg cannot bind to the column's type: read all
        rows = table.scan(selected_fields=fields, snapshot_id=snapshot_id).to_arrow()
    where: dict[Any, int] = {}
    for j, k in enumerate(zip(*(rows.column(c).to_pylist() for c in keys), strict=True)):
        if k in wanted:
            where[k] = j
    return rows, where


def _moved_keys(table: Table | None, versions: set[Any], keys: list[str], order: list[str]) -> dict[Any, Any]:
    """For the versions of inserts that have no earlier version in the batch: the key an earlier batch
    deleted at that same version (a change of the key whose delete came in that batch), from the
    table's tombstones."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import And, EqualTo

    from icefield.config.ownership import TOMBSTONE_SUFFIX

    if table is None or not versions or not order:
        return {}
    try:
        graves = table.catalog.load_table((*table.name()[:-1], table.name()[-1] + TOMBSTONE_SUFFIX))
    except NoSuchTableError:
        return {}
    if graves.current_snapshot() is None:
        return {}
    out: dict[Any, Any] = {}
    for v in versions:
        if None in v:
            continue
        expr: Any = EqualTo(order[0], v[0])  # type: ignore[call-arg,arg-type]
        for c, x in zip(order[1:], v[1:], strict=True):
            expr = And(expr, EqualTo(c, x))  # type: ignore[call-arg,arg-type]
        found = graves.scan(row_filter=expr, selected_fields=tuple(keys)).to_arrow()
        if found.num_rows:
            out[v] = tuple(found.column(k)[0].as_py() for k in keys)
    return out


# How many snapshots back a deleted row is looked for (the delete of a key change is in the batch before).
HISTORY_LIMIT = 20


def _rows_before_deletion(table: Table | None, wanted: set[Any], keys: list[str], columns: list[str]) -> tuple[pa.Table | None, dict[Any, int]]:
    """The last stored version of each of the ``wanted`` keys, which the table no longer holds: found in
    the snapshots before the current one (at most :data:`HISTORY_LIMIT`)."""
    from icefield.iceberg.history import ancestors, head_id

    if table is None or not wanted:
        return None, {}
    parts: list[pa.Table] = []
    where: dict[Any, int] = {}
    left = set(wanted)
    offset = 0
    for k, snap in enumerate(ancestors(table.metadata, head_id(table))):
        if k > HISTORY_LIMIT or not left:
            break
        rows, at = _stored_rows(table, left, keys, columns, snapshot_id=snap.snapshot_id)
        if rows is None or not at:
            continue
        parts.append(rows)
        for key, j in at.items():
            where[key] = offset + j
        left -= at.keys()
        offset += rows.num_rows
    return (pa.concat_tables(parts) if parts else None), where
