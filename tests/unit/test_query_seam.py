"""One query seam (issue 15, part 6): ``icefield sql``, models and gates read the tables through the same
DuckDB views (:mod:`icefield.query`), built in one place where a view policy can rewrite them.

- A policy applied there (a column mask and a row filter) changes what every caller sees.
- A query loads only the tables it names; ``select 1`` opens no catalog and loads none of the libraries
  the tables need (it took about 1.8 s, most of it importing pyiceberg, SQLAlchemy, Arrow and pandas).
- A model records in its position the snapshots its query read: it read its inputs twice (once for the
  position, once for the query), so a commit in between made it record a snapshot it had not read.
- Results icefield sql fetches without Arrow are the values Arrow would give.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from icefield.catalog import open_catalog
from icefield.cli import cli
from icefield.config import load_project
from icefield.errors import ConfigError
from icefield.query import View, ViewRule, query_rows, run_query, view_policy


def _project(root: Path) -> Path:
    """A project whose raw.events holds (1, x) and (2, y)."""
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    (root / "data" / "events" / "a.jsonl").write_text('{"id": 1, "v": "x"}\n{"id": 2, "v": "y"}\n')
    res = CliRunner().invoke(cli, ["--project", str(root), "run"])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _project(tmp_path / "p")


@pytest.fixture
def catalog(root: Path) -> Iterator[Any]:
    catalog = open_catalog(load_project(root, env={}))
    yield catalog
    catalog.engine.dispose()


def _sql(root: Path, query: str) -> list[str]:
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", query, "--format", "csv"])
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


# ---------------------------------------------------------------------------------------- the policy seam


class MaskEvents:
    """A trivial policy: in raw.events, ``v`` reads as ``***`` and only rows with ``id > 1`` are seen."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def rule(self, view: View) -> ViewRule | None:
        self.seen.append(view.ident)
        if view.ident == ("raw", "events"):
            return ViewRule(columns={"v": "'***'"}, where="id > 1")
        return None


def _gates(catalog: Any) -> dict[str, Any]:
    from icefield.config.gates import parse_gates
    from icefield.quality.gates import GateContext, run_gates

    table = catalog.load_table("raw.events")
    gates = parse_gates(
        [
            {"row_count": {"min": 1, "max": 1}, "name": "rows"},
            {"accepted_values": {"column": "v", "values": ["***"]}, "name": "masked"},
            {"sql": {"query": "select max(id) - min(id) from {table}", "min": 0, "max": 0}, "name": "filtered"},
        ]
    )
    ctx = GateContext(catalog, table, "raw.events", table.current_snapshot().snapshot_id, None, "main", "events", "run")
    return {r.check: r.status for r in run_gates(gates, ctx)}


def test_a_view_policy_changes_what_sql_models_and_gates_see(root: Path, catalog: Any) -> None:
    from icefield import run_model

    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "copy.sql").write_text("-- target: marts.copy\n-- mode: overwrite\nselect id, v from raw.events\n")
    project = load_project(root, env={})
    policy = MaskEvents()
    with view_policy(policy):
        assert _sql(root, "select id, v from raw.events order by id") == ["id,v", "2,***"]
        assert run_query(project, "select count(*) as n from raw.events", catalog).to_pylist() == [{"n": 1}]
        run_model(project, "copy", catalog=catalog)
        assert _gates(catalog) == {"rows": "pass", "masked": "pass", "filtered": "pass"}
    assert catalog.load_table("marts.copy").scan().to_arrow().to_pylist() == [{"id": 2, "v": "***"}]
    assert ("raw", "events") in policy.seen
    # Without a policy, every caller sees the table as it is.
    assert _sql(root, "select id, v from raw.events order by id") == ["id,v", "1,x", "2,y"]
    assert _gates(catalog) == {"rows": "fail", "masked": "fail", "filtered": "fail"}


def test_a_policy_rule_that_does_not_fit_is_refused(root: Path, catalog: Any) -> None:
    project = load_project(root, env={})

    class Bad:
        def __init__(self, rule: ViewRule) -> None:
            self.rule_ = rule

        def rule(self, view: View) -> ViewRule:
            return self.rule_

    for rule, match in [
        (ViewRule(columns={"nope": "NULL"}), r"masks column\(s\) nope that the view of raw\.events does not have"),
        (ViewRule(where="id > 1); drop view raw.events; select (1"), "row filter of raw.events"),
        (ViewRule(columns={"v": "(select 'x')"}), "mask of raw.events.v"),
    ]:
        with view_policy(Bad(rule)), pytest.raises(ConfigError, match=match):
            run_query(project, "select * from raw.events", catalog)


# ---------------------------------------------------------------------------------------- only what a query names


class CountingCatalog:
    """The catalog, counting the tables it loads."""

    def __init__(self, catalog: Any) -> None:
        self._catalog = catalog
        self.loaded: list[tuple[str, ...]] = []

    def load_table(self, ident: Any) -> Any:
        self.loaded.append(tuple(ident.split(".")) if isinstance(ident, str) else tuple(ident))
        return self._catalog.load_table(ident)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)


