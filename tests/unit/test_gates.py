"""Gates on real small Iceberg tables: every kind passes and fails with the value it measured, severities,
gates that cannot be evaluated, the snapshot they look at, the config that declares them, and (Hypothesis)
the measures of random tables with nulls and quotes against a Python oracle."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from icefield.catalog import sql_catalog
from icefield.config.gates import parse_gates
from icefield.config.models import PipelineConfig, TargetConfig
from icefield.engines.local import LocalEngine
from icefield.quality.gates import GateContext, run_gates
from icefield.write import TableWriter

NOW = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Any]:
    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    yield cat
    cat.engine.dispose()


def write(catalog: Any, table: str, data: pa.Table, batch: str, mode: str = "append") -> int:
    wr = TableWriter(catalog, TargetConfig(table=table, mode=mode), "p", LocalEngine()).commit(data, batch, None, "run")
    assert wr.snapshot_id is not None
    return wr.snapshot_id


def orders(n: int = 10) -> pa.Table:
    """``n`` orders: the last one names customer 99 (not a customer) and has status 'lost'; two emails are
    null; ``ts`` runs hourly from 2024-01-01 00:00 UTC; amount = id."""
    ids = list(range(1, n + 1))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "customer_id": pa.array([*ids[:-1], 99], pa.int64()),
            "status": ["paid"] * (n - 1) + ["lost"],
            "email": [None, None] + [f"c{i}@x.org" for i in ids[2:]],
            "amount": pa.array([float(i) for i in ids]),
            "ts": pa.array([dt.datetime(2024, 1, 1, i - 1) for i in ids], pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture
def shop(catalog: Any) -> dict[str, int]:
    """shop.orders (10 rows) and shop.customers (customers 1-20); returns their snapshot ids."""
    return {
        "customers": write(catalog, "shop.customers", pa.table({"customer_id": pa.array(range(1, 21), pa.int64())}), "c1"),
        "orders": write(catalog, "shop.orders", orders(), "o1"),
    }


def evaluate(catalog: Any, gates: list[dict[str, Any]], snapshot_id: int | None = None, previous_id: int | None = None) -> list[Any]:
    """Run ``gates`` on shop.orders at ``snapshot_id`` (default: its current snapshot, if any)."""
    table = catalog.load_table("shop.orders")
    current = table.current_snapshot()
    ctx = GateContext(
        catalog=catalog,
        table=table,
        table_name="shop.orders",
        snapshot_id=snapshot_id if snapshot_id is not None else current.snapshot_id if current else None,
        previous_id=previous_id,
        branch="main",
        pipeline="orders",
        run_id="run-1",
        now=NOW,
    )
    return run_gates(parse_gates(gates), ctx)


CASES = [
    ({"row_count": {"min": 1}}, "pass", 10),
    ({"row_count": {"min": 1, "max": 5}}, "fail", 10),
    ({"row_count": {"min": 11}}, "fail", 10),
    ({"null_ratio": {"column": "email", "max": 0.2}}, "pass", 0.2),
    ({"null_ratio": {"column": "email", "max": 0.1}}, "fail", 0.2),
    ({"distinct_ratio": {"column": "id", "min": 1}}, "pass", 1.0),
    ({"distinct_ratio": {"column": "status", "min": 0.5}}, "fail", 0.2),
    ({"distinct_ratio": {"column": ["status", "customer_id"], "min": 1}}, "pass", 1.0),
    ({"distinct_ratio": {"column": "status", "max": 0.1}}, "fail", 0.2),
    ({"accepted_values": {"column": "status", "values": ["paid", "lost"]}}, "pass", 0),
    ({"accepted_values": {"column": "status", "values": ["paid"]}}, "fail", 1),
    ({"accepted_values": {"column": "status", "values": ["paid"], "max": 1}}, "pass", 1),
    ({"accepted_values": {"column": "id", "values": list(range(1, 10))}}, "fail", 1),
    ({"references": {"column": "customer_id", "to": "shop.customers.customer_id"}}, "fail", 1),
    ({"references": {"column": "customer_id", "to": "shop.customers.customer_id", "max": 1}}, "pass", 1),
    ({"references": {"column": "id", "to": "shop.orders.id"}}, "pass", 0),
    ({"freshness": {"column": "ts", "max_age": "12h"}}, "pass", 3 * 3600),
    ({"freshness": {"column": "ts", "max_age": "1h"}}, "fail", 3 * 3600),
    ({"freshness": {"column": "ts", "max_age": 7200}}, "fail", 3 * 3600),
    ({"sql": "select * from {table} where amount < 0"}, "pass", 0),
    ({"sql": "select * from {table} where amount > 9"}, "fail", 1),
    ({"sql": {"query": "select avg(amount) from {table}", "max": 6}}, "pass", 5.5),
    ({"sql": {"query": "select avg(amount) from shop.orders", "min": 6}}, "fail", 5.5),
    (
        {"sql": "select * from {table} o where not exists (select 1 from shop.customers c where c.customer_id = o.customer_id)"},
        "fail",
        1,
    ),
]


@pytest.mark.parametrize(("gate", "status", "value"), CASES, ids=[f"{next(iter(g))}-{i}" for i, (g, _, _) in enumerate(CASES)])
def test_each_gate_kind_passes_and_fails_with_its_measure(catalog, shop, gate, status, value):
    (res,) = evaluate(catalog, [gate])
    assert res.status == status, res.message
    assert res.value == pytest.approx(value)
    assert res.kind == next(iter(gate))
    assert (res.table, res.snapshot_id, res.pipeline, res.run_id, res.checked_at) == ("shop.orders", shop["orders"], "orders", "run-1", NOW)
    assert res.severity == "error" and res.blocking == (status != "pass")


def test_row_count_change_compares_with_the_previous_snapshot(catalog, shop):
    # The table is replaced by 4 rows: the row count dropped 60% against the snapshot before.
    after = write(catalog, "shop.orders", orders(4), "o2", mode="overwrite")
    gates = [
        {"row_count_change": {"max_drop": 0.5}, "name": "halved"},
        {"row_count_change": {"max_drop": 0.7}, "name": "lenient"},
        {"row_count_change": {"max_growth": 0.1}, "name": "growth_only"},
    ]
    halved, lenient, growth = evaluate(catalog, gates, snapshot_id=after, previous_id=shop["orders"])
    assert (halved.status, halved.value) == ("fail", pytest.approx(-0.6))
    assert "dropped by 60%" in halved.message and "10 -> 4" in halved.message
    assert lenient.status == "pass" and growth.status == "pass"
    # Growing: 4 more rows on the 4 left is +100%.
    grown = write(catalog, "shop.orders", orders(4), "o3")
    res = evaluate(catalog, [{"row_count_change": {"max_growth": 0.1}}], snapshot_id=grown, previous_id=after)[0]
    assert (res.status, res.value) == ("fail", pytest.approx(1.0))
    assert "grew by 100%" in res.message
    # Nothing to compare with: passes and says so.
    first = evaluate(catalog, [{"row_count_change": {"max_drop": 0.5}}], previous_id=None)[0]
    assert first.status == "pass" and first.value is None and "no previous rows" in first.message


def test_gates_read_the_snapshot_they_are_given_not_the_current_one(catalog, shop):
    write(catalog, "shop.orders", orders(4), "o2", mode="overwrite")
    (old,) = evaluate(catalog, [{"row_count": {"min": 1}}], snapshot_id=shop["orders"])
    (new,) = evaluate(catalog, [{"row_count": {"min": 1}}])
    assert (old.value, new.value) == (10, 4)


def test_warn_severity_reports_without_blocking(catalog, shop):
    warn, err = evaluate(
        catalog,
        [{"row_count": {"max": 5}, "severity": "warn"}, {"null_ratio": {"column": "email", "max": 0.5}, "severity": "warn", "name": "emails"}],
    )
    assert (warn.status, warn.severity, warn.blocking) == ("warn", "warn", False)
    assert (err.check, err.status) == ("emails", "pass")


def test_gates_that_cannot_be_evaluated_are_errors_and_do_not_hide_the_others(catalog, shop):
    results = evaluate(
        catalog,
        [
            {"null_ratio": {"column": "no_such_column"}},
            {"accepted_values": {"column": "id", "values": ["not-a-number"]}},
            {"row_count": {"min": 1}},
            {"sql": "select * from no_such_table"},
            {"sql": {"query": "select id from {table}", "max": 1}},
            {"references": {"column": "customer_id", "to": "shop.nobody.id"}},
            {"null_ratio": {"column": "email", "max": 0.5}, "severity": "warn"},
        ],
    )
    statuses = [(r.check, r.status) for r in results]
    assert statuses == [
        ("null_ratio(no_such_column)", "error"),
        ("accepted_values(id)", "error"),
        ("row_count", "pass"),
        ("sql", "error"),
        ("sql#2", "error"),
        ("references(customer_id)", "error"),
        ("null_ratio(email)", "pass"),
    ]
    assert "no_such_column" in results[0].message and "email" in results[0].message  # names the columns there are
    assert "one value" in results[4].message
    assert "shop.nobody" in results[5].message
    assert all(r.blocking for r in results if r.status == "error")


def test_an_empty_table_passes_ratio_gates_and_fails_freshness(catalog):
    wr = TableWriter(catalog, TargetConfig(table="shop.orders"), "p", LocalEngine()).commit(orders().slice(0, 0), "o0", None, "run")
    assert wr.snapshot_id is None and catalog.load_table("shop.orders").current_snapshot() is None
    r = evaluate(
        catalog,
        [
            {"row_count": {"min": 1}},
            {"null_ratio": {"column": "email"}},
            {"distinct_ratio": {"column": "id", "min": 1}},
            {"freshness": {"column": "ts", "max_age": "1d"}},
        ],
    )
    assert [(x.status, x.value) for x in r] == [("fail", 0), ("pass", 0), ("pass", None), ("fail", None)]


# ------------------------------------------------------------------ config


def pipeline(gates: Any) -> dict[str, Any]:
    return {"name": "o", "source": {"type": "files", "path": "x/*.csv"}, "target": {"table": "a.b"}, "gates": gates}


def test_gate_config_names_defaults_and_severity():
    pipe = PipelineConfig.model_validate(
        pipeline(
            [
                {"row_count": {"min": 1}},
                {"null_ratio": {"column": "email", "max": 0.1}, "severity": "warn"},
                {"null_ratio": {"column": "email", "max": 0.5}},
                {"sql": "select 1", "name": "custom"},
                {"freshness": {"column": "ts", "max_age": "90m"}},
            ]
        )
    )
    assert [(g.name, g.severity) for g in pipe.gates] == [
        ("row_count", "error"),
        ("null_ratio(email)", "warn"),
        ("null_ratio(email)#2", "error"),
        ("custom", "error"),
        ("freshness(ts)", "error"),
    ]
    assert pipe.gates[4].freshness.seconds == 5400


@pytest.mark.parametrize(
    ("gates", "words"),
    [
        ([{"row_count": {}}], ["row_count needs 'min', 'max'"]),
        ([{"row_count": {"min": 5, "max": 1}}], ["min 5 is above max 1"]),
        ([{"freshness": {"column": "ts", "max_age": "soon"}}], ["max_age", "'soon'"]),
        ([{"null_ratio": {"column": "a", "max": 2}}], ["ratio between 0 and 1", "2"]),
        ([{"references": {"column": "a", "to": "customers"}}], ["namespace.table.column", "'customers'"]),
        ([{"nul_ratio": {"column": "a"}}], ["unknown gate 'nul_ratio'"]),
        ([{"row_count": {"min": 1}, "null_ratio": {"column": "a"}}], ["gates[0] must be a mapping with one gate key"]),
        ([{"row_count": {"min": 1}, "severity": "fatal"}], ["severity", "fatal"]),
        ([{"row_count": {"min": 1}, "name": "x"}, {"sql": "select 1", "name": "x"}], ["['x']", "more than one gate"]),
        ([{"row_count": {"min": 1, "minn": 2}}], ["minn"]),
    ],
)
def test_bad_gate_config_names_the_key_and_the_value(gates, words):
    with pytest.raises(ValidationError) as e:
        PipelineConfig.model_validate(pipeline(gates))
    for w in words:
        assert w in str(e.value)


def test_bad_gate_in_a_pipeline_file_is_a_config_error_naming_file_and_key(make_project):
    from icefield.config import load_project
    from icefield.errors import ConfigError

    root = make_project({"orders": {k: v for k, v in pipeline([{"row_count": {"minimum": 1}}]).items() if k != "name"}})
    with pytest.raises(ConfigError) as e:
        load_project(root, env={})
    msg = str(e.value)
    assert str(root / "pipelines" / "orders.yaml") in msg and "gates.row_count.minimum: unknown key" in msg
    assert "allowed keys here: min, max" in msg


# ------------------------------------------------------------------ property: gates against a Python oracle

ROWS = st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 12)), st.one_of(st.none(), st.sampled_from(["a", "b", "c", "it's"]))), max_size=40)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, accepted=st.lists(st.sampled_from(["a", "b", "c", "it's"]), min_size=1, unique=True))
def test_gate_measures_equal_a_python_oracle(tmp_path_factory, rows, accepted):
    root = tmp_path_factory.mktemp("prop")
    cat = sql_catalog("p", f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").as_uri())
    try:
        keys = [k for k, _ in rows]
        data = pa.table({"k": pa.array(keys, pa.int64()), "s": pa.array([s for _, s in rows], pa.string())})
        TableWriter(cat, TargetConfig(table="shop.orders"), "p", LocalEngine()).commit(data, "b", None, "run")  # may be empty
        write(cat, "shop.customers", pa.table({"customer_id": pa.array(range(0, 10), pa.int64())}), "c")
        results = evaluate(
            cat,
            [
                {"row_count": {"min": 0}},
                {"null_ratio": {"column": "s", "max": 1}},
                {"distinct_ratio": {"column": "k", "min": 0}},
                {"accepted_values": {"column": "s", "values": accepted}},
                {"references": {"column": "k", "to": "shop.customers.customer_id"}},
                {"sql": "select * from {table} where k < 0"},
            ],
        )
        got = {r.kind: r.value for r in results}
        n = len(rows)
        nonnull = [k for k in keys if k is not None]
        assert got["row_count"] == n
        assert got["null_ratio"] == pytest.approx(sum(s is None for _, s in rows) / n if n else 0.0)
        assert got["distinct_ratio"] == (pytest.approx(len(set(nonnull)) / len(nonnull)) if nonnull else None)
        assert got["accepted_values"] == sum(s is not None and s not in accepted for _, s in rows)
        assert got["references"] == sum(k is not None and not 0 <= k < 10 for k in keys)
        assert got["sql"] == sum(k is not None and k < 0 for k in keys)
        assert all(r.status != "error" for r in results)
    finally:
        cat.engine.dispose()
