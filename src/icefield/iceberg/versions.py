"""Versions of rows: which of several versions of a key is the newest (pure Arrow, engine-neutral)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.columns import constant, internal, row_numbers

__all__ = ["dedupe_latest", "newer_mask", "newer_than", "split_deletes"]

_POS = internal("pos")  # a working column: no column of the data can be named so


def dedupe_latest(data: pa.Table, keys: list[str], order_by: str | list[str] | None) -> pa.Table:
    """Keep one row per key: the greatest ``order_by`` value (compared column by column; NULL is the
    oldest), ties (or no ``order_by``) broken by the later position in the batch."""
    if data.num_rows == 0:
        return data
    order = [order_by] if isinstance(order_by, str) else list(order_by or [])
    pos = row_numbers(data.num_rows)
    work = data.append_column(_POS, pos)
    if order:
        # A version without an order_by value is older than any with one.
        work = work.sort_by([*((c, "ascending", "at_start") for c in order), (_POS, "ascending")])
        work = work.set_column(work.schema.get_field_index(_POS), _POS, row_numbers(work.num_rows))
    last = work.group_by(keys, use_threads=False).aggregate([(_POS, "max")])
    picked = pc.sort_indices(last.column(_POS + "_max"))
    idx = pc.take(last.column(_POS + "_max"), picked)
    return work.take(idx).drop([_POS])


def newer_mask(new: list[pa.ChunkedArray | pa.Array], old: list[pa.ChunkedArray | pa.Array]) -> pa.ChunkedArray | pa.Array:
    """True where the version ``new`` is strictly newer than ``old``, comparing the columns in turn
    (lexicographically; NULL is older than any value, two NULLs are equal)."""
    result: Any = None
    equal: Any = None
    for a, b in zip(new, old, strict=True):
        a_null, b_null = pc.is_null(a), pc.is_null(b)
        gt = pc.or_(pc.fill_null(pc.greater(a, b), False), pc.and_(pc.invert(a_null), b_null))
        eq = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(a_null, b_null))
        step = gt if equal is None else pc.and_(equal, gt)
        result = step if result is None else pc.or_(result, step)
        equal = eq if equal is None else pc.and_(equal, eq)
    return result


def newer_than(data: pa.Table, order: list[str], version: list[Any]) -> pa.ChunkedArray | pa.Array:
    """True for the rows of ``data`` whose ``order`` columns are strictly newer than ``version``."""
    olds = [constant(v, data.num_rows, data.schema.field(c).type) for c, v in zip(order, version, strict=True)]
    return newer_mask([data.column(c) for c in order], olds)


def split_deletes(data: pa.Table, delete_column: str | None) -> tuple[pa.Table, pa.Array | pa.ChunkedArray]:
    """``data`` without its delete flag column, and the flag (True: the row deletes its key; a NULL flag or
    no such column means an upsert)."""
    if delete_column and delete_column in data.column_names:
        flag = pc.fill_null(data.column(delete_column).cast(pa.bool_()), False)
        return data.drop([delete_column]), flag
    return data, pa.repeat(False, data.num_rows)
