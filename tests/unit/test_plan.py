"""The project plan (issue 15, part 2): `icefield run` runs a model after the pipelines and models whose
tables it reads, whatever their names; a failed node skips only the nodes that read what it writes
(reported as ``skipped`` with the reason, in the one JSON document); a cycle is refused before anything
runs. Before the plan, models ran in name order after every pipeline and the first failure stopped the
whole run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, cli


def _project(root: Path, pipelines: dict[str, dict[str, Any]], models: dict[str, str]) -> Path:
    """A project with files pipelines (each reads ``data/<name>/*.jsonl``) and SQL models."""
    (root / "pipelines").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "plan"}), encoding="utf-8")
    for name, body in pipelines.items():
        (root / "data" / name).mkdir(parents=True)
        pipe = {"name": name, "source": {"type": "files", "path": f"data/{name}/*.jsonl"}, **body}
        (root / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump(pipe, sort_keys=False), encoding="utf-8")
    for name, sql in models.items():
        (root / "models" / f"{name}.sql").write_text(sql, encoding="utf-8")
    return root


def _drop(root: Path, pipeline: str, file: str, rows: list[dict[str, Any]]) -> None:
    (root / "data" / pipeline / file).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cli(root: Path, *args: str) -> tuple[int, Any, str]:
    """``icefield --json <args>``: exit code, the one JSON document on stdout, stderr."""
    res = CliRunner().invoke(cli, ["--project", str(root), "--json", *args])
    (doc,) = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]  # exactly one document
    return res.exit_code, doc, res.stderr


def _sql(root: Path, query: str) -> list[dict[str, Any]]:
    code, doc, err = _cli(root, "sql", query)
    assert code == EXIT_OK, (doc, err)
    return list(doc["rows"])


# Model names chosen so that the alphabet runs the reader first: a_report reads z_daily's table.
DAILY = """\
-- target: marts.daily
-- mode: overwrite
select day, cast(sum(amount) as bigint) as amount from raw.sales group by day
"""
REPORT = """\
-- target: marts.report
-- mode: overwrite
-- The CTE is named like the table it reads, spelled in another case; neither may confuse the plan.
with daily as (select * from MARTS.Daily)
select count(*) as days, cast(sum(amount) as bigint) as amount from daily
"""


def _sales(tmp_path: Path) -> Path:
    return _project(tmp_path / "p", {"sales": {"target": {"table": "raw.sales"}}}, {"a_report": REPORT, "z_daily": DAILY})


def test_a_model_reading_another_models_table_runs_after_it_whatever_the_names(tmp_path: Path) -> None:
    root = _sales(tmp_path)
    _drop(root, "sales", "1.jsonl", [{"day": 1, "amount": 10}, {"day": 2, "amount": 5}])
    code, doc, err = _cli(root, "run")
    assert code == EXIT_OK, (doc, err)
    assert [r["pipeline"] for r in doc["results"]] == ["sales", "model.z_daily", "model.a_report"]
    assert _sql(root, "select days, amount from marts.report") == [{"days": 2, "amount": 15}]

    # New sales reach the report in the same run: it reads the daily table this run rebuilt.
    _drop(root, "sales", "2.jsonl", [{"day": 3, "amount": 7}])
    code, doc, err = _cli(root, "run")
    assert code == EXIT_OK, (doc, err)
    assert _sql(root, "select days, amount from marts.report") == [{"days": 3, "amount": 22}]
    code, doc, err = _cli(root, "run")
    assert code == EXIT_OK and all(r["snapshots"] == [] for r in doc["results"]), "every model was up to date"


def test_named_nodes_run_in_plan_order_and_only_they(tmp_path: Path) -> None:
    root = _sales(tmp_path)
    _drop(root, "sales", "1.jsonl", [{"day": 1, "amount": 10}])
    assert _cli(root, "run", "sales")[0] == EXIT_OK
    code, doc, err = _cli(root, "run", "a_report", "z_daily")  # given in the alphabet's (wrong) order
    assert code == EXIT_OK, (doc, err)
    assert [r["pipeline"] for r in doc["results"]] == ["model.z_daily", "model.a_report"]
    assert _sql(root, "select days, amount from marts.report") == [{"days": 1, "amount": 10}]


def test_plan_shows_the_order_and_what_each_node_waits_for(tmp_path: Path) -> None:
    root = _sales(tmp_path)
    code, doc, err = _cli(root, "plan")
    assert code == EXIT_OK, (doc, err)
    assert [(n["node"], n["upstream"]) for n in doc["nodes"]] == [
        ("pipeline sales", []),
        ("model z_daily", ["pipeline sales"]),
        ("model a_report", ["model z_daily"]),
    ]
    assert doc["nodes"][2]["via"] == [{"node": "model z_daily", "table": "marts.daily"}]
    assert [n["node"] for n in _cli(root, "plan", "--no-models")[1]["nodes"]] == ["pipeline sales"]
    res = CliRunner().invoke(cli, ["--project", str(root), "plan"])
    assert res.exit_code == EXIT_OK and "model a_report" in res.stdout and "model z_daily (marts.daily)" in res.stdout
    assert not (root / ".icefield" / "warehouse").exists() or not list((root / ".icefield" / "warehouse").rglob("*.parquet"))


def test_a_failed_pipeline_skips_only_its_dependents(tmp_path: Path) -> None:
    root = _project(
        tmp_path / "p",
        {
            # Fails on its first batch: it partitions by a column the data lacks.
            "bad": {"target": {"table": "raw.bad", "partition_by": ["day(no_such_column)"]}},
            "good": {"target": {"table": "raw.good"}},
        },
        {
            "a_from_bad": "-- target: marts.from_bad\n-- mode: overwrite\nselect count(*) as n from raw.bad\n",
            "b_from_good": "-- target: marts.from_good\n-- mode: overwrite\nselect count(*) as n from raw.good\n",
            "c_chain": "-- target: marts.chain\n-- mode: overwrite\nselect n from marts.from_bad\n",
        },
    )
    _drop(root, "bad", "1.jsonl", [{"id": 1}])
    _drop(root, "good", "1.jsonl", [{"id": 1}, {"id": 2}])
    code, doc, err = _cli(root, "run")
    assert code == EXIT_FAILED, (doc, err)
    assert doc["status"] == "failed" and doc["error"].startswith("pipeline bad: ") and "no_such_column" in doc["error"]
    results = {r["pipeline"]: r for r in doc["results"]}
    assert list(results) == ["bad", "good", "model.a_from_bad", "model.b_from_good", "model.c_chain"], "every node is listed"
    assert {name: r["status"] for name, r in results.items()} == {
        "bad": "failed",
        "good": "success",
        "model.a_from_bad": "skipped",
        "model.b_from_good": "success",
        "model.c_chain": "skipped",
    }
    assert results["model.a_from_bad"]["reason"] == "it reads raw.bad, which pipeline bad writes, and pipeline bad failed"
    chain = results["model.c_chain"]["reason"]
    assert "marts.from_bad" in chain and "model a_from_bad" in chain and "pipeline bad failed" in chain
    assert (results["good"]["rows_committed"], results["model.b_from_good"]["rows_committed"]) == (2, 1)
    assert _sql(root, "select n from marts.from_good") == [{"n": 2}]
    code, tables, _ = _cli(root, "tables")
    assert not {"marts.from_bad", "marts.chain"} & {t["table"] for t in tables["tables"]}, "the skipped models wrote nothing"

    # The text output says which were skipped and why.
    res = CliRunner().invoke(cli, ["--project", str(root), "run"])
    assert res.exit_code == EXIT_FAILED
    text = " ".join(res.stdout.split())
    assert "model.a_from_bad skipped: it reads raw.bad, which pipeline bad writes, and pipeline bad failed" in text
    assert "error: pipeline bad:" in " ".join(res.stderr.split())


def test_the_exit_code_is_the_first_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two independent pipelines fail: a missing secret (a configuration error, exit 2) first, then a
    failed batch (exit 1). Both are reported; the exit code is the first's."""
    root = _project(
        tmp_path / "p",
        {"b_broken": {"target": {"table": "raw.b", "partition_by": ["day(no_such_column)"]}}},
        {},
    )
    (root / "pipelines" / "a_secret.yaml").write_text(
        "name: a_secret\nsource: {type: sql, url: '${env:ICEFIELD_TEST_NO_SUCH_VAR}', table: t, cursor: c}\ntarget: {table: raw.a}\n",
        encoding="utf-8",
    )
    monkeypatch.delenv("ICEFIELD_TEST_NO_SUCH_VAR", raising=False)
    _drop(root, "b_broken", "1.jsonl", [{"id": 1}])
    code, doc, err = _cli(root, "run")
    assert code == EXIT_USAGE, (doc, err)
    assert [(e["node"], e["type"]) for e in doc["errors"]] == [("pipeline a_secret", "SecretError"), ("pipeline b_broken", "SchemaError")]
    assert doc["type"] == "SecretError" and "ICEFIELD_TEST_NO_SUCH_VAR" in doc["error"]
    assert [r["status"] for r in doc["results"]] == ["failed", "failed"]


CYCLE = {
    "a": "-- target: marts.a\n-- mode: overwrite\nselect * from marts.b\n",
    "b": "-- target: marts.b\n-- mode: overwrite\nselect * from marts.a\n",
}


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_cycle_is_refused_before_anything_runs(tmp_path: Path, command: str) -> None:
    root = _project(tmp_path / "p", {"events": {"target": {"table": "raw.events"}}}, CYCLE)
    _drop(root, "events", "1.jsonl", [{"id": 1}])
    code, doc, err = _cli(root, command)
    assert code == EXIT_USAGE, (doc, err)
    assert "cycle" in doc["error"], doc
    assert "model a writes marts.a, which model b reads" in doc["error"] and "model b writes marts.b, which model a reads" in doc["error"]
    assert not list(root.rglob("*.parquet")), "nothing ran, not even the independent pipeline"


# ---------------------------------------------------------------------------------------------- the graph


def _plan(tmp_path: Path, pipelines: dict[str, dict[str, Any]], models: dict[str, str], **kw: Any) -> list[tuple[str, list[str]]]:
    from icefield.config import load_project
    from icefield.pipeline.plan import build_plan

    project = load_project(_project(tmp_path / "p", pipelines, models), env={})
    return [(n.id, list(n.upstream)) for n in build_plan(project, **kw)]


def _model(target: str, sql: str) -> str:
    return f"-- target: {target}\n-- mode: overwrite\n{sql}\n"


def test_without_dependencies_pipelines_then_models_by_name(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        {"zz": {"target": {"table": "raw.zz"}}, "aa": {"target": {"table": "raw.aa"}}},
        {"m2": _model("marts.m2", "select 1 as x"), "m1": _model("marts.m1", "select 2 as x")},
    )
    assert plan == [("pipeline aa", []), ("pipeline zz", []), ("model m1", []), ("model m2", [])]


def test_a_pipeline_whose_gate_reads_a_table_runs_after_its_writer(tmp_path: Path) -> None:
    """A ``references`` gate (or a ``sql`` gate) reads another table: the pipeline runs after whatever
    writes it, a model included, even against the alphabet and the pipelines-first rule."""
    plan = _plan(
        tmp_path,
        {
            "a_orders": {"target": {"table": "shop.orders"}, "gates": [{"references": {"column": "c", "to": "shop.customers.id"}}]},
            "b_customers": {"target": {"table": "shop.customers"}},
            "c_items": {
                "target": {"table": "shop.items"},
                "gates": [{"sql": {"query": "select * from {table} i where not exists (select 1 from marts.known k where k.id = i.id)"}}],
            },
        },
        {"known": _model("marts.known", "select id from shop.customers")},
    )
    assert plan == [
        ("pipeline b_customers", []),
        ("pipeline a_orders", ["pipeline b_customers"]),
        ("model known", ["pipeline b_customers"]),
        ("pipeline c_items", ["model known"]),
    ]


def test_names_match_as_the_query_engine_matches_them(tmp_path: Path) -> None:
    """Iceberg names are case-sensitive, DuckDB's are not: a model reads the table it spells exactly when
    the project writes two that differ only in case, and waits for both when it spells neither; a CTE is
    not a table, whatever its name."""
    plan = _plan(
        tmp_path,
        {"upper": {"target": {"table": "raw.Events"}}, "lower": {"target": {"table": "raw.events"}}, "m": {"target": {"table": "main.orders"}}},
        {
            "exact": _model("marts.exact", 'select * from "raw"."Events"'),
            "folded": _model("marts.folded", "select * from RAW.EVENTS"),
            "cte": _model("marts.cte", "with ORDERS as (select 1 as x) select * from orders"),
            "bare": _model("marts.bare", "select * from Orders"),
            "self": _model("marts.self", "select * from marts.self union all select 1"),
        },
    )
    upstream = dict(plan)
    assert upstream["model exact"] == ["pipeline upper"]
    assert sorted(upstream["model folded"]) == ["pipeline lower", "pipeline upper"]
    assert upstream["model cte"] == [], "a CTE named like a table of the project is not that table"
    assert upstream["model bare"] == ["pipeline m"], "an unqualified name reads namespace main"
    assert upstream["model self"] == [], "a model reading its own table waits for nobody"


def test_a_cycle_through_a_gate_is_named(tmp_path: Path) -> None:
    from icefield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cycle.*pipeline p writes raw\.p, which model m reads.*model m writes marts\.m, which pipeline p reads"):
        _plan(
            tmp_path,
            {"p": {"target": {"table": "raw.p"}, "gates": [{"references": {"column": "id", "to": "marts.m.id"}}]}},
            {"m": _model("marts.m", "select id from raw.p")},
        )


def test_run_plan_reports_every_node_to_on_result(tmp_path: Path) -> None:
    """The library entry point Airflow and a service use: every node's result reaches ``on_result`` in
    plan order, skipped ones included, and the partial result holds the failure."""
    from icefield.config import load_project
    from icefield.pipeline import build_plan, run_plan

    root = _project(
        tmp_path / "p",
        {"bad": {"target": {"table": "raw.bad", "partition_by": ["day(nope)"]}}},
        {"m": _model("marts.m", "select * from raw.bad")},
    )
    _drop(root, "bad", "1.jsonl", [{"id": 1}])
    project = load_project(root, env={})
    seen: list[tuple[str, str]] = []
    done = run_plan(project, build_plan(project), on_result=lambda node, r: seen.append((node.id, r.status)))
    assert seen == [("pipeline bad", "failed"), ("model m", "skipped")]
    assert done.status == "failed" and done.exit_code == EXIT_FAILED and done.failures[0][0] == "pipeline bad"


@pytest.mark.parametrize("wrapped", [True, False], ids=["wrapped", "raw"])
def test_a_sigint_that_duckdb_turned_into_a_runtime_error_ends_the_run_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    """A real SIGINT inside a DuckDB query ends it with ``RuntimeError("Query interrupted")``, with no
    ``KeyboardInterrupt`` in its chain: the run said "failed" (exit 1) when Ctrl-C landed in a gate's query (the
    Ctrl-C test failed so under load). The run notes the signal itself: exit 130, the rest skipped."""
    import os
    import signal
    import threading

    import duckdb

    from icefield.cli import EXIT_INTERRUPTED
    from icefield.errors import TerminalError
    from icefield.write import TableWriter

    root = _project(tmp_path / "p", {"a": {"target": {"table": "raw.a"}}, "b": {"target": {"table": "raw.b"}}}, {})
    _drop(root, "a", "1.jsonl", [{"id": 1}])
    _drop(root, "b", "1.jsonl", [{"id": 2}])

    def slow_query(self: Any, *args: Any, **kwargs: Any) -> Any:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            duckdb.sql("select count(*) from range(300000000) t(a) where a * 7 % 13 = 5").fetchall()
        except RuntimeError as e:
            assert "interrupted" in str(e).lower(), e
            if wrapped:
                raise TerminalError(f"checking the batch failed: {e}") from None
            raise
        raise AssertionError("the query ran to its end: no SIGINT arrived")

    monkeypatch.setattr(TableWriter, "commit", slow_query)
    # The handler a program has when Ctrl-C reaches it (an earlier test in this process may have left another).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, doc, err = _cli(root, "run")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the run gives the handler back"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == EXIT_INTERRUPTED, (doc, err)
    assert doc["status"] == "interrupted" and doc["type"] == "InterruptedRunError"
    assert [r["status"] for r in doc["results"]] == ["failed", "skipped"], "the pipeline after it does not run"


def test_a_sigint_that_pyarrow_turned_into_a_failure_ends_the_run_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT that arrives inside a pyarrow call comes back as ``ArrowCancelled`` ("received signal 2"),
    which the step it interrupted reports as its own failure: the run said "failed", exit 1, and ran the
    next nodes (the Ctrl-C test failed so under load). It is an interruption: exit 130, the rest skipped."""
    import pyarrow as pa

    from icefield.cli import EXIT_INTERRUPTED
    from icefield.errors import TerminalError
    from icefield.write import TableWriter

    root = _project(tmp_path / "p", {"a": {"target": {"table": "raw.a"}}, "b": {"target": {"table": "raw.b"}}}, {})
    _drop(root, "a", "1.jsonl", [{"id": 1}])
    _drop(root, "b", "1.jsonl", [{"id": 2}])

    def cancelled(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            raise pa.lib.ArrowCancelled("Operation cancelled. Detail: received signal 2")
        except pa.lib.ArrowCancelled as e:
            raise TerminalError("writing the batch failed: Operation cancelled") from e

    monkeypatch.setattr(TableWriter, "commit", cancelled)
    code, doc, err = _cli(root, "run")
    assert code == EXIT_INTERRUPTED, (doc, err)
    assert doc["status"] == "interrupted" and doc["type"] == "InterruptedRunError"
    assert [r["status"] for r in doc["results"]] == ["failed", "skipped"], "the pipeline after it does not run"
