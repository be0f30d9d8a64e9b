"""The W1 harness itself (bench/w1_load.py): its input data, its result check, and its in-process
peers on a tiny Parquet input. No server, no dlt venv, a few seconds."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bench import w1_load
from bench.w2_merge import base_rows


def test_input_files_are_w2_base_rows_split_in_order(tmp_path: Path) -> None:
    files = w1_load.prepare_files(tmp_path, 1000)
    assert len(files) == w1_load.FILES
    data = pq.read_table(files)
    assert data.equals(base_rows(1000))
    assert w1_load.prepare_files(tmp_path, 1000) == files  # made once


def _sample() -> pa.Table:
    return pa.table(
        {
            "order_id": pa.array([1, 2], pa.int64()),
            "customer_id": pa.array([7, 8], pa.int64()),
            "status": pa.array(["paid", "placed"]),
            "amount": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2.25")], pa.decimal128(12, 2)),
            "order_date": pa.array([dt.date(2025, 1, 1), dt.date(2025, 1, 2)]),
            "updated_at": pa.array(
                [dt.datetime(2025, 1, 1, 3), dt.datetime(2025, 1, 2, 4)], pa.timestamp("us")
            ),
            "note": pa.array(["a", "b"]),
        }
    )


def _digest(t: pa.Table) -> dict[str, object]:
    data, diffs, extra = w1_load.canonical(t)
    return {**w1_load.table_digest(data, "order_id"), "diffs": diffs, "extra": extra}


def test_check_ignores_string_flavour_and_extra_columns_but_reports_them() -> None:
    ref = _digest(_sample())
    other = _sample().cast(_sample().schema.set(2, pa.field("status", pa.large_string())))
    other = other.append_column("_dlt_id", pa.array(["x", "y"]))
    got = _digest(other)
    assert (got["rows"], got["hash"]) == (ref["rows"], ref["hash"])
    assert got["diffs"] == [] and got["extra"] == ["_dlt_id"]


def test_check_reports_other_types_and_finds_changed_values() -> None:
    ref = _digest(_sample())
    t = _sample()
    utc = t.set_column(5, "updated_at", t.column("updated_at").cast(pa.timestamp("us", tz="UTC")))
    got = _digest(utc)
    assert got["hash"] == ref["hash"] and got["diffs"] == ["updated_at timestamp[us, tz=UTC]"]
    as_double = t.set_column(3, "amount", t.column("amount").cast(pa.float64()))
    got = _digest(as_double)
    assert got["hash"] == ref["hash"] and got["diffs"] == ["amount double"]
    changed = t.set_column(6, "note", pa.array(["a", "c"]))
    assert _digest(changed)["hash"] != ref["hash"]
    with pytest.raises(RuntimeError, match="lacks columns"):
        w1_load.canonical(t.drop(["note"]))


def test_numeric_from_adbc_is_typed_by_hand() -> None:
    opaque = pa.opaque(pa.string(), "numeric", "PostgreSQL")
    amount = pa.ExtensionArray.from_storage(opaque, pa.array(["1.50", "2.25"]))
    t = _sample().set_column(3, "amount", amount)
    assert w1_load._typed(t).equals(_sample())


@pytest.mark.parametrize("peer", ["icefield", "pyiceberg", "limit"])
def test_parquet_peers_load_the_same_rows(tmp_path: Path, peer: str) -> None:
    files = w1_load.prepare_files(tmp_path / "w1", 2000)
    ref = w1_load.digest({"kind": "parquet", "paths": files})
    res = w1_load.PEERS[peer]({"case": "parquet", "files": files}, tmp_path / peer)
    got = w1_load.digest(res["locator"])
    assert (got["rows"], got["hash"], got["type_diffs"]) == (2000, ref["hash"], [])
    assert res["seconds"] > 0
