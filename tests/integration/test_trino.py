"""Trino 476 and icefield share one catalog, both ways (markers ``trino``, ``postgres``).

icefield (pyiceberg's ``SqlCatalog`` on a PostgreSQL database, catalog name ``lake``, a local warehouse)
and Trino (its Iceberg connector's JDBC catalog on the same database, ``stack.trino``) load the same
tables. Trino starts once per session (``trino_server``) with one catalog on the session database
``trino_lake``: each test uses its own project folder and its own table names.

a. What icefield lands (append and merge pipelines) reads the same through ``icefield sql --engine trino``
   as through ``icefield sql`` (DuckDB).
b. After each kind of Trino write (row changes, schema and partition evolution, its compaction, snapshot
   expiry and orphan removal) the next ``icefield run`` lands every new row exactly once, maps renamed
   columns by field id, honours Trino's delete files and keeps its position: the table is compared with
   a pure-Python oracle (key -> row) through DuckDB and through Trino.

Needs Maven (the server is fetched once into the icefield cache), a Java 24+ JDK and PostgreSQL; a
missing piece fails the tests with the command to run; nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trino.dbapi
from click.testing import CliRunner
from stack import Trino
from tests.integration.conftest import TrinoLake
from tests.interop import MergeCase, next_run
from tests.interop import row as _row

from icefield import load_project, run_pipeline
from icefield.cli import cli

pytestmark = [pytest.mark.trino, pytest.mark.postgres, pytest.mark.timeout(900)]

NS = "tr"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, lake: TrinoLake, server: Trino) -> Path:
    _write(
        root,
        "icefield.yaml",
        f"name: trinoproj\nnamespace: {NS}\n"
        f"catalog: {{name: {lake.name}, uri: '{lake.url}'}}\n"
        f"warehouse: '{lake.warehouse}'\n"
        f"trino: {{uri: '{server.url()}', catalog: {lake.name}, user: icefield}}\n",
    )
    return root


def _cli(root: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args])
    return res.exit_code, res.output


def _sql_json(root: Path, query: str, *engine: str) -> dict[str, Any]:
    code, out = _cli(root, "sql", *engine, "--json", query)
    assert code == 0, out
    doc: dict[str, Any] = json.loads(out)
    return doc


def _trino(server: Trino, lake: TrinoLake) -> Callable[[str], list[tuple[Any, ...]]]:
    def execute(statement: str) -> list[tuple[Any, ...]]:
        conn = trino.dbapi.connect(host=server.host, port=server.port, user="icefield", catalog=lake.name, schema=NS)
        try:
            cur = conn.cursor()
            cur.execute(statement)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    return execute


# ------------------------------------------------------------------------- a. icefield -> Trino


def test_trino_reads_what_icefield_lands(tmp_path: Path, trino_server: Trino, trino_lake: TrinoLake) -> None:
    tag = uuid.uuid4().hex[:8]
    root = _project(tmp_path / "p", trino_lake, trino_server)
    _write(root, "pipelines/ev.yaml", f"name: ev\nsource: {{type: files, path: 'data/ev/*.csv'}}\ntarget: {{table: {NS}.ev_{tag}}}\n")
    _write(root, "pipelines/cu.yaml", f"name: cu\nsource: {{type: files, path: 'data/cu/*.csv', file_column: null}}\ntarget: {{table: {NS}.cu_{tag}, mode: merge, keys: [id]}}\n")
    _write(root, "data/ev/a.csv", "id,kind,amount,day\n1,x,1.5,2026-11-01\n2,y,2.25,2026-11-02\n3,x,-1,2026-11-03\n")
    _write(root, "data/cu/a.csv", "id,name,score\n1,ann,10\n2,bob,20\n3,cid,30\n")
    project = load_project(root)
    assert run_pipeline(project, "ev").rows_committed == 3
    assert run_pipeline(project, "cu").rows_committed == 3
    _write(root, "data/ev/b.csv", "id,kind,amount,day\n4,z,4.5,2026-11-04\n")
    _write(root, "data/cu/b.csv", "id,name,score\n2,bob,21\n4,dee,40\n")
    assert run_pipeline(project, "ev").rows_committed == 1
    assert run_pipeline(project, "cu").rows_committed == 2

    for table, expected in ((f"ev_{tag}", 4), (f"cu_{tag}", 4)):
        query = f"SELECT * FROM {NS}.{table} ORDER BY id"
        duck = _sql_json(root, query)
        trin = _sql_json(root, query, "--engine", "trino")
        assert trin == duck
        assert len(trin["rows"]) == expected
    assert [r["score"] for r in _sql_json(root, f"SELECT score FROM {NS}.cu_{tag} ORDER BY id", "--engine", "trino")["rows"]] == [10, 21, 30, 40]
    code, out = _cli(root, "sql", "--engine", "trino", "--limit", "2", f"SELECT name FROM {NS}.cu_{tag} ORDER BY id")
    assert code == 0 and "ann" in out and "bob" in out and "cid" not in out and "2 more rows" in out


def test_trino_errors_name_the_fix(tmp_path: Path, trino_server: Trino, trino_lake: TrinoLake) -> None:
    root = _project(tmp_path / "p", trino_lake, trino_server)
    code, out = _cli(root, "sql", "--engine", "trino", f"SELECT nope FROM {NS}.no_such_table_here")
    assert code == 2 and "no_such_table_here" in out
    code, out = _cli(root, "sql", "--engine", "trino", f"DROP TABLE {NS}.whatever")
    assert code == 2 and "--unrestricted" in out
    # A server that is not there: transient (75), naming the URI.
    down = f"http://127.0.0.1:{_closed_port()}"
    _write(root, "icefield.yaml", (root / "icefield.yaml").read_text().replace(trino_server.url(), down))
    code, out = _cli(root, "sql", "--engine", "trino", "SELECT 1")
    assert code == 75 and down in out


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ------------------------------------------------------------------------- b. Trino -> icefield

class Case(MergeCase):
    """One table fed by a merge pipeline (parquet files, key ``id``), its oracle and its Trino session."""

    def __init__(self, root: Path, table: str, sql: Callable[[str], list[tuple[Any, ...]]]) -> None:
        super().__init__(root, table)
        self.sql = sql

    def content(self) -> dict[int, int]:
        """How many files of each content kind (0 data, 1 position deletes, 2 equality deletes) the table's
        current snapshot holds, as Trino's ``$files`` metadata table reports them."""
        return dict(self.sql(f'SELECT content, count(*) FROM "{self.table}$files" GROUP BY content'))

    def check(self) -> None:
        """The table equals the oracle, through DuckDB (icefield sql) and through Trino (icefield sql --engine trino)."""
        columns = self.columns()
        query = f"SELECT {', '.join(columns)} FROM {NS}.{self.table} ORDER BY id"
        for engine in ((), ("--engine", "trino")):
            self.assert_rows(_sql_json(self.root, query, *engine)["rows"], columns, " ".join(engine) or "duckdb")


