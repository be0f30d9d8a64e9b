"""Schema contracts (``docs/architecture.md``, "The write path", rule 5): what a batch's schema asks of the table, and whether the
pipeline's contract allows it.

:func:`classify` compares the table's schema (old) with an incoming batch's schema (new) and returns
one :class:`SchemaChange` per difference the *table* would have to undergo to take the batch. Types are
compared as Iceberg types (Arrow ``int8``/``int16``/``int32`` are all ``int``, ``string`` and
``large_string`` are ``string``, any timestamp unit is ``timestamp``), with Iceberg's v2 promotions:

============================================  ==========  ============================================
batch vs table                                kind        what happens when accepted
============================================  ==========  ============================================
column the table lacks                        additive    added as an optional column
``long`` into ``int``, ``double`` into        widening    the table's column is promoted
``float``, ``decimal(P2,S)`` into
``decimal(P1,S)`` with P2 > P1
a null into a required column                 widening    the table's column becomes optional
column the table has, absent from the batch   breaking    (``evolve``) kept; the batch's rows get nulls
other decimal precision/scale                 breaking    refused ("narrowing": digits would be lost)
any other type difference                     breaking    refused ("type change", e.g. ``long`` to
                                                          ``string``, ``date`` to ``timestamp``, which
                                                          only Iceberg v3 promotes)
============================================  ==========  ============================================

A batch type the table's type holds exactly (``int`` into ``long``, ``float`` into ``double``,
``decimal(8,2)`` into ``decimal(10,2)``, NOT NULL into a nullable column) is no change: the values are
cast up exactly and the table keeps its schema. Neither is a nullable Arrow field whose values hold no
null (sources type every column nullable): a required column (another engine's ``NOT NULL``) stays
required until a batch really brings a null; :func:`null_columns` says which columns do. A merge key or
an identifier field of the table never becomes optional: a null there is refused. A new column of Arrow's ``null`` type (no value at
all) carries no type and is not a change either; it is added once a batch gives it values. A rename
cannot be told from a drop plus an add; the message points it out when the types match.

Contracts: ``evolve`` (the default, today's behaviour) accepts additive and widening changes and
dropped columns (written as nulls; never a merge key, and no key or identifier field becomes optional); ``additive-only`` accepts new columns only;
``freeze`` accepts no change. No contract accepts a type change or a narrowing. :func:`enforce` raises
a :class:`SchemaError` that lists every change (column, old type, new type, classification) and names
the contract that would accept each refused one, or how to fix it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from icefield.errors import SchemaError

if TYPE_CHECKING:
    from pyiceberg.schema import Schema

Contract = Literal["evolve", "additive-only", "freeze"]
CONTRACTS: tuple[Contract, ...] = ("evolve", "additive-only", "freeze")
DEFAULT_CONTRACT: Contract = "evolve"

ADDITIVE = "additive"
WIDENING = "widening"
BREAKING = "breaking"

NEW_COLUMN = "new column"
PROMOTION = "type promotion"
NOW_OPTIONAL = "now optional"
DROPPED = "dropped"
NARROWING = "narrowing"
TYPE_CHANGE = "type change"

_ACCEPTS: dict[str, frozenset[str]] = {
    "evolve": frozenset({NEW_COLUMN, PROMOTION, NOW_OPTIONAL, DROPPED}),
    "additive-only": frozenset({NEW_COLUMN}),
    "freeze": frozenset(),
}


@dataclass(frozen=True)
class SchemaChange:
    """One difference between the table's schema and a batch's.

    ``column`` is the dotted path (``address.zip``; list elements are ``tags.element``, map parts
    ``attrs.key`` / ``attrs.value``). ``old_type`` is the Iceberg type in the table (None for a new
    column), ``new_type`` the batch's (None for a dropped column). ``kind`` is ``additive``,
    ``widening`` or ``breaking``; ``change`` says which: ``new column``, ``type promotion``,
    ``now optional``, ``dropped``, ``narrowing`` or ``type change``.
    """

    column: str
    old_type: str | None
    new_type: str | None
    kind: str
    change: str

    def accepted_by(self) -> tuple[Contract, ...]:
        """The contracts that accept this change (empty for a type change or a narrowing)."""
        return tuple(c for c in CONTRACTS if self.change in _ACCEPTS[c])

    def describe(self) -> str:
        old = self.old_type or "(absent)"
        new = self.new_type or "(absent)"
        return f"column {self.column!r}: {old} -> {new}: {self.kind} ({self.change})"


# ------------------------------------------------------------------ Iceberg view of Arrow types


def iceberg_type_name(t: pa.DataType) -> str:
    """The Iceberg type an Arrow type is stored as (``long``, ``decimal(10,2)``, ``list<string>``...)."""
    if isinstance(t, pa.DictionaryType):
        return iceberg_type_name(t.value_type)
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return "uuid"
        return iceberg_type_name(t.storage_type)
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        signed_small = pa.types.is_signed_integer(t) and t.bit_width <= 32
        return "int" if signed_small or t.bit_width <= 16 else "long"
    if pa.types.is_floating(t):
        return "double" if t.bit_width == 64 else "float"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_fixed_size_binary(t):
        return f"fixed[{t.byte_width}]"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {iceberg_type_name(f.type)}" for f in t) + ">"
    if pa.types.is_map(t):
        return f"map<{iceberg_type_name(t.key_type)}, {iceberg_type_name(t.item_type)}>"
    if _is_list(t):
        return f"list<{iceberg_type_name(t.value_type)}>"
    return str(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t)


def _decimal(name: str) -> tuple[int, int] | None:
    if not name.startswith("decimal("):
        return None
    p, s = name[len("decimal(") : -1].split(",")
    return int(p), int(s)


def _fits(new: str, old: str) -> bool:
    """Whether every value of Iceberg type ``new`` is exactly a value of ``old`` (same family)."""
    if new == old or (new, old) in (("int", "long"), ("float", "double")):
        return True
    dn, do = _decimal(new), _decimal(old)
    if dn and do:
        return dn[1] <= do[1] and dn[0] - dn[1] <= do[0] - do[1]
    return False


def _promotes(old: str, new: str) -> bool:
    """Whether Iceberg (v2) can promote the table's ``old`` type to ``new``."""
    if (old, new) in (("int", "long"), ("float", "double")):
        return True
    do, dn = _decimal(old), _decimal(new)
    return bool(do and dn and do[1] == dn[1] and dn[0] > do[0])


