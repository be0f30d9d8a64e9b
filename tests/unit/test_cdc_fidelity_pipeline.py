"""CDC type fidelity through the pipeline (issue 14), with Debezium-format events in JSON Lines files:

- an unconstrained ``numeric`` column has one declared type whatever values come first; a value that
  does not fit it is quarantined with its raw event, and no batch stays pending because of a scale;
- unchanged TOASTed values (the connector's placeholder in an update) keep the stored value, also after
  an insert in the same batch, across a change of the primary key, and in a merge-on-read table;
- a column added in PostgreSQL with a default gives that default to the rows the table already held.
"""

from __future__ import annotations

import base64
import decimal
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from icefield.ingest.debezium_codec import UNAVAILABLE_VALUE
from icefield.testing.debezium import Column, DebeziumTable, encode_variable_decimal, variable_decimal_column

D = decimal.Decimal


def pipeline(table: str, **source: Any) -> dict[str, Any]:
    return {"source": {"type": "debezium", "path": f"cdc/{table}-*.jsonl", **source}, "target": {"table": f"cdc.{table}", "keys": ["id"]}}


def write(root: Path, name: str, values: list[bytes | None]) -> None:
    (root / "cdc").mkdir(exist_ok=True)
    with (root / "cdc" / name).open("ab") as f:
        f.write(b"".join((v if v is not None else b"null") + b"\n" for v in values))


# ------------------------------------------------------------------ unconstrained numeric

NV = DebeziumTable("nv", [Column("id", "int32", optional=False), variable_decimal_column("n")], server="pg")


def nv(op: str, i: int, n: str | None, lsn: int) -> bytes:
    return NV.value(op, after={"id": i, "n": None if n is None else encode_variable_decimal(n)}, lsn=lsn, commit_lsn=lsn + 1)


def test_an_unconstrained_numeric_lands_as_its_declared_type_whatever_came_first(lake: Any) -> None:
    """D2: the type was decimal(38, largest scale of the first batch); a later, finer value was a breaking
    change and the batch stayed pending for ever (with advice that could not work)."""
    lk = lake({"nv": pipeline("nv")})
    write(lk.root, "nv-0001.jsonl", [nv("r", 1, "1.5", 10), nv("r", 2, "2.25", 11)])
    first = lk.run("nv")
    write(lk.root, "nv-0002.jsonl", [nv("c", 3, "0.000001", 20), nv("c", 4, "12345.6", 21), nv("c", 5, "-99999999999999999999.999999999999999999", 22)])
    second = lk.run("nv")
    assert first.status == second.status == "success" and second.pending is None
    assert str(lk.table("cdc.nv").schema().find_field("n").field_type) == "decimal(38, 18)"
    assert [(r["id"], r["n"]) for r in lk.rows("cdc.nv", "id")] == [
        (1, D("1.5")), (2, D("2.25")), (3, D("0.000001")), (4, D("12345.6")), (5, D("-99999999999999999999.999999999999999999")),
    ]  # fmt: skip


def test_a_value_that_does_not_fit_the_declared_decimal_is_quarantined_and_the_rest_lands(lake: Any) -> None:
    lk = lake({"nv": pipeline("nv")})
    pi = "3.14159265358979323846264338327950288"
    write(lk.root, "nv-0001.jsonl", [nv("r", 1, pi, 10), nv("r", 2, "12345.6", 11), nv("r", 3, "1" * 21, 12), nv("r", 4, "1.500000000000000000000000", 13)])
    result = lk.run("nv")
    assert result.status == "success" and result.pending is None and result.conserved
    assert result.rows_committed == 2 and result.rows_quarantined == 2
    assert [(r["id"], r["n"]) for r in lk.rows("cdc.nv", "id")] == [(2, D("12345.6")), (4, D("1.5"))]
    bad = {r["raw"]: r["reason"] for r in lk.rows("cdc.nv__quarantine", "raw")}
    assert len(bad) == 2 and all(raw.encode() in (nv("r", 1, pi, 10), nv("r", 3, "1" * 21, 12)) for raw in bad), "raw events kept"
    reasons = sorted(bad.values())
    assert any(pi in r and "35 decimal places" in r and "source.numeric.columns" in r for r in reasons), reasons
    assert any("integer digits" in r for r in reasons), reasons


