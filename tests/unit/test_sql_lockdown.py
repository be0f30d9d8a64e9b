"""SQL that users write runs as one read-only query on a locked DuckDB connection (F10, F11 in the probe
findings): ``icefield sql`` could read any file (``/proc/self/environ`` with the secrets, ``/etc/passwd``),
list directories, write files with COPY, ATTACH databases, run several statements, forge a table's data
file and try to install extensions; a ``checks.filter`` was pasted into SQL and ran as several
statements. Now every such attempt is refused (exit 2) or reads nothing, no file is written, the
table's files stay as they were, and ``--unrestricted`` keeps the old behaviour for trusted local use.
Models, ``sql`` gates and filters run under the same lock."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from icefield.cli import EXIT_USAGE, cli
from icefield.errors import ConfigError

CANARY = "CANARY_S3CR3T_9f2"


def _project(root: Path) -> Path:
    """A project with raw.events (2 rows) and a secret in a ``${file:}`` reference's file."""
    res = CliRunner().invoke(cli, ["init", str(root)])
    assert res.exit_code == 0, res.output
    (root / "data" / "events" / "a.jsonl").write_text('{"id": 1, "v": "x"}\n{"id": 2, "v": "y"}\n')
    (root / "secrets").mkdir()
    (root / "secrets" / "pg_url").write_text(f"postgresql://u:{CANARY}@db/x\n")
    res = CliRunner().invoke(cli, ["--project", str(root), "run"])
    assert res.exit_code == 0, res.output
    return root


def _data_files(root: Path) -> dict[Path, str]:
    """Every file under the warehouse with the digest of its bytes."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / ".icefield").rglob("*")) if p.is_file() and p.suffix == ".parquet"}


# The attempts of the probe's F10 table, with the file each one would write (relative to tmp_path).
def _attacks(tmp: Path, data_file: Path) -> list[tuple[str, str | None]]:
    return [
        ("select * from read_csv('/etc/passwd', header=false, sep=':')", None),
        (r"select regexp_extract(content, 'CANARY_[^\x00]*') from read_text('/proc/self/environ')", None),
        ("select content from read_text('secrets/pg_url')", None),
        (f"select * from glob('{tmp}/*')", None),
        ("select * from glob('/proc/self/*')", None),
        (f"copy (select 'pwned' as x) to '{tmp}/copied.csv'; select 42", "copied.csv"),
        (f"copy (select 'pwned' as x) to '{tmp}/copied_alone.csv'", "copied_alone.csv"),
        (f"attach '{tmp}/new.duckdb' as n; create table n.t as select 1 as x; select * from n.t", "new.duckdb"),
        (f"attach '{tmp}/alone.duckdb' as n", "alone.duckdb"),
        ("create table raw.zz as select 1; drop view raw.events; select 1", None),
        ("drop view raw.events", None),
        ("create view raw.v as select 1", None),
        (f"copy (select 999 as id, 'forged' as v) to '{data_file}' (format parquet, use_tmp_file false)", None),
        ("install httpfs", None),
        ("load httpfs", None),
        ("select * from read_csv('http://127.0.0.1:9/x.csv')", None),
        ("set enable_external_access = true", None),
        ("reset lock_configuration", None),
        ("pragma database_list", None),
        ("call pragma_version()", None),
        ("select 1; select 2", None),
        ("with x as (insert into raw.events values (3, 'z', 'f')) select 1", None),
        ("select * from raw.events; copy raw.events to 'x.csv'", None),
        (f"select * from query('copy (select 1) to ''{tmp}/via_query.csv''')", "via_query.csv"),
        (f"export database '{tmp}/exported'", "exported"),
    ]


_CHILD = """
import json, sys
from click.testing import CliRunner
from icefield.cli import cli
root, queries = sys.argv[1], json.loads(sys.argv[2])
out = []
for q in queries:
    res = CliRunner().invoke(cli, ["--project", root, "sql", q, "--format", "csv"])
    out.append([res.exit_code, res.output])
