"""docs/reliability.md D2: the schema contract matrix.

A typed source (a SQLite table read by the ``sql`` source, full load, whole-table overwrite) lands its
rows; then its schema changes (new column, widened type, narrower type, type change, dropped column, or a
value that does not fit) and the pipeline runs again under each contract. Each cell asserts what is
written, or, for a refused change, that nothing is: same snapshot, same schema, same position, no
quarantined row, the batch reported pending, an error naming the column, both types and the
classification; the batch then stays pending across a rerun and lands exactly once after the contract
is relaxed (when some contract accepts the change).
"""

from __future__ import annotations

import decimal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from icefield import SchemaError
from icefield.iceberg.history import find_batch, read_position
from icefield.write.contracts import CONTRACTS, iceberg_type_name

D = decimal.Decimal
TABLE = "shop.items"
BASE_DDL = "CREATE TABLE items (id INTEGER, qty INTEGER, price NUMERIC(10,2), note TEXT)"
BASE_ROWS = [(1, 5, 9.99, "a"), (2, 7, 1.5, "b")]


@dataclass(frozen=True)
class Scenario:
    name: str
    ddl: str | None  # the new CREATE TABLE (None: keep the table)
    sql: list[str]  # statements run after it (ALTER, INSERT)
    rows: list[tuple[Any, ...]] | None  # rows of the recreated table
    accepted_by: frozenset[str]
    # when written: the table's column types and rows (id -> selected values) expected afterwards
    types: dict[str, str] = field(default_factory=dict)
    expect_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    # when refused: the line of the error that describes the change
    error_line: str = ""
    quarantined: int = 0


SCENARIOS = [
    Scenario(
        "new_column",
        None,
        ["ALTER TABLE items ADD COLUMN coupon TEXT", "INSERT INTO items VALUES (3, 1, 2.0, 'c', 'X')"],
        None,
        frozenset({"evolve", "additive-only"}),
        types={"coupon": "string", "qty": "long"},
        expect_rows={1: {"coupon": None, "qty": 5}, 3: {"coupon": "X", "qty": 1}},
        error_line="column 'coupon': (absent) -> string: additive (new column): REFUSED; contract 'additive-only' accepts it",
    ),
    Scenario(
        "widening",
        "CREATE TABLE items (id INTEGER, qty INTEGER, price NUMERIC(12,2), note TEXT)",
        [],
        [*BASE_ROWS, (3, 1, 1234567890.12, "c")],
        frozenset({"evolve"}),
        types={"price": "decimal(12,2)"},
        expect_rows={1: {"price": D("9.99")}, 3: {"price": D("1234567890.12")}},
        error_line="column 'price': decimal(10,2) -> decimal(12,2): widening (type promotion): REFUSED; contract 'evolve' accepts it",
    ),
    Scenario(
        "narrower_type",
        "CREATE TABLE items (id INTEGER, qty INTEGER, price NUMERIC(8,2), note TEXT)",
        [],
        [*BASE_ROWS, (3, 1, 3.25, "c")],
        frozenset(CONTRACTS),
        types={"price": "decimal(10,2)"},  # the table keeps its wider type
        expect_rows={3: {"price": D("3.25")}},
    ),
    Scenario(
        "type_change",
        "CREATE TABLE items (id INTEGER, qty TEXT, price NUMERIC(10,2), note TEXT)",
        [],
        [(1, "5", 9.99, "a"), (2, "7", 1.5, "b"), (3, "1", 2.0, "c")],
        frozenset(),
        error_line=(
            "column 'qty': long -> string: breaking (type change): REFUSED; no contract changes a column's type: "
            "cast it to long in the source (e.g. source.columns or the query), or migrate the table by hand"
        ),
    ),
    Scenario(
        "dropped_column",
        "CREATE TABLE items (id INTEGER, qty INTEGER, price NUMERIC(10,2))",
        [],
        [(1, 5, 9.99), (2, 7, 1.5), (3, 1, 2.0)],
        frozenset({"evolve"}),
        types={"note": "string"},  # kept; the rows get nulls
        expect_rows={1: {"note": None}, 3: {"note": None, "qty": 1}},
        error_line="column 'note': string -> (absent): breaking (dropped): REFUSED; contract 'evolve' keeps the column and writes nulls, or send the column again",
    ),
    Scenario(
        # No schema change: a value that does not fit its column is quarantined, never coerced.
        "value_12abc",
        None,
        ["INSERT INTO items VALUES (3, '12abc', 2.0, 'c')", "INSERT INTO items VALUES (4, 12, 2.0, 'd')"],
        None,
        frozenset(CONTRACTS),
        types={"qty": "long"},
        expect_rows={4: {"qty": 12}},
        quarantined=1,
    ),
]


