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
