"""Arrow columns built without a Python object per row (``pa.array(range(n))`` costs ~150 ns a row,
holding the GIL)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def row_numbers(n: int) -> pa.Array:
    """``0, 1, ..., n - 1`` as int64."""
    if n == 0:
        return pa.array([], pa.int64())
    return pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), 1)


def constant(value: object, n: int, type: pa.DataType) -> pa.Array:
    """``value`` ``n`` times, of ``type``."""
    return pa.repeat(pa.scalar(value, type), n)


INTERNAL_PREFIX = "__icefield_"
"""The namespace of icefield's working columns (a merge's delete flag, row positions while versions are
compared, partition keys while files are written...). No column of the data may start with it, so a
working column never meets a column of the data."""


def internal(name: str) -> str:
    """The name of the working column ``name``, in icefield's reserved namespace."""
    return INTERNAL_PREFIX + name


def column_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a column of a table (the end of a sentence that starts with the name), or
    None when it can: an empty name, or one in icefield's reserved namespace (:data:`INTERNAL_PREFIX`)."""
    if not name:
        return "is empty (a column needs a name)"
    if name.startswith(INTERNAL_PREFIX):
        return f"starts with {INTERNAL_PREFIX!r}, which icefield reserves for its working columns"
    return None