# ------------------------------------------------------------------ classification


def classify(
    old: Schema | pa.Schema, new: pa.Schema, open_schema: bool = False, nulls: Collection[str] | None = None
) -> list[SchemaChange]:
    """The changes the table (schema ``old``: an Iceberg or Arrow schema) would undergo to take rows of
    Arrow schema ``new``, in column order (the table's columns first, then the new ones).

    ``open_schema`` is for records that carry no schema of their own (JSON): a column absent from every
    record of the batch is null there, not dropped. ``nulls`` are the columns (dotted paths) where the
    batch's rows hold a null (:func:`null_columns`): a required column becomes optional only if it is one
    of them. Without ``nulls`` the Arrow field's nullability stands for its values. Pure: reads nothing,
    writes nothing.
    """
    old_arrow = old if isinstance(old, pa.Schema) else old.as_arrow()
    out: list[SchemaChange] = []
    _struct("", list(old_arrow), list(new), open_schema, out, nulls)
    return out


def null_columns(data: pa.Table) -> set[str]:
    """The columns of ``data`` that hold a null, as dotted paths (``address.zip``, ``tags.element``,
    ``attrs.key`` / ``attrs.value``, as :func:`classify` names them). A field under a null struct, list or
    map does not count: a required field of an optional struct has no value there either."""
    out: set[str] = set()
    for name, column in zip(data.column_names, data.columns, strict=True):
        for chunk in column.chunks:
            _nulls(name, chunk, out)
    return out


def _nulls(path: str, arr: pa.Array, out: set[str]) -> None:
    if arr.null_count:
        out.add(path)
    t = arr.type
    if isinstance(t, pa.DictionaryType):
        return
    if pa.types.is_struct(t):
        valid = arr.is_valid() if arr.null_count else None
        for i, f in enumerate(t):
            child = arr.field(i)
            _nulls(f"{path}.{f.name}", child if valid is None else child.filter(valid), out)
    elif pa.types.is_map(t):
        _nulls(path + ".key", arr.keys, out)
        _nulls(path + ".value", arr.items, out)
    elif _is_list(t):
        _nulls(path + ".element", arr.flatten(), out)


def _struct(
    prefix: str, old: Sequence[pa.Field], new: Sequence[pa.Field], open_schema: bool, out: list[SchemaChange], nulls: Collection[str] | None
) -> None:
    by_name = {f.name: f for f in new}
    old_names = {f.name for f in old}
    for of in old:
        path = prefix + of.name
        nf = by_name.get(of.name)
        if nf is None:
            if not open_schema:
                out.append(SchemaChange(path, iceberg_type_name(of.type), None, BREAKING, DROPPED))
            continue
        _field(path, of, nf, open_schema, out, nulls)
    for nf in new:
        if nf.name not in old_names and not pa.types.is_null(nf.type):
            out.append(SchemaChange(prefix + nf.name, None, iceberg_type_name(nf.type), ADDITIVE, NEW_COLUMN))


