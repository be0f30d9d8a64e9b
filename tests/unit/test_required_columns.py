"""Tables another engine created with required columns and identifier fields (interop finding D2).

Spark's ``id BIGINT NOT NULL`` and ``ALTER TABLE ... SET IDENTIFIER FIELDS id`` (Flink upsert tables
too) make required columns. Sources type every Arrow column nullable, so the Arrow field alone said
"this batch may hold nulls": icefield made the key optional on every merge, and crashed with pydantic's
"Identifier field 1 invalid: not a required field" when the key was an identifier field. Now the values
decide: a required column stays required unless a row really holds a null there; a null in a merge key
or an identifier field is refused with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import cli
from icefield.errors import SchemaError
from icefield.write.contracts import NOW_OPTIONAL, classify


def _project(root: Path, contract: str = "evolve", identifier: bool = True, delete_column: str | None = None) -> Path:
    """A project whose pipeline ``p`` merges ``drop/*.jsonl`` by ``id`` into ``t.items``, a table created as
    Spark creates one: ``id`` required (and its identifier field), ``name`` required, ``v`` optional."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    from icefield.catalog import open_catalog
    from icefield.config import load_project

    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "req"}))
    target: dict[str, Any] = {"table": "t.items", "mode": "merge", "keys": ["id"], "contract": contract}
    if delete_column:
        target["delete_column"] = delete_column
    pipe = {"name": "p", "source": {"type": "files", "path": "drop/*.jsonl", "file_column": None}, "target": target}
    (root / "pipelines" / "p.yaml").write_text(yaml.safe_dump(pipe))
    catalog = open_catalog(load_project(root))
    catalog.create_namespace("t")
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "name", StringType(), required=True),
        NestedField(3, "v", StringType(), required=False),
        identifier_field_ids=[1] if identifier else [],
    )
    table = catalog.create_table(("t", "items"), schema=schema)
    table.append(pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"], "v": ["x", None]}, schema=schema.as_arrow()))
    return root


def _drop(root: Path, name: str, rows: list[dict[str, Any]]) -> None:
    (root / "drop" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table(root: Path) -> Any:
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    return open_catalog(load_project(root)).load_table(("t", "items"))


def _run(root: Path) -> Any:
    from icefield.config import load_project
    from icefield.pipeline.runner import run_pipeline

    return run_pipeline(load_project(root), "p")


@pytest.mark.parametrize("identifier", [True, False], ids=["identifier-field", "not-null-key"])
def test_a_merge_into_a_table_with_required_keys_keeps_them_required(tmp_path: Path, identifier: bool) -> None:
    """D2 4a/4b: the merge runs (exit 0, one JSON document) and the key, the identifier field and the
    required ``name`` stay as the other engine declared them."""
    root = _project(tmp_path / "p", identifier=identifier)
    _drop(root, "a.jsonl", [{"id": 2, "name": "b2", "v": "y"}, {"id": 3, "name": "c", "v": None}])

    res = CliRunner().invoke(cli, ["--project", str(root), "--json", "run"])

    assert res.exit_code == 0, (res.stdout, res.stderr)
    (doc,) = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert doc["status"] == "ok" and doc["results"][0]["rows_committed"] == 2
    table = _table(root)
    schema = table.schema()
    assert schema.find_field("id").required and schema.find_field("name").required
    assert not schema.find_field("v").required
    assert schema.identifier_field_ids == ([1] if identifier else [])
    rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "name": "a", "v": "x"}, {"id": 2, "name": "b2", "v": "y"}, {"id": 3, "name": "c", "v": None}]


def test_a_null_in_a_required_column_that_is_no_key_makes_it_optional_under_evolve(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    _drop(root, "a.jsonl", [{"id": 4, "name": None, "v": "z"}])
    _run(root)
    schema = _table(root).schema()
    assert not schema.find_field("name").required, "a real null widens the column (contract evolve)"
    assert schema.find_field("id").required and schema.identifier_field_ids == [1]


def test_the_nulls_of_a_delete_row_do_not_make_a_column_optional(tmp_path: Path) -> None:
    """A delete (a CDC ``op=d``) carries only its key: its empty ``name`` is never written, so ``name``
    stays required while the delete applies."""
    root = _project(tmp_path / "p", delete_column="_deleted")
    _drop(root, "a.jsonl", [{"id": 1, "name": None, "v": None, "_deleted": True}, {"id": 5, "name": "e", "v": None, "_deleted": False}])
    _run(root)
    table = _table(root)
    assert table.schema().find_field("name").required
    assert sorted(r["id"] for r in table.scan().to_arrow().to_pylist()) == [2, 5]


def test_a_null_in_a_required_column_is_refused_under_freeze(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", contract="freeze")
    _drop(root, "a.jsonl", [{"id": 4, "name": "d", "v": "z"}])
    _run(root)  # no null: no change, the frozen contract has nothing to refuse
    _drop(root, "b.jsonl", [{"id": 5, "name": None, "v": "z"}])
    with pytest.raises(SchemaError, match=r"column 'name': string not null -> string: widening \(now optional\): REFUSED"):
        _run(root)


@pytest.mark.parametrize("identifier", [True, False], ids=["identifier-field", "not-null-key"])
def test_a_null_key_is_refused_with_the_fix_and_nothing_is_written(tmp_path: Path, identifier: bool) -> None:
    """A row without a key cannot be merged: the batch is refused (exit 1, pending), never a traceback,
    and the key stays required."""
    root = _project(tmp_path / "p", identifier=identifier)
    before = _table(root).current_snapshot()
    _drop(root, "a.jsonl", [{"id": 7, "name": "g", "v": None}, {"id": None, "name": "h", "v": None}])

    res = CliRunner().invoke(cli, ["--project", str(root), "--json", "run"])

    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    (doc,) = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]  # one document
    docs = [doc]
    errors = [d["error"] for d in docs if d.get("status") == "failed" and d.get("error")]
    assert errors and "column 'id': long not null -> long: widening (now optional): REFUSED" in errors[0], docs
    assert "WHERE id IS NOT NULL" in errors[0]
    table = _table(root)
    assert table.current_snapshot() == before and table.schema().find_field("id").required


def test_the_schema_alone_still_decides_without_the_rows() -> None:
    """classify without ``nulls`` keeps its old meaning; with them, only real nulls relax a column,
    nested ones included (a null struct's fields do not count)."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StructType

    from icefield.write.contracts import null_columns

    table = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "s", StructType(NestedField(3, "n", LongType(), required=True)), required=False),
    )
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "s": pa.array([{"n": 1}, None], pa.struct([("n", pa.int64())])),
        }
    )
    assert [(c.column, c.change) for c in classify(table, data.schema)] == [("id", NOW_OPTIONAL), ("s.n", NOW_OPTIONAL)]
    assert null_columns(data) == {"s"}
    assert classify(table, data.schema, nulls=null_columns(data)) == []
    with_null = pa.table({"id": pa.array([1], pa.int64()), "s": pa.array([{"n": None}], pa.struct([("n", pa.int64())]))})
    assert null_columns(with_null) == {"s.n"}
    assert [(c.column, c.change) for c in classify(table, with_null.schema, nulls=null_columns(with_null))] == [("s.n", NOW_OPTIONAL)]


def test_a_schema_change_iceberg_refuses_is_a_schema_error_naming_the_identifier_field(tmp_path: Path) -> None:
    """Never pydantic's traceback out of ``update_schema``: a batch without the required struct that holds
    the identifier field ``s.id`` (the struct would become optional, which Iceberg refuses) is a
    SchemaError naming the field, and the table is unchanged."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType, StructType

    from icefield.catalog import sql_catalog
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    catalog = sql_catalog("icefield", f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "wh").resolve().as_uri())
    catalog.create_namespace("t")
    schema = Schema(
        NestedField(1, "s", StructType(NestedField(2, "id", LongType(), required=True)), required=True),
        NestedField(3, "v", StringType(), required=False),
        identifier_field_ids=[2],
    )
    table = catalog.create_table(("t", "x"), schema=schema)
    writer = TableWriter(catalog, TargetConfig(table="t.x", mode="append"), "p", LocalEngine())
    batch = pa.table({"v": ["a"]})

    with pytest.raises(SchemaError, match=r"Iceberg refused the schema change .*identifier fields \(s\.id\)"):
        writer.evolve(table, batch.schema)
    assert catalog.load_table(("t", "x")).schema() == table.schema()
