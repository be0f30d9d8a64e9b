"""Schema contracts: how each difference between the table's schema and a batch's is classified, and
what each contract accepts, with the words of the refusal."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import DecimalType, IntegerType, LongType, NestedField, StringType, StructType

from icefield import SchemaError
from icefield.write.contracts import (
    ADDITIVE,
    BREAKING,
    CONTRACTS,
    DROPPED,
    NARROWING,
    NEW_COLUMN,
    NOW_OPTIONAL,
    PROMOTION,
    TYPE_CHANGE,
    WIDENING,
    SchemaChange,
    classify,
    enforce,
    iceberg_type_name,
    refused,
)

D = pa.decimal128

# (table type, batch type, expected (kind, change), or None when the table takes the batch as it is)
TYPE_CASES = [
    (pa.int64(), pa.int64(), None),
    (pa.string(), pa.large_string(), None),
    (pa.timestamp("us"), pa.timestamp("ns"), None),  # Iceberg v2 has one timestamp unit
    (pa.timestamp("us", tz="UTC"), pa.timestamp("us", tz="+00:00"), None),
    (pa.int64(), pa.int32(), None),  # narrower batch: cast up exactly, the table keeps long
    (pa.int32(), pa.int16(), None),
    (pa.float64(), pa.float32(), None),
    (D(10, 2), D(8, 2), None),
    (D(10, 2), D(9, 1), None),  # 8 integer digits and 1 decimal fit in decimal(10,2)
    (pa.int64(), pa.null(), None),  # a column of nulls fits anything
    (pa.int32(), pa.int64(), (WIDENING, PROMOTION)),
    (pa.int32(), pa.uint32(), (WIDENING, PROMOTION)),
    (pa.float32(), pa.float64(), (WIDENING, PROMOTION)),
    (D(10, 2), D(12, 2), (WIDENING, PROMOTION)),
    (D(10, 2), D(10, 3), (BREAKING, NARROWING)),  # Iceberg never changes a decimal's scale
    (D(10, 2), D(12, 3), (BREAKING, NARROWING)),
    (D(10, 2), D(10, 1), (BREAKING, NARROWING)),  # 9 integer digits do not fit in 8
    (pa.int64(), pa.float64(), (BREAKING, TYPE_CHANGE)),
    (pa.float64(), pa.int64(), (BREAKING, TYPE_CHANGE)),
    (pa.int64(), pa.string(), (BREAKING, TYPE_CHANGE)),
    (pa.string(), pa.int64(), (BREAKING, TYPE_CHANGE)),
    (pa.string(), pa.binary(), (BREAKING, TYPE_CHANGE)),
    (pa.date32(), pa.timestamp("us"), (BREAKING, TYPE_CHANGE)),  # only Iceberg v3 promotes date
    (pa.timestamp("us"), pa.timestamp("us", tz="UTC"), (BREAKING, TYPE_CHANGE)),
    (pa.int64(), D(38, 0), (BREAKING, TYPE_CHANGE)),
    (pa.bool_(), pa.int32(), (BREAKING, TYPE_CHANGE)),
    (pa.struct([("a", pa.int32())]), pa.string(), (BREAKING, TYPE_CHANGE)),
]


@pytest.mark.parametrize(("old", "new", "expected"), TYPE_CASES, ids=[f"{o}<-{n}" for o, n, _ in TYPE_CASES])
def test_type_differences(old, new, expected):
    changes = classify(pa.schema([("c", old)]), pa.schema([("c", new)]))
    if expected is None:
        assert changes == []
    else:
        assert [(c.column, c.kind, c.change) for c in changes] == [("c", *expected)]
        assert (changes[0].old_type, changes[0].new_type) == (iceberg_type_name(old), iceberg_type_name(new))


def test_new_dropped_and_unchanged_columns_in_table_order_then_new_ones():
    old = pa.schema([("id", pa.int64()), ("note", pa.string()), ("qty", pa.int32())])
    new = pa.schema([("coupon", pa.string()), ("qty", pa.int64()), ("id", pa.int64())])
    assert classify(old, new) == [
        SchemaChange("note", "string", None, BREAKING, DROPPED),
        SchemaChange("qty", "int", "long", WIDENING, PROMOTION),
        SchemaChange("coupon", None, "string", ADDITIVE, NEW_COLUMN),
    ]


def test_open_schema_absent_columns_are_nulls_not_drops():
    old = pa.schema([("id", pa.int64()), ("note", pa.string()), ("s", pa.struct([("a", pa.int64()), ("b", pa.string())]))])
    new = pa.schema([("id", pa.int64()), ("s", pa.struct([("a", pa.int64())]))])
    assert [c.column for c in classify(old, new)] == ["note", "s.b"]
    assert classify(old, new, open_schema=True) == []


def test_a_new_column_without_any_value_is_no_change():
    assert classify(pa.schema([("id", pa.int64())]), pa.schema([("id", pa.int64()), ("x", pa.null())])) == []


def test_nested_fields_lists_and_maps_are_classified_by_path():
    old = pa.schema(
        [
            ("addr", pa.struct([("zip", pa.int32()), ("city", pa.string())])),
            ("tags", pa.list_(pa.int32())),
            ("attrs", pa.map_(pa.string(), pa.float32())),
        ]
    )
    new = pa.schema(
        [
            ("addr", pa.struct([("zip", pa.string()), ("city", pa.string()), ("street", pa.string())])),
            ("tags", pa.large_list(pa.int64())),
            ("attrs", pa.map_(pa.large_string(), pa.float64())),
        ]
    )
    assert [(c.column, c.old_type, c.new_type, c.change) for c in classify(old, new)] == [
        ("addr.zip", "int", "string", TYPE_CHANGE),
        ("addr.street", None, "string", NEW_COLUMN),
        ("tags.element", "int", "long", PROMOTION),
        ("attrs.value", "float", "double", PROMOTION),
    ]


def test_an_iceberg_schema_with_a_required_column_can_become_optional():
    table = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "amount", DecimalType(10, 2), required=False),
        NestedField(3, "s", StructType(NestedField(4, "n", IntegerType(), required=False)), required=False),
        NestedField(5, "name", StringType(), required=False),
    )
    batch = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=True),
            pa.field("amount", D(10, 2), nullable=False),  # NOT NULL into an optional column: no change
            pa.field("s", pa.struct([("n", pa.int64())])),
            pa.field("name", pa.string()),
        ]
    )
    assert [(c.column, c.old_type, c.new_type, c.kind, c.change) for c in classify(table, batch)] == [
        ("id", "long not null", "long", WIDENING, NOW_OPTIONAL),
        ("s.n", "int", "long", WIDENING, PROMOTION),
    ]


# ------------------------------------------------------------------ contracts

ACCEPTS = {
    # change -> contracts that accept it
    NEW_COLUMN: {"evolve", "additive-only"},
    PROMOTION: {"evolve"},
    NOW_OPTIONAL: {"evolve"},
    DROPPED: {"evolve"},
    NARROWING: set(),
    TYPE_CHANGE: set(),
}


@pytest.mark.parametrize("change", sorted(ACCEPTS))
@pytest.mark.parametrize("contract", CONTRACTS)
def test_what_each_contract_accepts(contract, change):
    c = SchemaChange("col", "int", "long", WIDENING, change)
    assert (refused([c], contract) == []) == (contract in ACCEPTS[change])
    assert set(c.accepted_by()) == ACCEPTS[change]


def test_a_dropped_merge_key_is_refused_even_under_evolve():
    c = SchemaChange("id", "long", None, BREAKING, DROPPED)
    assert refused([c], "evolve", protected=["id"]) == [c]
    with pytest.raises(SchemaError, match=r"column 'id': long -> \(absent\): breaking \(dropped\): REFUSED; it is a merge key"):
        enforce([c], "evolve", "shop.orders", "orders", protected=["id"])


def test_refusal_lists_every_change_and_names_the_contract_that_accepts_it():
    old = pa.schema([("id", pa.int64()), ("qty", pa.int32())])
    new = pa.schema([("id", pa.int64()), ("qty", pa.int64()), ("coupon", pa.string())])
    with pytest.raises(SchemaError) as info:
        enforce(classify(old, new), "freeze", "shop.orders", "orders")
    text = str(info.value)
    assert text.splitlines() == [
        "table shop.orders: contract 'freeze' of pipeline 'orders' refuses 2 of 2 schema change(s) in this batch; "
        "nothing was written and the batch stays pending:",
        "  - column 'qty': int -> long: widening (type promotion): REFUSED; contract 'evolve' accepts it",
        "  - column 'coupon': (absent) -> string: additive (new column): REFUSED; contract 'additive-only' accepts it",
        "To accept them, set target.contract: evolve in the pipeline's file and rerun.",
    ]
    assert [c.column for c in info.value.refused] == ["qty", "coupon"]  # type: ignore[attr-defined]


def test_accepted_changes_are_listed_beside_a_type_change_with_its_fix():
    old = pa.schema([("id", pa.int64()), ("qty", pa.int64()), ("note", pa.string())])
    new = pa.schema([("id", pa.int64()), ("qty", pa.string()), ("comment", pa.string())])
    with pytest.raises(SchemaError) as info:
        enforce(classify(old, new), "evolve", "shop.orders", "orders")
    lines = str(info.value).splitlines()
    assert lines[1] == (
        "  - column 'qty': long -> string: breaking (type change): REFUSED; no contract changes a column's type: "
        "cast it to long in the source (e.g. source.columns or the query), or migrate the table by hand"
    )
    assert lines[2] == "  - column 'note': string -> (absent): breaking (dropped): accepted"
    assert lines[3] == "  - column 'comment': (absent) -> string: additive (new column): accepted"
    assert lines[-1].startswith("Fix the source")


def test_a_drop_beside_a_new_column_of_the_same_type_hints_at_a_rename():
    changes = classify(pa.schema([("note", pa.string())]), pa.schema([("remark", pa.string())]))
    with pytest.raises(SchemaError, match=r"if it was renamed to 'remark', rename the table's column by hand first"):
        enforce(changes, "additive-only", "s.t")


def test_no_change_passes_every_contract():
    for contract in CONTRACTS:
        enforce([], contract, "s.t")


def test_unknown_contract_is_refused():
    with pytest.raises(SchemaError, match="unknown schema contract 'loose'"):
        enforce([], "loose", "s.t")


# ------------------------------------------------------------------ the writer applies what the contract accepts


def _writer(tmp_path, contract: str):
    from icefield.catalog import sql_catalog
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    return TableWriter(cat, TargetConfig(table="shop.people", contract=contract), "people", LocalEngine())


@pytest.mark.parametrize("contract", CONTRACTS)
def test_writer_evolves_nested_fields_as_the_contract_allows(tmp_path, contract):
    w = _writer(tmp_path, contract)
    first = pa.table({"id": pa.array([1], pa.int64()), "addr": pa.array([{"zip": 1}], pa.struct([("zip", pa.int32())]))})
    w.commit(first, "b1", None, "r1")
    table = w.load()
    batch = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("addr", pa.struct([pa.field("zip", pa.int64()), pa.field("street", pa.string(), nullable=False)])),
            pa.field("age", pa.int32(), nullable=False),
        ]
    )
    try:
        if contract != "evolve":
            with pytest.raises(SchemaError, match=r"column 'addr.zip': int -> long: widening \(type promotion\): REFUSED"):
                w.evolve(table, batch)
            assert w.load().metadata.current_schema_id == table.metadata.current_schema_id
            return
        evolved = w.evolve(table, batch).schema()
        assert str(evolved.find_field("addr.zip").field_type) == "long"
        assert not evolved.find_field("addr.street").required and not evolved.find_field("age").required
        assert str(evolved.find_field("age").field_type) == "int"
    finally:
        w.catalog.engine.dispose()