def test_a_numeric_column_declared_string_keeps_postgresql_text_of_every_value(lake: Any) -> None:
    lk = lake({"nv": pipeline("nv", numeric={"columns": {"n": "string"}})})
    values = ["1.50", "12.5", "0.000001", "1000000000000000000000000000000", "-0.000000000000000000000000000001", "3.14159265358979323846264338327950288"]
    write(lk.root, "nv-0001.jsonl", [nv("r", i, v, 10 + i) for i, v in enumerate(values[:3])])
    lk.run("nv")
    write(lk.root, "nv-0002.jsonl", [nv("c", i, v, 20 + i) for i, v in enumerate(values) if i >= 3])
    lk.run("nv")
    assert str(lk.table("cdc.nv").schema().find_field("n").field_type) == "string"
    assert [r["n"] for r in lk.rows("cdc.nv", "id")] == values, "each value at its own scale, as PostgreSQL prints it"


def test_a_numeric_default_of_the_pipeline_applies_to_new_tables(lake: Any) -> None:
    lk = lake({"nv": pipeline("nv", numeric={"default": "decimal(20,4)"})})
    write(lk.root, "nv-0001.jsonl", [nv("r", 1, "1.5", 10), nv("r", 2, "0.00001", 11)])
    result = lk.run("nv")
    assert str(lk.table("cdc.nv").schema().find_field("n").field_type) == "decimal(20, 4)"
    assert [r["n"] for r in lk.rows("cdc.nv", "id")] == [D("1.5")] and result.rows_quarantined == 1


# ------------------------------------------------------------------ unchanged TOAST values