def _field(path: str, of: pa.Field, nf: pa.Field, open_schema: bool, out: list[SchemaChange], nulls: Collection[str] | None) -> None:
    ot, nt = of.type, nf.type
    o_name, n_name = iceberg_type_name(ot), iceberg_type_name(nt)
    if not of.nullable and nf.nullable and (nulls is None or path in nulls):
        out.append(SchemaChange(path, o_name + " not null", n_name, WIDENING, NOW_OPTIONAL))
    if pa.types.is_null(nt):
        return
    if isinstance(ot, pa.DictionaryType) or isinstance(nt, pa.DictionaryType):
        ot = ot.value_type if isinstance(ot, pa.DictionaryType) else ot
        nt = nt.value_type if isinstance(nt, pa.DictionaryType) else nt
    if pa.types.is_struct(ot) and pa.types.is_struct(nt):
        _struct(path + ".", list(ot), list(nt), open_schema, out, nulls)
    elif pa.types.is_map(ot) and pa.types.is_map(nt):
        _field(path + ".key", ot.key_field, nt.key_field, open_schema, out, nulls)
        _field(path + ".value", ot.item_field, nt.item_field, open_schema, out, nulls)
    elif _is_list(ot) and _is_list(nt):
        _field(path + ".element", ot.value_field, nt.value_field, open_schema, out, nulls)
    elif o_name == n_name or _fits(n_name, o_name):
        return
    elif _promotes(o_name, n_name):
        out.append(SchemaChange(path, o_name, n_name, WIDENING, PROMOTION))
    elif _decimal(o_name) and _decimal(n_name):
        out.append(SchemaChange(path, o_name, n_name, BREAKING, NARROWING))
    else:
        out.append(SchemaChange(path, o_name, n_name, BREAKING, TYPE_CHANGE))


# ------------------------------------------------------------------ enforcement


def refused(changes: Iterable[SchemaChange], contract: str, protected: Iterable[str] = ()) -> list[SchemaChange]:
    """The changes ``contract`` refuses. A ``protected`` column (a merge key, an identifier field of the
    table) that is dropped or would become optional (the batch has rows without a value in it) is always
    refused: such a row cannot be merged or identified."""
    keep = set(protected)
    accepts = _ACCEPTS[contract]
    return [c for c in changes if c.change not in accepts or (c.change in (DROPPED, NOW_OPTIONAL) and c.column in keep)]


def enforce(
    changes: Sequence[SchemaChange],
    contract: str,
    table: str,
    pipeline: str | None = None,
    protected: Iterable[str] = (),
) -> None:
    """Raise :class:`SchemaError` if ``contract`` refuses any of ``changes`` to ``table``.

    The message lists every change (column, old type, new type, classification), marks the refused
    ones with the contract that would accept each (or how to fix it), and says that nothing was
    written. The error carries ``changes`` and ``refused`` for callers.
    """
    if contract not in _ACCEPTS:
        raise SchemaError(f"unknown schema contract {contract!r}; use one of {', '.join(CONTRACTS)}")
    keep = set(protected)
    bad = refused(changes, contract, keep)
    if not bad:
        return
    owner = f" of pipeline {pipeline!r}" if pipeline else ""
    lines = [
        f"table {table}: contract {contract!r}{owner} refuses {len(bad)} of {len(changes)} schema change(s) in "
        "this batch; nothing was written and the batch stays pending:"
    ]
    for c in changes:
        if c not in bad:
            lines.append(f"  - {c.describe()}: accepted")
        else:
            lines.append(f"  - {c.describe()}: REFUSED; {_fix(c, keep, changes)}")
    loosest = _strictest_accepting(bad, keep)
    if loosest is not None:
        lines.append(f"To accept them, set target.contract: {loosest} in the pipeline's file and rerun.")
    elif all(c.change in (DROPPED, NOW_OPTIONAL) and c.column in keep for c in bad):
        lines.append("Fix the source and rerun; no contract lets a key or identifier column go missing.")
    else:
        lines.append("Fix the source (or cast the column there) and rerun; no contract changes a column's type.")
    err = SchemaError("\n".join(lines))
    err.changes = list(changes)  # type: ignore[attr-defined]
    err.refused = bad  # type: ignore[attr-defined]
    raise err


def _strictest_accepting(changes: Sequence[SchemaChange], keep: set[str]) -> Contract | None:
    """The strictest contract that accepts every one of ``changes`` (None if none does)."""
    for contract in reversed(CONTRACTS):
        if not refused(changes, contract, keep):
            return contract
    return None


def _fix(c: SchemaChange, keep: set[str], changes: Sequence[SchemaChange]) -> str:
    if c.change == NOW_OPTIONAL and c.column in keep:
        return (
            "it is a key (a merge key or an identifier field of the table) and rows of the batch have no value in "
            f"it, which cannot be merged: filter or fill them in the source (e.g. `WHERE {c.column} IS NOT NULL`)"
        )
    if c.change == DROPPED:
        if c.column in keep:
            return "it is a merge key: send the column again"
        twins = [o.column for o in changes if o.change == NEW_COLUMN and o.new_type == c.old_type and _parent(o.column) == _parent(c.column)]
        hint = f" (if it was renamed to {', '.join(map(repr, twins))}, rename the table's column by hand first)" if twins else ""
        return f"contract 'evolve' keeps the column and writes nulls, or send the column again{hint}"
    if c.change in (TYPE_CHANGE, NARROWING):
        return (
            f"no contract changes a column's type: cast it to {c.old_type} in the source (e.g. source.columns "
            f"or the query), or migrate the table by hand"
        )
    strictest = _strictest_accepting([c], keep)
    return f"contract {strictest!r} accepts it" if strictest else "no contract accepts it"


def _parent(path: str) -> str:
    return path.rpartition(".")[0]