@pytest.fixture
def case(tmp_path: Path, trino_server: Trino, trino_lake: TrinoLake) -> Case:
    table = f"t_{uuid.uuid4().hex[:10]}"
    root = _project(tmp_path / "p", trino_lake, trino_server)
    (root / "data").mkdir()
    _write(root, "pipelines/p.yaml", f"name: p\nsource: {{type: files, path: 'data/*.parquet', file_column: null}}\ntarget: {{table: {NS}.{table}, mode: merge, keys: [id]}}\n")
    c = Case(root, table, _trino(trino_server, trino_lake))
    assert c.land([_row(i) for i in range(1, 21)]) == 20
    c.check()
    return c


def _next(c: Case, ids: range, kind: str = "n") -> None:
    """The next icefield run after Trino's change: new keys and two updated ones land exactly once (the
    earlier files are not read again: the position held), then the table equals the oracle."""
    next_run(c, ids, kind)
    c.check()


def test_after_trino_insert(case: Case) -> None:
    case.sql(f"INSERT INTO {case.table} VALUES (100, 't', 1, 2.5, DATE '2026-11-02'), (101, 't', 2, 3.5, DATE '2026-11-03')")
    case.oracle[100] = {"id": 100, "kind": "t", "qty": 1, "amount": 2.5, "day": dt.date(2026, 11, 2)}
    case.oracle[101] = {"id": 101, "kind": "t", "qty": 2, "amount": 3.5, "day": dt.date(2026, 11, 3)}
    case.check()
    _next(case, range(200, 205))


def test_after_trino_update_and_delete(case: Case) -> None:
    case.sql(f"UPDATE {case.table} SET kind = 'tu', amount = amount + 1 WHERE id <= 5")
    for i in range(1, 6):
        case.oracle[i] = {**case.oracle[i], "kind": "tu", "amount": case.oracle[i]["amount"] + 1}
    case.sql(f"DELETE FROM {case.table} WHERE id % 3 = 0")
    for i in [k for k in case.oracle if k % 3 == 0]:
        del case.oracle[i]
    # Trino changes rows with position delete files (merge-on-read), never equality deletes.
    assert case.content().get(1, 0) >= 2 and 2 not in case.content()
    case.check()
    _next(case, range(300, 304))
    # A key Trino deleted comes back once when the source sends it again.
    assert case.land([_row(6, "back")]) == 1
    case.check()