TOAST_COLUMNS = [
    Column("id", "int32", optional=False),
    Column("t", "string"),
    Column("big", "string"),
    Column("doc", "string", "io.debezium.data.Json"),
    Column("arr", "array", items={"type": "string", "optional": True}),
    Column("iarr", "array", items={"type": "int32", "optional": True}),
    Column("barr", "array", items={"type": "int64", "optional": True}),
    Column("darr", "array", items={"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1}),
    Column("bin", "bytes"),
]
TOAST = DebeziumTable("toast", TOAST_COLUMNS)
PLACEHOLDER_INTS = list(UNAVAILABLE_VALUE.encode())
# An update that leaves every large column unchanged, as the connector sends it (REPLICA IDENTITY DEFAULT).
UNCHANGED = {
    "big": UNAVAILABLE_VALUE,
    "doc": UNAVAILABLE_VALUE,
    "arr": [UNAVAILABLE_VALUE],
    "iarr": PLACEHOLDER_INTS,
    "barr": PLACEHOLDER_INTS,
    "darr": PLACEHOLDER_INTS,
    "bin": base64.b64encode(UNAVAILABLE_VALUE.encode()).decode(),
}


def full(i: int, t: str) -> dict[str, Any]:
    return {
        "id": i, "t": t, "big": f"big text {i} " * 1000, "doc": f'{{"n": {i}}}', "arr": [f"element {i}" * 300],
        "iarr": list(range(i, i + 3000)), "barr": [i << 40], "darr": [i, 19000], "bin": base64.b64encode(bytes([i]) * 5000).decode(),
    }  # fmt: skip


def unchanged(i: int, t: str) -> dict[str, Any]:
    return {"id": i, "t": t, **UNCHANGED}


def expected(i: int, t: str) -> dict[str, Any]:
    import datetime as dt

    row = full(i, t)
    return {**row, "darr": [dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in row["darr"]], "bin": bytes([i]) * 5000}


def toast_rows(lk: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_cdc")} for r in lk.rows("cdc.toast", "id")]


@pytest.mark.parametrize("mode", ["copy-on-write", "merge-on-read"])
def test_an_unchanged_toasted_value_keeps_the_stored_value(lake: Any, mode: str) -> None:
    """D1: the placeholder __debezium_unavailable_value was written into the row (text[], int[] and
    bytea in their own forms)."""
    target = {"table": "cdc.toast", "keys": ["id"], "properties": {"write.merge.mode": mode, "format-version": "2"}}
    lk = lake({"toast": {"source": {"type": "debezium", "path": "cdc/toast-*.jsonl"}, "target": target}})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("r", after=full(i, f"t{i}"), lsn=10 + i, commit_lsn=None) for i in (1, 2, 3)])
    lk.run("toast")
    write(lk.root, "toast-0002.jsonl", [TOAST.value("u", after=unchanged(i, "upd"), lsn=20 + i, commit_lsn=30) for i in (1, 2)])
    result = lk.run("toast")
    assert result.conserved and result.rows_committed == 2
    assert toast_rows(lk) == [expected(1, "upd"), expected(2, "upd"), expected(3, "t3")]


def test_unchanged_values_come_from_the_version_before_in_the_batch_and_across_a_key_change(lake: Any) -> None:
    lk = lake({"toast": pipeline("toast")})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("r", after=full(1, "t1"), lsn=10, commit_lsn=None)])
    lk.run("toast")
    write(
        lk.root,
        "toast-0002.jsonl",
        [
            TOAST.value("c", after=full(5, "new"), lsn=20, commit_lsn=25),
            TOAST.value("u", after=unchanged(5, "changed"), lsn=30, commit_lsn=35),
            TOAST.value("u", after=unchanged(5, "twice"), lsn=40, commit_lsn=45),
            # UPDATE toast SET id = 100 WHERE id = 1: a delete of the old key and an insert of the new one,
            # at one position, the insert without the unchanged values.
            TOAST.value("d", before={"id": 1}, lsn=50, commit_lsn=55),
            None,
            TOAST.value("c", after=unchanged(100, "t1"), lsn=50, commit_lsn=55),
            # ...and the same for the row inserted in this batch.
            TOAST.value("d", before={"id": 5}, lsn=60, commit_lsn=65),
            TOAST.value("c", after=unchanged(500, "twice"), lsn=60, commit_lsn=65),
        ],
    )
    result = lk.run("toast")
    assert result.conserved
    assert toast_rows(lk) == [{**expected(1, "t1"), "id": 100}, {**expected(5, "twice"), "id": 500}]


def test_an_unchanged_value_with_no_earlier_version_is_null_and_said(lake: Any, caplog: pytest.LogCaptureFixture) -> None:
    lk = lake({"toast": pipeline("toast")})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("u", after=unchanged(7, "orphan"), lsn=10, commit_lsn=15)])
    with caplog.at_level(logging.WARNING, logger="icefield.write.unchanged"):
        lk.run("toast")
    (row,) = toast_rows(lk)
    assert row["t"] == "orphan" and row["big"] is None and row["iarr"] is None and row["bin"] is None
    assert "unchanged-TOAST placeholder" in caplog.text and "REPLICA IDENTITY FULL" in caplog.text and "'big'" in caplog.text


def test_the_placeholder_is_a_value_like_any_other_outside_updates(lake: Any) -> None:
    lk = lake({"toast": pipeline("toast")})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("c", after={"id": 1, "t": UNAVAILABLE_VALUE}, lsn=10, commit_lsn=15)])
    lk.run("toast")
    assert toast_rows(lk)[0]["t"] == UNAVAILABLE_VALUE, "an insert carries whole values: its text is the row's"


# ------------------------------------------------------------------ ADD COLUMN ... DEFAULT


@dataclass(frozen=True)
class Defaulted(Column):
    """A column with the default the connector puts in its schema (encoded as its values are)."""

    given: Any = None

    def schema(self) -> dict[str, Any]:
        return {**super().schema(), "default": self.given}


def added(columns: list[Column]) -> DebeziumTable:
    return DebeziumTable("users", columns)


