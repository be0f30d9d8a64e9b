"""Nested ``columns:`` types (``struct<name: type, ...>``, ``list<type>``): parsed into Arrow struct and list
types, values typed strictly and recursively (``"12abc"`` in a nested long is refused, the path to it named),
landed as nested Iceberg columns by the http and files (JSON Lines) sources and read back with DuckDB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.types import ListType

from icefield import ConfigError
from icefield.examples.api import ApiSettings, FakeApi
from icefield.ingest.coerce import parse_type, records_to_table

CUSTOMER = "struct<id: long, name: string, country: string>"


# ------------------------------------------------------------------ grammar


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("struct<id: long, name: string>", pa.struct([("id", pa.int64()), ("name", pa.string())])),
        ("list<string>", pa.list_(pa.field("element", pa.string()))),
        (
            " List< Struct<id:long , tags: list<string>> > ",
            pa.list_(pa.field("element", pa.struct([("id", pa.int64()), ("tags", pa.list_(pa.field("element", pa.string())))]))),
        ),
        ("struct<Amount: decimal(10, 2), at: timestamptz>", pa.struct([("Amount", pa.decimal128(10, 2)), ("at", pa.timestamp("us", tz="UTC"))])),
        ("struct<raw: json, `first-name`: string>", pa.struct([("raw", pa.string()), ("first-name", pa.string())])),
        ("list<json>", pa.list_(pa.field("element", pa.string()))),
    ],
)
def test_nested_types_parse_into_arrow_types(text, want):
    assert parse_type(text) == want


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("struct<id long>", "expected ':' after field name 'id'"),
        ("struct<>", "expected a field name"),
        ("list<long", "expected '>' to close list<"),
        ("list<varchar>", "unknown type 'varchar'"),
        ("struct<a: long, a: int>", "field 'a' is declared twice"),
        ("struct", "struct needs its fields in <...>"),
        ("list<long>>", "unexpected '>'"),
        ("struct<a: long b: int>", "expected '>' to close struct< (or ',' before the next field)"),
    ],
)
def test_bad_grammar_is_refused_naming_the_text_the_problem_and_the_fix(text, problem):
    with pytest.raises(ValueError) as info:
        parse_type(text)
    msg = str(info.value)
    assert repr(text) in msg and problem in msg and "struct<name: type, ...> or list<type>" in msg


def test_json_is_a_nested_field_type_and_a_top_level_type_only_where_allowed():
    with pytest.raises(ValueError, match="json is a type inside struct<...> and list<...> only"):
        parse_type("json")
    assert parse_type("json", allow_json=True) == pa.string()


# ------------------------------------------------------------------ strict coercion

ORDER = parse_type("struct<id: long, customer: struct<id: long, name: string>, lines: list<struct<sku: string, qty: int>>, meta: json>")


def typed(values: list[Any], t: pa.DataType = ORDER) -> tuple[list[Any], dict[int, str]]:
    table, bad = records_to_table([{"o": v} for v in values], {"o": t})
    return table.column("o").to_pylist(), bad


def test_good_nested_values_are_typed_and_a_missing_field_is_null():
    got, bad = typed([
        {"id": "7", "customer": {"id": 1, "name": "Ada"}, "lines": [{"sku": "a", "qty": 2.0}, None], "meta": {"x": [1]}},
        {"id": 8},
        None,
    ])
    assert bad == {}
    assert got == [
        {"id": 7, "customer": {"id": 1, "name": "Ada"}, "lines": [{"sku": "a", "qty": 2}, None], "meta": '{"x": [1]}'},
        {"id": 8, "customer": None, "lines": None, "meta": None},
        None,
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"id": 1, "customer": {"id": "12abc"}}, "at o.customer.id: value '12abc' not an integer (int64)"),
        ({"id": 1, "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1.5}]}, "at o.lines[1].qty: value 1.5 not a whole number (int32)"),
        ({"id": 1, "customer": [{"id": 1}]}, "at o.customer: value [{'id': 1}] a list is not an object"),
        ({"id": 1, "lines": {"sku": "a"}}, "at o.lines: value {'sku': 'a'} an object is not a list"),
        ({"id": 1, "customer": {"id": 1, "vip": True}}, "has key 'vip', not a field of the declared struct (id, name)"),
        ([1, 2], "value [1, 2] a list is not an object"),
    ],
)
def test_a_bad_nested_value_makes_its_row_bad_naming_the_path(value, reason):
    got, bad = typed([{"id": 1}, value])
    assert got == [{"id": 1, "customer": None, "lines": None, "meta": None}, None]
    assert list(bad) == [1] and bad[1].startswith("type: column 'o'") and reason in bad[1]


# ------------------------------------------------------------------ http source


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi(ApiSettings(records=30, pagination="page", page_size=10)).start()
    yield server
    server.stop()


def http_pipeline(api: FakeApi, customer: str = CUSTOMER) -> dict[str, Any]:
    return {
        "source": {
            "type": "http",
            "base_url": api.url,
            "path": "/records",
            "pagination": {"type": "page", "size": 10},
            "records": "data.items",
            "columns": {"id": "long", "amount": "double", "updated_at": "timestamptz", "customer": customer, "tags": "list<string>"},
            "cursor": {"field": "updated_at", "param": "since"},
            "retries": {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05},
        },
        "target": {"table": "raw.records"},
        "batch_size": 10,
    }


def sql(lk: Any, text: str) -> list[dict[str, Any]]:
    from icefield.query import run_query

    return list(run_query(lk.project(), text, lk.catalog).to_pylist())


def test_http_source_lands_structs_and_lists_as_nested_columns_and_appends_into_them(lake, api):
    lk = lake({"recs": http_pipeline(api)})
    res = lk.run("recs")
    assert res.conserved and res.rows_committed == 30 and res.rows_quarantined == 0
    schema = lk.table("raw.records").schema()
    customer = schema.find_field("customer")
    assert customer.field_type.is_struct and [f.name for f in customer.field_type.fields] == ["id", "name", "country"]
    assert str(schema.find_field("customer.id").field_type) == "long" and isinstance(schema.find_field("tags").field_type, ListType)
    want = api.expected()
    rows = lk.rows("raw.records", "id")
    assert [(r["customer"], r["tags"]) for r in rows] == [(want[i]["customer"], want[i]["tags"]) for i in range(1, 31)]

    new = api.add(5)
    assert lk.run("recs").rows_committed == 5  # a second run appends into the nested columns
    rows = lk.rows("raw.records", "id")
    assert [r["customer"] for r in rows[-5:]] == [api.expected()[i]["customer"] for i in new]
    got = sql(lk, "select count(*) as n, sum(customer.id) as s, max(len(tags)) as t from raw.records")
    assert got == [{"n": 35, "s": sum(r["customer"]["id"] for r in rows), "t": max(len(r["tags"]) for r in rows)}]
    assert sql(lk, f"select customer.name as name from raw.records where id = {new[0]}") == [{"name": api.expected()[new[0]]["customer"]["name"]}]


def test_http_record_with_a_bad_nested_value_is_quarantined_with_the_path(lake, api):
    lk = lake({"recs": http_pipeline(api)})
    api.update([4], customer={"id": "12abc", "name": "x", "country": "FR"})
    api.update([9], customer={"id": 9, "name": "y", "country": "FR", "vip": True})
    res = lk.run("recs")
    assert res.conserved and (res.rows_committed, res.rows_quarantined) == (28, 2)
    q = {json.loads(r["raw"])["id"]: r["reason"] for r in lk.rows("raw.records__quarantine", "source")}
    assert sorted(q) == [4, 9]
    assert "at customer.id: value '12abc' not an integer" in q[4]
    assert "has key 'vip'" in q[9] and "struct" in q[9]
    assert sorted(r["id"] for r in lk.rows("raw.records", "id")) == sorted(set(range(1, 31)) - {4, 9})


def test_http_bad_nested_declaration_is_a_config_error_naming_the_column(lake, api):
    lk = lake({"recs": http_pipeline(api, customer="struct<id long>")})
    with pytest.raises(ConfigError, match=r"source\.columns\.customer: column type 'struct<id long>': expected ':'"):
        lk.run("recs")


# ------------------------------------------------------------------ files source (JSON Lines)


def write_lines(root: Path, rel: str, records: list[Any]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_json_lines_files_land_a_struct_column_strictly(lake):
    body = {
        "source": {"type": "files", "path": "drop/*.jsonl", "columns": {"id": "long", "order": "struct<sku: string, qty: int, tags: list<string>>"}},
        "target": {"table": "raw.orders"},
    }
    lk = lake({"ev": body})
    write_lines(lk.root, "drop/a.jsonl", [
        {"id": 1, "order": {"sku": "a", "qty": 2, "tags": ["x"]}},
        {"id": 2, "order": {"sku": "b", "qty": "12abc"}},
        {"id": 3, "order": {"sku": "c"}},
    ])
    res = lk.run("ev")
    assert res.conserved and (res.rows_committed, res.rows_quarantined) == (2, 1)
    assert [(r["id"], r["order"]) for r in lk.rows("raw.orders", "id")] == [
        (1, {"sku": "a", "qty": 2, "tags": ["x"]}),
        (3, {"sku": "c", "qty": None, "tags": None}),
    ]
    [bad] = lk.rows("raw.orders__quarantine", "source")
    assert "at order.qty: value '12abc' not an integer" in bad["reason"] and json.loads(bad["raw"])["id"] == 2

    write_lines(lk.root, "drop/b.jsonl", [{"id": 4, "order": {"sku": "d", "qty": 1, "tags": ["y", "z"]}}])
    assert lk.run("ev").rows_committed == 1
    assert sql(lk, "select id, \"order\".qty as qty, len(\"order\".tags) as n from raw.orders order by id") == [
        {"id": 1, "qty": 2, "n": 1},
        {"id": 3, "qty": None, "n": None},
        {"id": 4, "qty": 1, "n": 2},
    ]


def test_files_refuse_a_bad_nested_declaration_naming_the_column(lake):
    body = {"source": {"type": "files", "path": "drop/*.jsonl", "columns": {"order": "list<struct<sku string>>"}}, "target": {"table": "raw.orders"}}
    lk = lake({"ev": body})
    write_lines(lk.root, "drop/a.jsonl", [{"order": []}])
    with pytest.raises(ConfigError, match=r"source\.columns\.order: column type 'list<struct<sku string>>'"):
        lk.run("ev")


def test_a_field_added_to_the_struct_evolves_the_table_and_replays_the_quarantined_record(lake, api):
    """An unknown key is the declaration's to fix: once the struct declares it, the table gains the nested field
    and replaying the quarantine lands the record (a top-level json column replays too)."""
    import yaml

    from icefield.pipeline.replay import replay_quarantine

    body = http_pipeline(api)
    body["source"]["columns"]["name"] = "json"
    lk = lake({"recs": body})
    api.update([9], customer={"id": 9, "name": "y", "country": "FR", "vip": True})
    assert (lk.run("recs").rows_quarantined) == 1
    body["source"]["columns"]["customer"] = "struct<id: long, name: string, country: string, vip: boolean>"
    (lk.root / "pipelines" / "recs.yaml").write_text(yaml.safe_dump({"name": "recs", **body}), encoding="utf-8")
    res = replay_quarantine(lk.project(), "raw.records", catalog=lk.catalog)
    assert (res.rows_considered, res.rows_committed) == (1, 1)
    assert [f.name for f in lk.table("raw.records").schema().find_field("customer").field_type.fields] == ["id", "name", "country", "vip"]
    rows = {r["id"]: r for r in lk.rows("raw.records", "id")}
    assert len(rows) == 30 and rows[9]["customer"]["vip"] is True and rows[1]["customer"]["vip"] is None
    assert sql(lk, "select count(*) as n from raw.records where customer.vip") == [{"n": 1}]


def test_parquet_files_with_a_declared_struct_are_typed_strictly(lake):
    import pyarrow.parquet as pq

    body = {"source": {"type": "files", "path": "drop/*.parquet", "columns": {"id": "long", "order": "struct<sku: string, qty: int>"}}, "target": {"table": "raw.orders"}}
    lk = lake({"ev": body})
    (lk.root / "drop").mkdir()
    data = pa.table({"id": [1, 2], "order": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 2**40}]})
    pq.write_table(data, lk.root / "drop" / "a.parquet")
    res = lk.run("ev")
    assert res.conserved and (res.rows_committed, res.rows_quarantined) == (1, 1)
    assert [r["order"] for r in lk.rows("raw.orders", "id")] == [{"sku": "a", "qty": 2}]
    [bad] = lk.rows("raw.orders__quarantine", "source")
    assert "at order.qty: value 1099511627776 does not fit in 32 bits" in bad["reason"]


def test_merge_target_replaces_a_records_nested_values(lake, api):
    body = http_pipeline(api)
    body["target"] = {"table": "raw.records", "mode": "merge", "keys": ["id"]}
    lk = lake({"recs": body})
    assert lk.run("recs").rows_committed == 30
    api.update([5], customer={"id": 77, "name": "moved", "country": "NL"}, tags=["vip"])
    assert lk.run("recs").rows_committed == 1
    rows = {r["id"]: r for r in lk.rows("raw.records", "id")}
    assert len(rows) == 30
    assert (rows[5]["customer"], rows[5]["tags"]) == ({"id": 77, "name": "moved", "country": "NL"}, ["vip"])
    assert sql(lk, "select customer.name as name from raw.records where id = 5") == [{"name": "moved"}]


def test_icefield_sql_reads_the_nested_columns(lake, api):
    from click.testing import CliRunner

    from icefield.cli import cli

    lk = lake({"recs": http_pipeline(api)})
    lk.run("recs")
    want = api.expected()
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "sql", "select id, customer.id as cid, customer, tags from raw.records order by id limit 2", "--format", "json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["columns"] == ["id", "cid", "customer", "tags"]
    assert got["rows"] == [{"id": i, "cid": want[i]["customer"]["id"], "customer": want[i]["customer"], "tags": want[i]["tags"]} for i in (1, 2)]
    table = CliRunner().invoke(cli, ["--project", str(lk.root), "sql", "select customer, tags from raw.records order by id limit 1"])
    assert table.exit_code == 0 and want[1]["customer"]["name"] in table.output


def test_a_nested_column_of_large_offsets_casts_to_the_declared_type_exactly():
    """Iceberg's schema reads lists and strings as large ones: a batch typed as declared conforms to it by a cast."""
    from icefield.ingest.coerce import conform

    declared = parse_type("struct<id: long, tags: list<string>>")
    table, _ = records_to_table([{"c": {"id": 1, "tags": ["a", None]}}, {"c": None}], {"c": declared})
    large = pa.schema([pa.field("c", pa.struct([("id", pa.int64()), ("tags", pa.large_list(pa.field("element", pa.large_string())))]))])
    out, bad = conform(table, large)
    assert bad == {} and out.schema == large
    assert out.column("c").to_pylist() == [{"id": 1, "tags": ["a", None]}, None]
    back, bad = conform(out.cast(pa.schema([pa.field("c", pa.struct([("id", pa.int32()), ("tags", pa.list_(pa.string()))]))])), large)
    assert bad == {} and back.column("c").to_pylist() == [{"id": 1, "tags": ["a", None]}, None]