class Source:
    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *statements: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        con = sqlite3.connect(self.path)
        try:
            for s in statements:
                con.execute(s)
            if rows:
                con.executemany(f"INSERT INTO items VALUES ({','.join('?' * len(rows[0]))})", rows)
            con.commit()
        finally:
            con.close()


def _pipeline(url: str, contract: str) -> dict[str, Any]:
    return {
        "source": {"type": "sql", "url": url, "table": "items"},
        "target": {"table": TABLE, "mode": "overwrite", "overwrite": "table", "contract": contract},
    }


def _set_contract(lk: Any, contract: str) -> None:
    path = lk.root / "pipelines" / "items.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["target"]["contract"] = contract
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _state(lk: Any) -> tuple[Any, ...]:
    t = lk.table(TABLE)
    snap = t.current_snapshot()
    quarantine = lk.catalog.table_exists(TABLE + "__quarantine") and len(lk.rows(TABLE + "__quarantine"))
    return snap.snapshot_id, t.metadata.current_schema_id, read_position(t, "items"), quarantine


@pytest.mark.parametrize("contract", CONTRACTS)
def test_new_table_is_created_under_every_contract(lake, tmp_path, contract):
    src = Source(tmp_path / "src.db")
    src.run(BASE_DDL, rows=BASE_ROWS)
    lk = lake({"items": _pipeline(f"sqlite:///{src.path}", contract)})
    res = lk.run("items")
    assert (res.rows_in, res.rows_committed) == (2, 2)
    schema = lk.table(TABLE).schema().as_arrow()
    assert {f.name: iceberg_type_name(f.type) for f in schema} == {"id": "long", "qty": "long", "price": "decimal(10,2)", "note": "string"}
    assert [(r["id"], r["qty"], r["price"], r["note"]) for r in lk.rows(TABLE, "id")] == [(1, 5, D("9.99"), "a"), (2, 7, D("1.50"), "b")]