BASE = [Column("id", "int32", optional=False), Column("name", "string")]
WITH_DEFAULTS = [
    *BASE,
    Defaulted("c_added", "string", given="dflt"),  # ADD COLUMN c_added text DEFAULT 'dflt'
    Defaulted("c_added_int", "int32", optional=False, given=42),  # ADD COLUMN c_added_int integer NOT NULL DEFAULT 42
    Defaulted("c_added_date", "int32", "io.debezium.time.Date", given=18294),  # ... date DEFAULT '2020-02-02'
    Column("c_plain", "string"),
    # ADD COLUMN c_added_at timestamptz DEFAULT now(): the connector cannot evaluate now() and writes the epoch.
    Defaulted("c_added_at", "string", "io.debezium.time.ZonedTimestamp", given="1970-01-01T00:00:00.000000Z"),
]


def users(lk: Any) -> list[tuple[Any, ...]]:
    rows = lk.rows("cdc.users", "id")
    return [(r["id"], r["name"], r.get("c_added"), r.get("c_added_int"), r.get("c_added_date"), r.get("c_plain"), r.get("c_added_at")) for r in rows]


def test_rows_that_existed_when_a_column_was_added_with_a_default_get_it(lake: Any) -> None:
    """D4: ALTER TABLE ADD COLUMN ... DEFAULT (and NOT NULL DEFAULT 42) left the existing rows NULL."""
    import datetime as dt

    lk = lake({"users": pipeline("users")})
    old, new = added(BASE), added(WITH_DEFAULTS)
    write(lk.root, "users-0001.jsonl", [old.value("r", after={"id": i, "name": f"u{i}"}, lsn=10 + i, commit_lsn=None) for i in (1, 2, 3)])
    lk.run("users")
    write(
        lk.root,
        "users-0002.jsonl",
        [
            old.value("u", after={"id": 2, "name": "before the alter"}, lsn=20, commit_lsn=21),
            new.value("c", after={"id": 4, "name": "after", "c_added": "mine", "c_added_int": 7, "c_added_date": None, "c_plain": "p", "c_added_at": None}, lsn=30, commit_lsn=31),
            new.value("u", after={"id": 3, "name": "u3 again", "c_added": "dflt", "c_added_int": 42, "c_added_date": 18294, "c_plain": None, "c_added_at": "2026-01-01T00:00:00Z"}, lsn=40, commit_lsn=41),
        ],
    )
    result = lk.run("users")
    assert result.conserved and result.status == "success"
    day, at = dt.date(2020, 2, 2), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert users(lk) == [
        (1, "u1", "dflt", 42, day, None, None),  # now()'s value is unknown: NULL, not the epoch
        (2, "before the alter", "dflt", 42, day, None, None),
        (3, "u3 again", "dflt", 42, day, None, at),
        (4, "after", "mine", 7, None, "p", None),
    ]
    table = lk.table("cdc.users")
    assert "_cdc_defaults" not in table.schema().column_names and "_cdc_unchanged" not in table.schema().column_names
    snapshots = lk.snapshot_count("cdc.users")
    # A later batch with the same schema gives nothing again (nor would ALTER COLUMN ... SET DEFAULT).
    write(lk.root, "users-0003.jsonl", [new.value("u", after={"id": 1, "name": "u1b", "c_added": None, "c_added_int": 42, "c_added_date": None, "c_plain": None}, lsn=50, commit_lsn=51)])
    lk.run("users")
    assert users(lk)[0] == (1, "u1b", None, 42, None, None, None)
    assert lk.snapshot_count("cdc.users") == snapshots + 1, "one commit: the batch's"