print(json.dumps(out))
"""


def test_every_attempt_of_the_probe_is_refused_and_leaks_or_writes_nothing(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    before = _data_files(root)
    data_file = next(p for p in before if "/data/" in str(p) and "quarantine" not in str(p))
    attacks = _attacks(tmp_path, data_file)
    # A process of its own, with the canary in its environment from the start (/proc/self/environ).
    env = {**os.environ, "PG_PW": CANARY}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), json.dumps([q for q, _ in attacks])],
        capture_output=True, text=True, env=env, cwd=root, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert CANARY not in proc.stdout and CANARY not in proc.stderr
    for (query, written), (code, output) in zip(attacks, results, strict=True):
        if "query(" in query:  # DuckDB's query() runs only a SELECT itself: an error, nothing written
            assert code != 0 and "error" in output, (query, output)
        else:
            assert code == EXIT_USAGE and "refused" in output, (query, output)
        assert "root:" not in output and CANARY not in output, query
        if written is not None:
            assert not (tmp_path / written).exists(), query
    assert not list(root.glob("*.csv"))
    # The table's files are untouched, and the table reads as before.
    assert _data_files(root) == before
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "select id, v from raw.events order by id", "--format", "csv"])
    assert (res.exit_code, res.output.splitlines()) == (0, ["id,v", "1,x", "2,y"])


def test_the_connection_is_locked_even_past_the_statement_check(tmp_path: Path) -> None:
    """The second layer on its own: on the connection ``icefield sql`` uses, statements sent straight to
    DuckDB (as if the check had let them through) still cannot reach files or change settings, and the
    views keep reading their data."""
    import duckdb

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.query import connect

    root = _project(tmp_path / "p")
    catalog = open_catalog(load_project(root, env={}))
    con = connect(catalog, "select * from raw.events").con
    try:
        assert con.sql("select count(*) from raw.events").fetchall() == [(2,)]
        settings = con.sql(
            "select current_setting('enable_external_access'), current_setting('lock_configuration'), "
            "current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions')"
        ).fetchall()
        assert settings == [(False, True, False, False)]
        for stmt in [
            "select * from read_text('/proc/self/environ')",
            "select * from read_csv('/etc/passwd')",
            f"select * from glob('{tmp_path}/*')",
            f"copy (select 1) to '{tmp_path}/x.csv'",
            f"attach '{tmp_path}/x.duckdb' as x",
            "install httpfs",
            "load httpfs",
            "set enable_external_access = true",
            "reset enable_external_access",
            "set lock_configuration = false",
        ]:
            with pytest.raises(duckdb.Error):
                con.execute(stmt)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    finally:
        con.close()
        catalog.engine.dispose()


def test_unrestricted_keeps_full_duckdb_for_trusted_local_use(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    target = tmp_path / "out.csv"
    res = CliRunner().invoke(
        cli, ["--project", str(root), "sql", "--unrestricted", f"copy (select id from raw.events order by id) to '{target}'; select 42 as x", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"columns": ["x"], "rows": [{"x": 42}]}
    assert target.read_text().splitlines() == ["id", "1", "2"]
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "--unrestricted", f"select content from read_text('{root}/secrets/pg_url')", "--format", "csv"])
    assert res.exit_code == 0 and CANARY in res.output
    # The refusal says how to lift the lock.
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", f"copy (select 1) to '{target}'"])
    assert res.exit_code == EXIT_USAGE and "--unrestricted" in res.output


def test_read_only_queries_still_work(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    for query, expected in [
        ("with x as (select id from raw.events) select count(*) as n from x", [{"n": 2}]),
        ("from raw.events select max(id) as m", [{"m": 2}]),
        ("values (1), (2)", [{"col0": 1}, {"col0": 2}]),
        ("select 1 as a union all select 2 order by a", [{"a": 1}, {"a": 2}]),
        ("select count(*) as n from range(3)", [{"n": 3}]),
        ("select id from raw.events where id in (select max(id) from raw.events);", [{"id": 2}]),
    ]:
        res = CliRunner().invoke(cli, ["--project", str(root), "sql", query, "--json"])
        assert res.exit_code == 0, (query, res.output)
        assert json.loads(res.output)["rows"] == expected, query
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "describe raw.events", "--json"])
    assert res.exit_code == 0 and [r["column_name"] for r in json.loads(res.output)["rows"]] == ["id", "v", "_source_file"]
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "pivot (select id, v from raw.events) on v in ('x', 'y') using count(*)", "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(json.loads(res.output)["rows"], key=lambda r: r["id"]) == [{"id": 1, "x": 1, "y": 0}, {"id": 2, "x": 0, "y": 1}]


# ---------------------------------------------------------------------------------------- models


def _model(root: Path, name: str, sql: str) -> None:
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / f"{name}.sql").write_text(f"-- target: marts.{name}\n-- mode: overwrite\n{sql}\n")


def test_models_run_under_the_lock(tmp_path: Path) -> None:
    from icefield import run_model
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    root = _project(tmp_path / "p")
    _model(root, "good", "select id * 10 as id10 from raw.events")
    _model(root, "copier", f"copy (select 1) to '{tmp_path}/model.csv'")
    _model(root, "two", f"select 1 as x; copy (select 1) to '{tmp_path}/model2.csv'")
    _model(root, "reader", "select content from read_text('/proc/self/environ')")
    project = load_project(root, env={})
    catalog = open_catalog(project)
    try:
        run_model(project, "good", catalog=catalog)
        assert sorted(r["id10"] for r in catalog.load_table("marts.good").scan().to_arrow().to_pylist()) == [10, 20]
        for name in ("copier", "two", "reader"):
            with pytest.raises(ConfigError, match="refused"):
                run_model(project, name, catalog=catalog)
        assert not (tmp_path / "model.csv").exists() and not (tmp_path / "model2.csv").exists()
        assert not catalog.table_exists("marts.reader")
    finally:
        catalog.engine.dispose()


# ---------------------------------------------------------------------------------------- gates


def test_sql_gates_run_under_the_lock(tmp_path: Path) -> None:
    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.config.gates import parse_gates
    from icefield.quality.gates import GateContext, run_gates

    root = _project(tmp_path / "p")
    catalog = open_catalog(load_project(root, env={}))
    try:
        table = catalog.load_table("raw.events")
        gates = parse_gates(
            [
                {"sql": "select * from {table} where id < 0", "name": "fine"},
                {"sql": {"query": "select count(*) from raw.events", "min": 2}, "name": "scalar"},
                {"sql": "select * from read_csv('/etc/passwd')", "name": "passwd"},
                {"sql": f"select 1; copy (select 1) to '{tmp_path}/gate.csv'", "name": "two"},
                {"sql": f"copy (select 1) to '{tmp_path}/gate2.csv'", "name": "copy"},
                {"sql": "select 1 -- a comment; \n", "name": "commented"},
            ]
        )
        snap = table.current_snapshot()
        assert snap is not None
        ctx = GateContext(catalog, table, "raw.events", snap.snapshot_id, None, "main", "events", "run")
        results = {r.check: r for r in run_gates(gates, ctx)}
        assert (results["fine"].status, results["scalar"].status) == ("pass", "pass")
        assert results["commented"].status == "fail" and results["commented"].value == 1
        for name in ("passwd", "two", "copy"):
            assert results[name].status == "error" and "refused" in results[name].message, results[name]
        assert not (tmp_path / "gate.csv").exists() and not (tmp_path / "gate2.csv").exists()
    finally:
        catalog.engine.dispose()


# ---------------------------------------------------------------------------------------- filters

INJECTION = "true), false); COPY (SELECT 'filter-injection' AS x) TO '{path}'; SELECT __icefield_idx FROM batch WHERE NOT coalesce((true"


@pytest.mark.parametrize(
    "expr",
    [
        INJECTION,
        "(select count(*) from read_text('/etc/passwd')) > 0",
        "id in (select 1)",
        "exists (select 1)",
        "id = 1; select 2",
        "",
    ],
)
def test_a_filter_that_is_not_one_plain_expression_is_refused_when_the_project_loads(tmp_path: Path, expr: str) -> None:
    root = _project(tmp_path / "p")
    body = yaml.safe_load((root / "pipelines" / "events.yaml").read_text())
    body["checks"] = [{"filter": expr.format(path=tmp_path / "filter_pwned.csv")}]
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(body))
    (root / "data" / "events" / "b.jsonl").write_text('{"id": 3, "v": "z"}\n')
    res = CliRunner().invoke(cli, ["--project", str(root), "run"])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "filter" in res.output
    assert not (tmp_path / "filter_pwned.csv").exists()


def test_filter_rows_refuses_an_injection_even_unvalidated(tmp_path: Path) -> None:
    """``_filter_rows`` checks the expression itself and runs on a locked connection: a filter that
    skipped the config's validation writes nothing either."""
    from icefield.quality import _filter_rows

    batch = pa.table({"id": [1, 2, 3]})
    target = tmp_path / "filter_pwned.csv"
    with pytest.raises(ConfigError, match="not one SQL expression"):
        _filter_rows(batch, INJECTION.format(path=target))
    with pytest.raises(ConfigError, match="subquery"):
        _filter_rows(batch, "(select count(*) from read_text('/etc/passwd')) > 0")
    assert not target.exists()
    assert _filter_rows(batch, "id <> 2 -- a trailing comment") == {1}


def test_filter_over_columns_equal_but_for_case() -> None:
    """A batch with ``id`` and ``Id``: DuckDB would bind ``Id`` to ``id``; the filter sees ``Id`` as
    ``Id_1``, as ``icefield sql`` shows it."""
    from icefield.quality import _filter_rows

    batch = pa.table([pa.array([1, 2, 3]), pa.array([30, 20, 10])], names=["id", "Id"])
    assert _filter_rows(batch, "Id_1 > 15") == {2}
    assert _filter_rows(batch, "id > 1") == {0}
