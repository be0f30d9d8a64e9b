"""Every common PostgreSQL type through the real Debezium connector into Iceberg, value by value (issue 14).

PostgreSQL -> Debezium 3.6 (Kafka Connect, JsonConverter with the embedded schema) -> Kafka -> icefield.
Tables: ``typ`` (one column per type, edge rows: NULLs, minimums and maximums, NaN and infinities, empty
text and arrays, far dates, several time zones, a large TOASTed text), ``comp`` (composite key), ``toast``
(large text, text[], int[] and bytea under REPLICA IDENTITY DEFAULT), ``nv`` (unconstrained numeric)
and ``trunc``. A snapshot, then inserts, updates (of the primary key too), deletes, updates that leave
TOASTed values unchanged, a TRUNCATE, and columns added with defaults. After each phase the pipelines run
until the Iceberg tables equal PostgreSQL, read through pyiceberg and through ``icefield sql``, with the
documented exceptions only (README, CDC type mapping):

- values Debezium changes under its defaults: numeric NaN and infinities arrive as NULL, a 2-D array as a
  list of NULLs, timetz as UTC text, interval as microseconds (months of 30.4375 days);
- values refused by type go to the quarantine with their row: time 24:00, infinity and BC dates.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.connect]

D = decimal.Decimal
TABLES = ["typ", "comp", "toast", "nv", "trunc"]
KEYS = {"typ": ["id"], "comp": ["a", "b", "c"], "toast": ["id"], "nv": ["id"], "trunc": ["id"], "modes": ["id"]}

DDL = """
CREATE TYPE mood AS ENUM ('happy', 'sad', 'ünï');
CREATE TABLE typ (
  id integer PRIMARY KEY, c_small smallint, c_int integer, c_big bigint, c_num numeric(38,10), c_numv numeric,
  c_money money, c_real real, c_dbl double precision, c_bool boolean, c_text text, c_vc varchar(10), c_ch char(3),
  c_bytea bytea, c_date date, c_time time, c_time3 time(3), c_timetz timetz, c_ts timestamp, c_ts3 timestamp(3),
  c_tstz timestamptz, c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb, c_intarr int[], c_int2d int[],
  c_textarr text[], c_enum mood, c_inet inet
);
CREATE TABLE comp (a integer, b text, c date, v text, PRIMARY KEY (a, b, c));
CREATE TABLE toast (id integer PRIMARY KEY, t text, big text, arr text[], iarr int[], bin bytea);
CREATE TABLE nv (id integer PRIMARY KEY, n numeric, r real);
CREATE TABLE trunc (id integer PRIMARY KEY, v text);
"""
COLUMNS = [
    "id", "c_small", "c_int", "c_big", "c_num", "c_numv", "c_money", "c_real", "c_dbl", "c_bool", "c_text", "c_vc", "c_ch",
    "c_bytea", "c_date", "c_time", "c_time3", "c_timetz", "c_ts", "c_ts3", "c_tstz", "c_interval", "c_uuid", "c_json",
    "c_jsonb", "c_intarr", "c_int2d", "c_textarr", "c_enum", "c_inet",
]  # fmt: skip
# Edge rows of typ, as SQL literals per column (NULL where not given).
EDGE_ROWS: list[dict[str, str]] = [
    {"id": "1"},  # all NULL
    {"id": "2", "c_small": "-32768", "c_int": "-2147483648", "c_big": "-9223372036854775808",
     "c_num": "-9999999999999999999999999999.9999999999", "c_numv": "-99999999999999999999.999999999999999999",
     "c_money": "-92233720368547758.08", "c_real": "-3.4028235e38", "c_dbl": "-1.7976931348623157e308", "c_bool": "false",
     "c_text": "''", "c_vc": "''", "c_ch": "'a'", "c_bytea": "'\\x'", "c_date": "'0001-01-01'", "c_time": "'00:00:00'",
     "c_time3": "'00:00:00'", "c_timetz": "'00:00:00.000001-00:30'", "c_ts": "'0001-01-01 00:00:00'",
     "c_ts3": "'0001-01-01 00:00:00'", "c_tstz": "'0001-01-01 00:00:00+00'", "c_interval": "'-1000 years -11 mons'",
     "c_uuid": "'00000000-0000-0000-0000-000000000000'", "c_json": "'[1e400]'", "c_jsonb": "'{\"b\":1,\"a\":2,\"a\":3}'",
     "c_intarr": "'{}'", "c_textarr": "'{}'", "c_enum": "'ünï'", "c_inet": "'::1'"},
    {"id": "3", "c_small": "32767", "c_int": "2147483647", "c_big": "9223372036854775807",
     "c_num": "9999999999999999999999999999.9999999999", "c_numv": "99999999999999999999.999999999999999999",
     "c_money": "92233720368547758.07", "c_real": "3.4028235e38", "c_dbl": "1.7976931348623157e308", "c_bool": "true",
     "c_text": "E'tab\\tnl\\n ünï 🙂'", "c_vc": "'abcdefghij'", "c_ch": "'é'", "c_bytea": "'\\x00ff'", "c_date": "'9999-12-31'",
     "c_time": "'23:59:59.999999'", "c_time3": "'23:59:59.999'", "c_timetz": "'12:00:00.5+05:30'",
     "c_ts": "'9999-12-31 23:59:59.999999'", "c_ts3": "'9999-12-31 23:59:59.999'", "c_tstz": "'9999-12-31 23:59:59.999999+00'",
     "c_interval": "'1 year 2 mons 3 days 04:05:06.789012'", "c_uuid": "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
     "c_json": "'null'", "c_jsonb": "'null'", "c_intarr": "'{NULL,-2147483648,2147483647}'", "c_int2d": "'{{1,2},{3,4}}'",
     "c_textarr": "'{NULL,\"\",\"ü,\\\"x\",\"🙂\"}'", "c_enum": "'sad'", "c_inet": "'10.0.0.0/8'"},
    {"id": "4", "c_numv": "'NaN'", "c_real": "'NaN'", "c_dbl": "'NaN'", "c_tstz": "'2024-03-10 01:59:59 America/New_York'",
     "c_timetz": "'23:59:59.999999+14'", "c_interval": "'-1 mons'", "c_date": "'1970-01-01'", "c_ts": "'1970-01-01 00:00:00.000001'"},
    {"id": "5", "c_numv": "'Infinity'", "c_real": "'Infinity'", "c_dbl": "'Infinity'", "c_tstz": "'2024-03-10 03:00:00 America/New_York'",
     "c_timetz": "'10:00:00-12'", "c_date": "'2000-02-29'"},
    {"id": "6", "c_numv": "'-Infinity'", "c_real": "'-Infinity'", "c_dbl": "'-Infinity'", "c_tstz": "'1900-01-01 00:00:00 Asia/Kathmandu'"},
    {"id": "7", "c_numv": "0.000001", "c_real": "'-0'", "c_dbl": "'-0'", "c_tstz": "'2030-06-01 12:00:00+05:45'", "c_interval": "'0'"},
    {"id": "8", "c_numv": "12345.6", "c_real": "1.4e-45", "c_dbl": "5e-324", "c_tstz": "'2030-06-01 12:00:00-12:00'", "c_interval": "'-3 days -04:00:00'"},
]  # fmt: skip
# Inserted after the snapshot, each with one value PostgreSQL holds and Iceberg cannot: quarantined.
REFUSED_ROWS = [
    {"id": "90", "c_time": "'24:00:00'"},
    {"id": "91", "c_date": "'infinity'"},
    {"id": "92", "c_ts": "'-infinity'"},
    {"id": "93", "c_date": "'0044-03-15 BC'"},
    {"id": "94", "c_tstz": "'infinity'"},
]


def insert_typ(row: dict[str, str]) -> str:
    cols = [c for c in row if c in COLUMNS]
    return f"INSERT INTO typ ({', '.join(cols)}) VALUES ({', '.join(row[c] for c in cols)})"


def big_text(seed: int, blocks: int = 400) -> str:
    """Incompressible text of 32 x ``blocks`` characters (TOASTed out of line, unlike repeat('x', n))."""
    return f"(SELECT string_agg(md5('{seed}-' || j), '') FROM generate_series(1, {blocks}) j)"


def run_sql(engine: Any, *statements: str) -> None:
    """Run ``statements`` in one transaction, as written (no parameters: a '%' is a modulo)."""
    with engine.begin() as c:
        cursor = c.connection.dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)


# ------------------------------------------------------------------ reading both sides

PG_SELECT = {
    "c_money": "c_money::numeric",
    "c_timetz": "c_timetz::text",
    "c_uuid": "c_uuid::text",
    "c_json": "c_json::text",
    "c_jsonb": "c_jsonb::text",
    "c_enum": "c_enum::text",
    # Debezium's MicroDuration: years of 365.25 days, months of 30.4375 days, then days and the time.
    "c_interval": "(extract(year from c_interval) * 31557600000000 + extract(month from c_interval) * 2629800000000"
    " + extract(day from c_interval) * 86400000000"
    " + (extract(hour from c_interval) * 3600 + extract(minute from c_interval) * 60 + extract(second from c_interval)) * 1000000)::bigint",
}


def pg_rows(engine: Any, table: str, columns: list[str], exclude: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    with engine.connect() as c:
        c.exec_driver_sql("SET TIME ZONE 'UTC'")
        select = ", ".join(f"{PG_SELECT.get(col, col)} AS {col}" for col in columns)
        # Rows left out are the quarantined ones (whose values Python cannot even hold, like BC dates).
        where = f" WHERE id NOT IN ({', '.join(map(str, sorted(exclude)))})" if exclude else ""
        rows = [dict(zip(columns, r, strict=True)) for r in c.exec_driver_sql(f"SELECT {select} FROM {table}{where}").fetchall()]
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEYS[table]))


def lake_rows(catalog: Any, table: str, columns: list[str]) -> list[dict[str, Any]] | None:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        rows = catalog.load_table(f"cdc.{table}").scan().to_arrow().to_pylist()
    except NoSuchTableError:
        return None
    return sorted(({c: r.get(c) for c in columns} for r in rows), key=lambda r: tuple(str(r[k]) for k in KEYS[table]))


def expected_in_lake(column: str, value: Any) -> Any:
    """A PostgreSQL value as the documented mapping lands it (the documented exceptions applied)."""
    if value is None:
        return None
    if column == "c_numv" and isinstance(value, D) and not value.is_finite():
        return None  # decimal.handling.mode=precise: Debezium sends NaN and the infinities as NULL
    if column == "c_int2d" and isinstance(value, list) and any(isinstance(v, list) for v in value):
        return [None] * len(value)  # Debezium flattens nothing: a 2-D array arrives as NULL elements
    if column == "c_timetz":
        return timetz_as_debezium(value)
    if isinstance(value, memoryview):
        return bytes(value)
    if column in REAL_COLUMNS and isinstance(value, float):
        return struct.unpack("<f", struct.pack("<f", value))[0]  # the driver reads a real as the nearest double
    return value


REAL_COLUMNS = {"c_real", "r"}


def timetz_as_debezium(text: str) -> str:
    """``timetz`` text as Debezium's ZonedTime sends it: the time in UTC, trailing zeros of the fraction
    dropped, ``Z`` (24:00 wraps to 00:00)."""
    m = re.fullmatch(r"(\d\d):(\d\d):(\d\d)(?:\.(\d+))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?", text)
    assert m, text
    micros = ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * 1_000_000 + int((m[4] or "").ljust(6, "0"))
    offset = (int(m[6]) * 3600 + int(m[7] or 0) * 60 + int(m[8] or 0)) * (1 if m[5] == "+" else -1) * 1_000_000
    utc = (micros - offset) % (86_400 * 1_000_000)
    seconds, fraction = divmod(utc, 1_000_000)
    out = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return out + (f".{fraction:06d}".rstrip("0") if fraction else "") + "Z"


def comparable(value: Any) -> Any:
    """One spelling per value: NaN, -0.0, decimals of any scale, aware datetimes as instants."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, D):
        return format(value.normalize(), "f") if value.is_finite() else str(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(engine: Any, catalog: Any, table: str, columns: list[str], exclude: set[int]) -> list[str]:
    want = [{c: comparable(expected_in_lake(c, v)) for c, v in r.items()} for r in pg_rows(engine, table, columns, exclude)]
    got_rows = lake_rows(catalog, table, columns)
    if got_rows is None:
        return [f"{table}: no table yet"]
    got = [{c: comparable(v) for c, v in r.items()} for r in got_rows]
    out = []
    if len(want) != len(got) or [tuple(r[k] for k in KEYS[table]) for r in want] != [tuple(r[k] for k in KEYS[table]) for r in got]:
        out.append(f"{table}: keys differ: PostgreSQL {[tuple(r[k] for k in KEYS[table]) for r in want]} lake {[tuple(r[k] for k in KEYS[table]) for r in got]}")
        return out
    for w, g in zip(want, got, strict=True):
        for c in columns:
            if w[c] != g[c]:
                out.append(f"{table} {[w[k] for k in KEYS[table]]} {c}: PostgreSQL {str(w[c])[:120]!r} lake {str(g[c])[:120]!r}")
    return out


class Lake:
    def __init__(self, root: Path, topics: dict[str, str], bootstrap: str) -> None:
        from icefield.catalog import open_catalog
        from icefield.config import load_project

        (root / "pipelines").mkdir(parents=True)
        (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "types", "batch_size": 7}))
        for t in TABLES:
            pipe = {
                "name": f"{t}_cdc",
                "source": {"type": "debezium", "topic": topics[f"public.{t}"], "bootstrap_servers": bootstrap, "max_wait_seconds": 1},
                "target": {"table": f"cdc.{t}", "keys": KEYS[t]},
            }
            (root / "pipelines" / f"{t}_cdc.yaml").write_text(yaml.safe_dump(pipe))
        self.root = root
        self.project = load_project(root, env={})
        self.catalog = open_catalog(self.project)
        self.results: list[Any] = []

    def run_all(self) -> None:
        from icefield.errors import SourceError
        from icefield.pipeline import run_pipeline

        for t in TABLES:
            try:
                result = run_pipeline(self.project, f"{t}_cdc", self.catalog)
            except SourceError as e:  # the connector creates a topic with its first event
                if "does not exist" in str(e):
                    continue
                raise
            assert result.status == "success" and result.pending is None, result.to_dict()
            assert result.conserved, result.to_dict()
            self.results.append(result)

    def converge(self, engine: Any, columns: dict[str, list[str]], exclude: dict[str, set[int]], timeout: float = 180.0) -> None:
        """Run the pipelines until every table equals PostgreSQL (events arrive asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            self.run_all()
            diff = [d for t in TABLES for d in differences(engine, self.catalog, t, columns[t], exclude.get(t, set()))]
            if not diff:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout:.0f}s the lake differs from PostgreSQL:\n" + "\n".join(diff[:40]))
            time.sleep(2.0)

    def quarantined(self, table: str) -> list[dict[str, Any]]:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(f"cdc.{table}__quarantine").scan().to_arrow().to_pylist()
        except NoSuchTableError:
            return []

    def sql(self, query: str) -> list[dict[str, Any]]:
        """``icefield sql --format json`` run as a user runs it."""
        out = subprocess.run(
            [sys.executable, "-m", "icefield.cli", "--project", str(self.root), "sql", "--format", "json", query],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)["rows"]
        return rows


def as_json(value: Any) -> Any:
    """A value as ``icefield sql --format json`` writes it."""
    from icefield.cli.output import _json_default

    text = json.dumps(value, default=_json_default, ensure_ascii=False)
    return json.loads(text)


def same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ------------------------------------------------------------------ the test


def test_every_postgresql_type_lands_as_postgresql_has_it(pg_url: str, debezium_capture: Any, kafka_server: Any, tmp_path: Path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    run_sql(engine, *[s for s in DDL.split(";") if s.strip()])
    run_sql(
        engine,
        *[insert_typ(r) for r in EDGE_ROWS],
        # Ordinary rows, and one with a large TOASTed text that later updates leave unchanged.
        "INSERT INTO typ (id, c_int, c_numv, c_real, c_text, c_date, c_tstz, c_textarr) SELECT i, i * 7, i / 8.0, i * 0.5, 'row ' || i,"
        " date '2020-01-01' + i, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour', ARRAY['x' || i] FROM generate_series(10, 60) i",
        f"INSERT INTO typ (id, c_int, c_text) VALUES (70, 1, {big_text(70, 700)})",
        "INSERT INTO comp SELECT i % 5, 'k' || (i % 3), date '2024-01-01' + i, 'v' || i FROM generate_series(1, 30) i",
        f"INSERT INTO toast SELECT i, 't' || i, {big_text(1)}, ARRAY[{big_text(2, 200)}],"
        " (SELECT array_agg((j * 7919 + i) % 2000000000) FROM generate_series(1, 3000) j),"
        f" decode({big_text(3, 300)}, 'hex') FROM generate_series(1, 5) i",
        "INSERT INTO nv VALUES (1, 1.5, 3.4028235e38), (2, 2.25, 'NaN'), (3, NULL, -3.4028235e38)",
        "INSERT INTO trunc SELECT i, 'v' || i FROM generate_series(1, 20) i",
    )
    topics = debezium_capture(pg_url, [f"public.{t}" for t in TABLES])
    lake = Lake(tmp_path / "proj", topics, kafka_server.bootstrap_servers)
    columns = {"typ": list(COLUMNS), "comp": ["a", "b", "c", "v"], "toast": ["id", "t", "big", "arr", "iarr", "bin"], "nv": ["id", "n", "r"], "trunc": ["id", "v"]}
    refused = {int(r["id"]) for r in REFUSED_ROWS}
    unfit = {7, 8}
    exclude = {"typ": refused, "nv": unfit}

    lake.converge(engine, columns, exclude)  # the snapshot

    run_sql(
        engine,
        *[insert_typ(r) for r in REFUSED_ROWS],
        insert_typ({**EDGE_ROWS[2], "id": "100"}),
        "UPDATE typ SET c_int = c_int + 1, c_bool = NOT coalesce(c_bool, false) WHERE id BETWEEN 10 AND 20",
        "UPDATE typ SET c_int = 2 WHERE id = 70",  # leaves the TOASTed c_text unchanged
        "UPDATE typ SET id = 1000 WHERE id = 3",  # a primary-key update
        "UPDATE typ SET id = id + 10000 WHERE id BETWEEN 30 AND 35",
        "DELETE FROM typ WHERE id IN (40, 41, 42)",
        "UPDATE comp SET b = 'moved' WHERE a = 1 AND b = 'k1'",
        "UPDATE comp SET c = c + 100 WHERE a = 2",
        "DELETE FROM comp WHERE a = 3 AND b = 'k0'",
        "INSERT INTO comp VALUES (9, 'ü', '0001-01-01', 'far'), (9, '', '9999-12-31', NULL)",
        "UPDATE toast SET t = 'upd' WHERE id <= 2",
        "UPDATE toast SET id = 100 WHERE id = 3",
        "UPDATE toast SET t = 'again' WHERE id = 100",
        "DELETE FROM toast WHERE id = 4",
        "INSERT INTO nv VALUES (4, 0.000001, 1.5), (5, 12345.6, NULL), (6, -123.456789012345678, 0)",
        "INSERT INTO nv VALUES (7, 3.14159265358979323846264338327950288, 1), (8, 123456789012345678901.5, 1)",
        "TRUNCATE trunc",
        "INSERT INTO trunc VALUES (7000, 'after the truncate')",
    )
    lake.converge(engine, columns, exclude)

    bad = {t: lake.quarantined(t) for t in ("typ", "nv")}
    reasons = {json.loads(r["raw"])["payload"]["after"]["id"]: r["reason"] for r in bad["typ"]}
    assert set(reasons) == refused, "each row with a value Iceberg cannot hold is in the quarantine, with its raw event"
    assert "[00:00, 24:00)" in reasons[90] and "years 1-9999" in reasons[91] and "years 1-9999" in reasons[93]
    unfit_reasons = {json.loads(r["raw"])["payload"]["after"]["id"]: r["reason"] for r in bad["nv"]}
    assert set(unfit_reasons) == unfit and "decimal places" in unfit_reasons[7] and "integer digits" in unfit_reasons[8]
    assert str(lake.catalog.load_table("cdc.nv").schema().find_field("n").field_type) == "decimal(38, 18)"

    run_sql(
        engine,
        "ALTER TABLE typ ADD COLUMN c_added text DEFAULT 'dflt'",
        "ALTER TABLE typ ADD COLUMN c_added_int integer NOT NULL DEFAULT 42",
        "INSERT INTO typ (id, c_int, c_added, c_added_int) VALUES (200, 1, 'mine', 7)",
        "UPDATE typ SET c_int = 3 WHERE id = 50",
    )
    columns["typ"] = [*COLUMNS, "c_added", "c_added_int"]
    lake.converge(engine, columns, exclude)
    table = lake.catalog.load_table("cdc.typ")
    assert "_cdc_defaults" not in table.schema().column_names and "_cdc_unchanged" not in table.schema().column_names

    # The same tables through icefield sql (DuckDB) as through pyiceberg.
    for t in TABLES:
        keys = ", ".join(KEYS[t])
        via_sql = lake.sql(f"select {', '.join(columns[t])} from cdc.{t} order by {keys}")
        via_pyiceberg = [as_json(r) for r in sorted(lake_rows(lake.catalog, t, columns[t]) or [], key=lambda r: tuple(r[k] for k in KEYS[t]))]
        assert len(via_sql) == len(via_pyiceberg)
        for s, p in zip(via_sql, via_pyiceberg, strict=True):
            assert same_json(s, p), f"{t}: icefield sql {s} != pyiceberg {p}"
    engine.dispose()


# ------------------------------------------------------------------ other connector settings

MODES_DDL = (
    "CREATE TABLE modes (id integer PRIMARY KEY, amount numeric(10,2), n numeric, d date, t time(3), ts timestamp(3),"
    " tstz timestamptz, i interval)"
)
MODES_ROWS = (
    "INSERT INTO modes VALUES (1, 12.50, 0.000001, '2000-02-29', '23:59:59.999', '1999-12-31 23:59:59.999', '2024-03-10 01:59:59 America/New_York', '1 year 2 mons 3 days 04:05:06.789'),"
    " (2, -0.01, 12345.6, '0001-01-01', '00:00:00', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '-1 mons'),"
    " (3, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL)"
)
DECLARED = {"amount": "numeric(10,2)", "n": "numeric", "d": "date", "t": "time(3)", "ts": "timestamp(3)", "tstz": "timestamptz", "i": "interval"}
D1 = {"amount": D("12.50"), "n": D("0.000001"), "d": dt.date(2000, 2, 29), "t": dt.time(23, 59, 59, 999000), "ts": dt.datetime(1999, 12, 31, 23, 59, 59, 999000),
      "tstz": dt.datetime(2024, 3, 10, 6, 59, 59, tzinfo=dt.UTC)}  # fmt: skip
D2 = {"amount": D("-0.01"), "n": D("12345.6"), "d": dt.date(1, 1, 1), "t": dt.time(0, 0), "ts": dt.datetime(1, 1, 1), "tstz": dt.datetime(1, 1, 1, tzinfo=dt.UTC)}
INTERVAL_1 = 37_091_106_789_000  # 1 year 2 mons 3 days 04:05:06.789 with the connector's 30.4375-day months


@pytest.mark.parametrize(
    ("config", "source", "expected", "quarantined"),
    [
        pytest.param(
            {"decimal.handling.mode": "string", "time.precision.mode": "isostring", "interval.handling.mode": "string"},
            {},
            {1: {**D1, "amount": "12.50", "n": "0.000001", "i": "P1Y2M3DT4H5M6.789S"}, 2: {**D2, "amount": "-0.01", "n": "12345.6", "i": "P0Y-1M0DT0H0M0S"},
             3: {"amount": None, "n": "NAN", "d": None, "t": None, "ts": None, "tstz": None, "i": None}},
            set(),
            id="schema, string decimals, isostring times, string intervals",
        ),
        pytest.param(
            {"value.converter": "org.apache.kafka.connect.json.JsonConverter", "value.converter.schemas.enable": "false"},
            {"postgres_types": DECLARED},
            {1: {**D1, "i": INTERVAL_1}, 2: {**D2, "i": -2_629_800_000_000}, 3: dict.fromkeys(D1) | {"i": None}},
            set(),
            id="no schema, precise decimals, declared types",
        ),
        pytest.param(
            {"value.converter": "org.apache.kafka.connect.json.JsonConverter", "value.converter.schemas.enable": "false",
             "decimal.handling.mode": "string", "time.precision.mode": "connect"},
            {"postgres_types": DECLARED, "connector": {"decimal.handling.mode": "string", "time.precision.mode": "connect"}},
            {1: {**D1, "i": INTERVAL_1}, 2: {**D2, "i": -2_629_800_000_000}},
            {3},  # numeric NaN, sent as 'NAN' text, cannot be a decimal
            id="no schema, string decimals, connect times, declared types",
        ),
    ],
)  # fmt: skip
def test_connector_settings_are_respected_with_and_without_the_schema(
    pg_url: str, debezium_capture: Any, kafka_server: Any, tmp_path: Path, config: dict[str, str], source: dict[str, Any], expected: dict[int, dict[str, Any]], quarantined: set[int]
) -> None:
    import sqlalchemy as sa

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.errors import SourceError
    from icefield.pipeline import run_pipeline

    engine = sa.create_engine(pg_url)
    run_sql(engine, MODES_DDL, MODES_ROWS)
    topics = debezium_capture(pg_url, ["public.modes"], **config)
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "modes"}))
    pipe = {
        "name": "modes_cdc",
        "source": {"type": "debezium", "topic": topics["public.modes"], "bootstrap_servers": kafka_server.bootstrap_servers, "max_wait_seconds": 1, **source},
        "target": {"table": "cdc.modes", "keys": ["id"]},
    }
    (root / "pipelines" / "modes_cdc.yaml").write_text(yaml.safe_dump(pipe))
    project = load_project(root, env={})
    catalog = open_catalog(project)
    deadline = time.monotonic() + 120
    landed: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            result = run_pipeline(project, "modes_cdc", catalog)
            assert result.status == "success" and result.conserved, result.to_dict()
        except SourceError as e:
            if "does not exist" not in str(e):
                raise
        rows = lake_rows(catalog, "modes", ["id", *DECLARED]) or []
        landed = {r.pop("id"): r for r in rows}
        if len(landed) + len(quarantined) >= 3:
            break
        time.sleep(1.0)
    assert landed == expected
    from pyiceberg.exceptions import NoSuchTableError

    try:
        bad = catalog.load_table("cdc.modes__quarantine").scan().to_arrow().to_pylist()
    except NoSuchTableError:
        bad = []
    assert {json.loads(r["raw"])["after"]["id"] for r in bad} == quarantined
    engine.dispose()