@pytest.mark.parametrize("contract", CONTRACTS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_contract_matrix(lake, tmp_path, scenario: Scenario, contract: str):
    src = Source(tmp_path / "src.db")
    src.run(BASE_DDL, rows=BASE_ROWS)
    lk = lake({"items": _pipeline(f"sqlite:///{src.path}", contract)})
    lk.run("items")
    before = _state(lk)

    if scenario.ddl is not None:
        src.run("DROP TABLE items", scenario.ddl, *scenario.sql, rows=scenario.rows)
    else:
        src.run(*scenario.sql)
    expected_ids = _source_ids(src)

    if contract in scenario.accepted_by:
        res = lk.run("items")
        _assert_written(lk, scenario, res, expected_ids)
        return

    with pytest.raises(SchemaError) as info:
        lk.run("items")
    message = str(info.value)
    assert f"  - {scenario.error_line}" in message.splitlines(), message
    assert "nothing was written and the batch stays pending" in message
    assert _state(lk) == before  # no snapshot, no schema change, position not advanced, nothing quarantined
    pending = info.value.result.pending  # type: ignore[attr-defined]
    assert pending is not None and pending.rows_in == len(expected_ids) and pending.error_type == "SchemaError"
    assert find_batch(lk.table(TABLE), pending.batch_id) is None

    # The batch stays pending: a rerun refuses it again and still writes nothing.
    with pytest.raises(SchemaError):
        lk.run("items")
    assert _state(lk) == before

    if scenario.accepted_by:
        # Relaxed to the strictest contract that accepts it, the very same batch lands, once.
        relaxed = next(c for c in reversed(CONTRACTS) if c in scenario.accepted_by)
        _set_contract(lk, relaxed)
        res = lk.run("items")
        _assert_written(lk, scenario, res, expected_ids)
        assert [b.batch_id for b in res.batches] == [pending.batch_id]
        assert lk.run("items").batches == []  # nothing left pending


def _source_ids(src: Source) -> list[int]:
    con = sqlite3.connect(src.path)
    try:
        return [r[0] for r in con.execute("SELECT id FROM items ORDER BY id")]
    finally:
        con.close()


def _assert_written(lk: Any, scenario: Scenario, res: Any, source_ids: list[int]) -> None:
    assert res.conserved and res.rows_in == len(source_ids)
    assert res.rows_quarantined == scenario.quarantined
    schema = lk.table(TABLE).schema().as_arrow()
    types = {f.name: iceberg_type_name(f.type) for f in schema}
    assert {k: types.get(k) for k in scenario.types} == scenario.types
    rows = {r["id"]: r for r in lk.rows(TABLE, "id")}
    committed = sorted(rows)
    assert len(committed) == len(lk.rows(TABLE)) == res.rows_committed  # no id twice
    assert set(committed) | _quarantined_ids(lk) == set(source_ids)
    for key, values in scenario.expect_rows.items():
        assert {k: rows[key][k] for k in values} == values
    if scenario.quarantined:
        (q,) = lk.rows(TABLE + "__quarantine")
        assert q["check"] == "type" and "column 'qty' value '12abc'" in q["reason"]
        assert all(r["qty"] != 12 or r["id"] == 4 for r in rows.values())  # "12abc" never became 12


def _quarantined_ids(lk: Any) -> set[int]:
    import json

    if not lk.catalog.table_exists(TABLE + "__quarantine"):
        return set()
    return {json.loads(q["raw"])["id"] for q in lk.rows(TABLE + "__quarantine")}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_batch_without_good_rows_implies_no_schema_change(lake, fmt):
    """Under ``freeze``, an empty file or a chunk of nothing but bad records lands (its bad records in
    the quarantine): having no values, its columns cannot have changed type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lk = lake({"items": {"source": {"type": "files", "path": f"data/*.{fmt}"}, "target": {"table": TABLE, "contract": "freeze"}}})
    (lk.root / "data").mkdir()
    first = pa.table({"id": pa.array([1], pa.int64()), "price": pa.array([D("1.50")], pa.decimal128(10, 2))})
    if fmt == "parquet":
        pq.write_table(first, lk.root / "data" / "a.parquet")
        pq.write_table(pa.table({"id": pa.array([], pa.int32()), "price": pa.array([], pa.float64())}), lk.root / "data" / "b.parquet")
    elif fmt == "csv":
        (lk.root / "data" / "a.csv").write_text("id,price\n1,1.50\n")
        (lk.root / "data" / "b.csv").write_text("id,price\n2\nx,y,z\n")
    else:
        (lk.root / "data" / "a.jsonl").write_text('{"id": 1, "price": 1.5}\n')
        (lk.root / "data" / "b.jsonl").write_text('{"id": 2, "price"\n[1]\n')
    lk.run("items", max_batches=1)
    schema_id = lk.table(TABLE).metadata.current_schema_id
    res = lk.run("items")
    assert [b.rows_committed for b in res.batches] == [0]
    assert res.rows_quarantined == (0 if fmt == "parquet" else 2)
    assert lk.table(TABLE).metadata.current_schema_id == schema_id
    assert sorted(read_position(lk.table(TABLE), "items")["files"]) == [f"data/a.{fmt}", f"data/b.{fmt}"]