def test_after_trino_merge(case: Case) -> None:
    case.sql(
        f"MERGE INTO {case.table} t USING (VALUES (1, 'm'), (7, 'm'), (500, 'm')) AS s(id, kind) ON t.id = s.id "
        "WHEN MATCHED AND s.id = 7 THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET kind = s.kind "
        "WHEN NOT MATCHED THEN INSERT (id, kind, qty, amount, day) VALUES (s.id, s.kind, 5, 0.5, DATE '2026-11-05')"
    )
    case.oracle[1] = {**case.oracle[1], "kind": "m"}
    del case.oracle[7]
    case.oracle[500] = {"id": 500, "kind": "m", "qty": 5, "amount": 0.5, "day": dt.date(2026, 11, 5)}
    case.check()
    _next(case, range(600, 603))


def test_after_trino_adds_a_column(case: Case) -> None:
    case.sql(f"ALTER TABLE {case.table} ADD COLUMN note varchar")
    case.sql(f"UPDATE {case.table} SET note = 'hello' WHERE id = 3")
    case.add_column("note")
    case.oracle[3]["note"] = "hello"
    case.check()
    # The source has no ``note``: new rows get null, and so does a key the source sends again (a merge
    # replaces the row); the row Trino gave a note keeps it.
    _next(case, range(700, 703))
    assert case.oracle[2]["note"] is None and case.oracle[3]["note"] == "hello"


def test_after_trino_renames_a_column(case: Case) -> None:
    """Trino renames ``kind`` (field id 2) to ``category``: the old data files still say ``kind`` and are read
    by field id under the new name, by DuckDB and by Trino. The source still sends ``kind``, which no
    longer names a table column: under the default contract (evolve) it lands as a new column ``kind``,
    and ``category`` is null in the rows the source sends; every row lands once."""
    case.sql(f"ALTER TABLE {case.table} RENAME COLUMN kind TO category")
    case.rename_column("kind", "category")
    case.check()
    case.add_column("kind")
    _next(case, range(800, 803))
    assert case.oracle[1]["category"] == "a" and case.oracle[2] == {**_row(2, "upd"), "category": None}


def test_after_trino_widens_a_type(case: Case) -> None:
    case.sql(f"ALTER TABLE {case.table} ALTER COLUMN qty SET DATA TYPE bigint")
    assert case.sql(f"SELECT data_type FROM information_schema.columns WHERE table_schema = '{NS}' AND table_name = '{case.table}' AND column_name = 'qty'") == [("bigint",)]
    case.check()
    _next(case, range(900, 903))


def test_after_trino_changes_the_partition_spec(case: Case) -> None:
    case.sql(f"ALTER TABLE {case.table} SET PROPERTIES partitioning = ARRAY['day']")
    spec = case.sql(f'SELECT max(spec_id) FROM "{case.table}$files"')[0][0]
    case.sql(f"INSERT INTO {case.table} VALUES (1000, 'p', 1, 1.0, DATE '2026-11-04')")
    case.oracle[1000] = {"id": 1000, "kind": "p", "qty": 1, "amount": 1.0, "day": dt.date(2026, 11, 4)}
    case.check()
    _next(case, range(1100, 1106))
    # icefield writes its new files under the table's current spec (Trino's, partitioned by day).
    specs = dict(case.sql(f'SELECT spec_id, count(*) FROM "{case.table}$files" WHERE content = 0 GROUP BY spec_id'))
    assert max(specs) > spec and specs[max(specs)] >= 1 + 5


def test_after_trino_optimize_expire_and_orphan_removal(case: Case) -> None:
    # Deletes first, so that optimize has delete files to fold into its rewrite.
    _next(case, range(1200, 1203))
    case.sql(f"DELETE FROM {case.table} WHERE id IN (5, 6)")
    del case.oracle[5], case.oracle[6]
    assert case.content().get(1, 0) >= 1
    case.sql(f"ALTER TABLE {case.table} EXECUTE optimize")
    assert case.content() == {0: 1}  # one data file, the deletes applied
    case.check()
    _next(case, range(1300, 1303))
    case.sql(f"ALTER TABLE {case.table} EXECUTE expire_snapshots(retention_threshold => '0s')")
    case.sql(f"ALTER TABLE {case.table} EXECUTE remove_orphan_files(retention_threshold => '0s')")
    case.check()
    _next(case, range(1400, 1403))
    # The earlier files were not read again: only the newest file's rows were committed by the last run.
    assert case.land([_row(1500)]) == 1
    case.check()