def test_a_query_loads_only_the_tables_it_names(root: Path, catalog: Any) -> None:
    """The other tables are neither loaded nor read: one whose metadata is gone does not matter."""
    project = load_project(root, env={})
    catalog.create_namespace_if_not_exists("shop")
    for name in ("raw.other", "shop.other"):
        other = catalog.create_table(name, schema=pa.schema([pa.field("id", pa.int64())]))
        Path(other.metadata_location.removeprefix("file://")).unlink()
    counting = CountingCatalog(catalog)
    assert run_query(project, "select count(*) as n from raw.events", counting).to_pylist() == [{"n": 2}]
    assert counting.loaded == [("raw", "events")]
    assert _sql(root, "select count(*) as n from raw.events") == ["n", "2"]
    counting.loaded.clear()
    assert run_query(project, "select 1 as one", counting).to_pylist() == [{"one": 1}]
    assert counting.loaded == []


def test_select_1_opens_no_catalog(root: Path) -> None:
    """A query that names no table runs without the catalog: a broken one is reported only when a
    table is read."""
    (root / "broken.db").write_text("not a database")
    cfg = (root / "icefield.yaml").read_text().replace("catalog:\n  name: icefield\n", 'catalog:\n  name: icefield\n  uri: "sqlite:///broken.db"\n')
    (root / "icefield.yaml").write_text(cfg)
    assert _sql(root, "select 1 as one") == ["one", "1"]
    res = CliRunner().invoke(cli, ["--project", str(root), "sql", "select count(*) from raw.events"])
    assert res.exit_code == 2 and "is not a SQLite database" in res.output, res.output


HEAVY = ["pyiceberg", "sqlalchemy", "pyarrow", "numpy", "pandas", "pydantic", "icefield.config.loader", "icefield.pipeline", "icefield.write", "icefield.engines"]

_CHILD = """
import json, sys
from icefield.cli import main
sys.argv = ["icefield", "--project", sys.argv[1], "sql", "select 1 as one"]
code = None
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def test_select_1_loads_none_of_the_libraries_tables_need(tmp_path: Path) -> None:
    """``icefield sql "select 1"`` imports DuckDB, sqlglot, click and rich, and nothing the tables need."""
    root = tmp_path / "p"
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    proc = subprocess.run([sys.executable, "-c", _CHILD % HEAVY, str(root)], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *shown, last = proc.stdout.strip().splitlines()
    assert any("1" in line for line in shown), proc.stdout
    assert json.loads(last) == {"code": 0, "loaded": []}


# ---------------------------------------------------------------------------------------- models


def test_a_model_records_the_snapshots_it_read(root: Path, catalog: Any) -> None:
    """A commit to an input while the model starts: the position names the snapshot the query read."""
    from icefield import run_model
    from icefield.iceberg.history import read_position

    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "n.sql").write_text("-- target: marts.n\n-- mode: overwrite\nselect count(*) as n from raw.events\n")
    project = load_project(root, env={})

    class Racing(CountingCatalog):
        """Another writer appends to raw.events right after the model first loads it."""

        def load_table(self, ident: Any) -> Any:
            t = super().load_table(ident)
            if self.loaded.count(("raw", "events")) == 1 and self.loaded[-1] == ("raw", "events"):
                self._catalog.load_table("raw.events").append(pa.table({"id": pa.array([3], pa.int64()), "v": ["z"], "_source_file": ["other"]}))
            return t

    racing = Racing(catalog)
    run_model(project, "n", catalog=racing)
    target = catalog.load_table("marts.n")
    read = target.scan().to_arrow().to_pylist()[0]["n"]
    recorded = read_position(target, "model.n")["inputs"]["raw.events"]
    assert catalog.load_table("raw.events").scan(snapshot_id=recorded).to_arrow().num_rows == read == 2
    assert racing.loaded.count(("raw", "events")) == 1


# ---------------------------------------------------------------------------------------- rows without Arrow


@pytest.mark.parametrize(
    "query",
    [
        "select 1::tinyint a, 2::smallint b, 3 c, 4::bigint d, 255::utinyint e, 18446744073709551615::ubigint f, null::integer g",
        "select 0.1::float a, 0.1::double b, '-inf'::double c, -0.0::double d, 99.50::decimal(4,2) e, 1.5::decimal(38,3) f",
        "select 'x' a, '' b, 'é' c, null::varchar d, true e, null::boolean f, null g",
        "select '2024-01-02'::date a, '2024-01-02 03:04:05.123456'::timestamp b, '2024-01-02 03:04:05+00'::timestamptz c",
        "select [1, 2] a, {'k': 1} b, map {'a': 1} c, 1::hugeint d, interval 1 day e, 'ab'::blob f, '03:04'::time g",
    ],
)
def test_rows_are_the_values_arrow_gives(root: Path, query: str) -> None:
    project = load_project(root, env={})
    arrow = run_query(project, query)
    got = query_rows(query, lambda: pytest.fail("no catalog is needed"))
    assert got.columns == arrow.column_names
    assert got.rows == [tuple(r.values()) for r in arrow.to_pylist()]
    assert got.total == arrow.num_rows == 1


@pytest.mark.parametrize("query", ["select range as i from range(10) order by i desc", "select date '2024-01-01' + range::integer as d from range(10) order by d desc"])
def test_rows_past_the_limit_are_counted(root: Path, query: str) -> None:
    got = query_rows(query, lambda: pytest.fail("no catalog is needed"), limit=3)
    assert (len(got.rows), got.total) == (3, 10)
    assert [r[0] for r in got.rows] == [r[0] for r in query_rows(query, lambda: pytest.fail("no catalog is needed")).rows[:3]]
    assert query_rows(query, lambda: pytest.fail("no catalog is needed"), limit=10).total == 10
