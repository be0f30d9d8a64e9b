"""The interop matrix's oracle, shared by the Trino and the Spark direction (issue 17, item 4).

One table is fed by an icefield merge pipeline (Parquet source files, key ``id``); another engine changes
it between runs. :class:`MergeCase` keeps a pure-Python oracle of the table (key -> row): each source file
icefield lands and each change the other engine makes is applied to it, and :meth:`MergeCase.assert_rows`
compares what a reader returns with it. :func:`next_run` is the step every case ends with: the next
``icefield run`` lands new and updated keys exactly once (the earlier files are not read again: the
position held).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icefield import load_project, run_pipeline

Row = dict[str, Any]

SCHEMA = pa.schema([("id", pa.int64()), ("kind", pa.string()), ("qty", pa.int32()), ("amount", pa.float64()), ("day", pa.date32())])


def row(i: int, kind: str = "a") -> Row:
    """Source row ``i`` of :data:`SCHEMA`; ``kind`` tells the file it came from."""
    return {"id": i, "kind": kind, "qty": i % 7, "amount": i * 1.5, "day": dt.date(2026, 11, 1 + i % 5)}


def norm(v: Any) -> Any:
    """A value as the comparison sees it: numbers as floats rounded to 6 places (Decimal, float32 and
    float64 readers agree), dates and timestamps in ISO form."""
    if isinstance(v, float | Decimal):
        return round(float(v), 6)
    if isinstance(v, dt.date):  # datetime too
        return v.isoformat()
    return v


@dataclass
class MergeCase:
    """One table fed by the merge pipeline ``pipeline`` (Parquet files under ``data``, key ``id``) and its oracle."""

    root: Path
    table: str
    pipeline: str = "p"
    data: Path | None = None
    schema: pa.Schema = SCHEMA
    make_row: Callable[..., Row] = row
    oracle: dict[int, Row] = field(default_factory=dict)
    files: int = 0

    def source_dir(self) -> Path:
        return self.data if self.data is not None else self.root / "data"

    def land(self, rows: list[Row]) -> int:
        """Write ``rows`` as the next source file, run the pipeline, update the oracle; return rows committed."""
        self.files += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), self.source_dir() / f"{self.files:03d}.parquet")
        res = run_pipeline(load_project(self.root), self.pipeline)
        assert res.status == "success", res.error
        # A merge replaces the whole row: a table column the source lacks becomes null.
        columns = self.columns()
        for r in rows:
            self.oracle[r["id"]] = {**dict.fromkeys(columns), **r}
        return res.rows_committed

    def columns(self) -> list[str]:
        return list(next(iter(self.oracle.values()))) if self.oracle else []

    def add_column(self, name: str) -> None:
        for k in self.oracle:
            self.oracle[k] = {**self.oracle[k], name: None}

    def rename_column(self, old: str, new: str) -> None:
        for k, r in self.oracle.items():
            self.oracle[k] = {(new if c == old else c): v for c, v in r.items()}

    def expected(self, columns: list[str]) -> list[list[Any]]:
        return [[norm(r.get(c)) for c in columns] for _, r in sorted(self.oracle.items())]

    def assert_rows(self, rows: list[Row], columns: list[str], reader: str) -> None:
        """``rows`` (a reader's answer ordered by ``id``) equal the oracle on ``columns``: count, then content."""
        expected = self.expected(columns)
        got = [[norm(r[c]) for c in columns] for r in rows]
        assert len(got) == len(expected), (reader, len(got), len(expected))
        if got != expected:
            have = {g[columns.index("id")]: g for g in got}
            want = {e[columns.index("id")]: e for e in expected}
            wrong = {k: (have.get(k), want.get(k)) for k in have.keys() | want.keys() if have.get(k) != want.get(k)}
            raise AssertionError(f"{reader}: {len(wrong)} rows differ from the oracle (got, expected): {dict(sorted(wrong.items())[:10])}")


def next_run(case: MergeCase, ids: range, kind: str = "n") -> None:
    """The next icefield run after the other engine's change: new keys ``ids`` and two updated keys (2 and
    4) land exactly once: the run commits just this file's rows (the earlier files are not read again:
    the position held). The caller then compares the table with the oracle."""
    rows = [case.make_row(i, kind) for i in ids] + [case.make_row(2, "upd"), case.make_row(4, "upd")]
    assert case.land(rows) == len(rows)
