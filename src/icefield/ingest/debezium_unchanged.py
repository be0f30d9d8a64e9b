"""PostgreSQL's unchanged TOAST values in Debezium updates: found, and named per row, for the merge.

With ``REPLICA IDENTITY DEFAULT`` (PostgreSQL's default), an UPDATE that leaves a large out-of-line
(TOASTed) value unchanged does not log that value, and the connector sends a placeholder instead of it:
``__debezium_unavailable_value`` (``unavailable.value.placeholder``) in the column's own type. The forms,
as the connector writes them (``UnchangedToastedPlaceholder``):

- text, varchar, json, jsonb, xml, enum...: the placeholder text;
- bytea: the placeholder's bytes (base64 text in JSON, kept as text without the embedded schema);
- text[], varchar[], json[], jsonb[]: a list of the placeholder text alone;
- integer[], bigint[], date[]: a list of the placeholder's byte values (95, 95, 100, ...);
- without the embedded schema, arrays are typed as JSON text: the text of those lists.

The placeholder means "unchanged", so it is only looked for in updates (``op = u``) and in inserts
(``op = c``: an UPDATE of the primary key comes as a delete of the old key and an insert of the new one,
which has the placeholders); snapshot reads and deletes carry whole values. :func:`mark_unchanged` keeps
the values as they came (the placeholder is a value of the column's type, so row checks and type
conformance pass over it) and adds the column :data:`UNCHANGED`: for each row, the names of its columns
that hold the placeholder (null for a row with none). The writer then takes those columns from the
row's previous version (:mod:`icefield.write.unchanged`); an insert that has none keeps its values (it
was a real insert of that text). A batch without any placeholder gets no such column.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc

UNAVAILABLE_VALUE = "__debezium_unavailable_value"
"""The connector's default ``unavailable.value.placeholder``."""
UNCHANGED = "__unchanged"

_CHANGES = pa.array(["u", "c"], pa.string())


class _Forms:
    """The forms a placeholder takes: as text, the placeholder itself and what a column typed as text
    from values alone (no embedded schema) holds for bytea (base64) and arrays (their JSON text, as
    icefield.ingest.coerce writes it); its bytes; its bytes as numbers."""

    def __init__(self, placeholder: str) -> None:
        self.text = placeholder
        self.bytes = placeholder.encode()
        self.numbers = list(self.bytes)
        forms = [placeholder, base64.b64encode(self.bytes).decode(), json.dumps([placeholder]), json.dumps(self.numbers)]
        self.texts = pa.array(forms, pa.string())


_DEFAULT_FORMS = _Forms(UNAVAILABLE_VALUE)


def mark_unchanged(rows: pa.Table, op_column: str, skip: Collection[str] = (), placeholder: str = UNAVAILABLE_VALUE) -> pa.Table:
    """``rows`` with the column :data:`UNCHANGED` naming, for each update or insert, its columns (but
    ``skip``) that hold the unchanged-TOAST ``placeholder`` (the connector's
    ``unavailable.value.placeholder``); ``rows`` itself when none holds one."""
    forms = _DEFAULT_FORMS if placeholder == UNAVAILABLE_VALUE else _Forms(placeholder)
    if not rows.num_rows or op_column not in rows.column_names:
        return rows
    updates = pc.is_in(rows.column(op_column), value_set=_CHANGES)
    if not pc.any(updates).as_py():
        return rows
    marked: list[tuple[str, pa.Array]] = []
    for name in rows.column_names:
        if name in skip or name == op_column:
            continue
        found = _placeholders(rows.column(name).combine_chunks(), forms)
        if found is None:
            continue
        found = pc.and_(pc.fill_null(found, False), updates)
        if pc.any(found).as_py():
            marked.append((name, found))
    if not marked:
        return rows
    names: list[list[str] | None] = [None] * rows.num_rows
    for name, found in marked:
        for i in pc.indices_nonzero(found).to_pylist():
            held = names[i]
            if held is None:
                names[i] = [name]
            else:
                held.append(name)
    return rows.append_column(UNCHANGED, pa.array(names, pa.list_(pa.string())))


def _placeholders(col: pa.Array, forms: _Forms) -> pa.Array | None:
    """True where ``col`` holds the placeholder in the form the connector gives its type; None for a
    type that never holds one."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.is_in(col, value_set=forms.texts.cast(t))
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.equal(col, pa.scalar(forms.bytes, t))
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return None
    item = t.value_type
    text = pa.types.is_string(item) or pa.types.is_large_string(item)
    numbers = pa.types.is_integer(item) or pa.types.is_date32(item)
    if not (text or numbers):
        return None
    lengths = pc.list_value_length(col)
    candidates = pc.fill_null(pc.equal(lengths, 1 if text else len(forms.numbers)), False)
    if not pc.any(candidates).as_py():
        return candidates
    if text:  # a list of one element: that element is the placeholder
        firsts = pc.list_element(pc.if_else(candidates, col, pa.scalar([forms.text], t)), 0)
        return pc.and_(candidates, pc.is_in(firsts, value_set=forms.texts.slice(0, 1).cast(item)))
    out = [False] * len(col)
    where = pc.indices_nonzero(candidates)
    values = col.take(where)
    if pa.types.is_date32(item):
        values = values.cast(pa.list_(pa.int32()))
    for i, v in zip(where.to_pylist(), values.to_pylist(), strict=True):
        out[i] = v == forms.numbers
    return pa.array(out, pa.bool_())


__all__ = ["UNAVAILABLE_VALUE", "UNCHANGED", "mark_unchanged"]