def test_a_key_change_split_over_two_batches_takes_the_old_key_s_last_stored_values(lake: Any) -> None:
    """The delete of the old key ends one batch and the insert of the new key starts the next one."""
    lk = lake({"toast": pipeline("toast")})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("r", after=full(i, f"t{i}"), lsn=10 + i, commit_lsn=None) for i in (1, 2)])
    lk.run("toast")
    write(lk.root, "toast-0002.jsonl", [TOAST.value("d", before={"id": 1}, lsn=50, commit_lsn=55), None])
    lk.run("toast")
    write(lk.root, "toast-0003.jsonl", [TOAST.value("c", after=unchanged(100, "t1"), lsn=50, commit_lsn=55)])
    result = lk.run("toast")
    assert result.conserved
    assert toast_rows(lk) == [expected(2, "t2"), {**expected(1, "t1"), "id": 100}]


def test_a_placeholder_configured_in_the_connector_is_recognised(lake: Any) -> None:
    lk = lake({"toast": pipeline("toast", connector={"unavailable.value.placeholder": "<unchanged>"})})
    write(lk.root, "toast-0001.jsonl", [TOAST.value("r", after=full(1, "t1"), lsn=10, commit_lsn=None)])
    lk.run("toast")
    update = {"id": 1, "t": "upd", "big": "<unchanged>", "arr": ["<unchanged>"], "iarr": list(b"<unchanged>")}
    write(lk.root, "toast-0002.jsonl", [TOAST.value("u", after=update, lsn=20, commit_lsn=25)])
    lk.run("toast")
    (row,) = toast_rows(lk)
    assert (row["t"], row["big"], row["arr"], row["iarr"]) == ("upd", expected(1, "t1")["big"], expected(1, "t1")["arr"], expected(1, "t1")["iarr"])


def test_unchanged_values_of_a_composite_key_come_from_that_key_s_row(lake: Any) -> None:
    import datetime as dt

    columns = [Column("day", "int32", "io.debezium.time.Date", optional=False), Column("k", "string", optional=False), Column("big", "string")]
    table = DebeziumTable("comp", columns, key=("day", "k"))
    target = {"table": "cdc.comp", "keys": ["day", "k"]}
    lk = lake({"comp": {"source": {"type": "debezium", "path": "cdc/comp-*.jsonl"}, "target": target}})
    rows = [{"day": d, "k": k, "big": f"{d}-{k} " * 500} for d in (0, 1) for k in ("a", "b")]
    write(lk.root, "comp-0001.jsonl", [table.value("r", after=r, lsn=10 + i, commit_lsn=None) for i, r in enumerate(rows)])
    lk.run("comp")
    write(lk.root, "comp-0002.jsonl", [table.value("u", after={"day": 1, "k": "a", "big": UNAVAILABLE_VALUE}, lsn=20, commit_lsn=25)])
    lk.run("comp")
    got = {(r["day"], r["k"]): r["big"] for r in lk.rows("cdc.comp", "day", "k")}
    assert got[(dt.date(1970, 1, 2), "a")] == "1-a " * 500


def test_replaying_a_cdc_quarantine_is_refused_and_changes_nothing(lake: Any) -> None:
    """A quarantined row of a debezium source is a whole change event: replay decoded it as a row of its
    own and added its envelope ('schema', 'payload') to the table as columns."""
    from icefield import ConfigError
    from icefield.pipeline.replay import replay_quarantine

    days = DebeziumTable("days", [Column("id", "int32", optional=False), Column("d", "int32", "io.debezium.time.Date")])
    lk = lake({"days": pipeline("days")})
    # PostgreSQL's date 'infinity' arrives as a number of days past the year 9999: quarantined.
    write(lk.root, "days-0001.jsonl", [days.value("c", after={"id": 1, "d": 0}, lsn=10, commit_lsn=11), days.value("c", after={"id": 2, "d": 2_932_897}, lsn=12, commit_lsn=13)])
    lk.run("days")
    before = (lk.table("cdc.days").schema().column_names, lk.rows("cdc.days", "id"))
    with pytest.raises(ConfigError, match="change events"):
        replay_quarantine(lk.project(), "cdc.days", lk.catalog)
    assert (lk.table("cdc.days").schema().column_names, lk.rows("cdc.days", "id")) == before
    assert len(lk.rows("cdc.days__quarantine", "raw")) == 1, "the event stays in the quarantine"
