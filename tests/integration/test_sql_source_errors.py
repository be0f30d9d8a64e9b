"""The sql source's failures on a real PostgreSQL: the exit code says whether a retry can help, the message
names the setting to fix, and no part of the password is printed.

F19: a wrong password and a missing database exited 75 (retry forever), a bad query 1. F8: a password
holding `@` was split and its tail printed as the host. F17: `initial_cursor: "not-a-date"` died with an
ADBC traceback. F22: a missing table was reported under source.url."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.postgres

PASSWORD = "CANARY_pgerr_5d1c@TAIL/x:y#z%w?v"
"""Every character that splits a URL, and a canary that must never be printed, in whole or in part."""
PIECES = ["CANARY_pgerr_5d1c", "TAIL/x:y#z%w?v", "TAIL"]


@pytest.fixture
def app(pg_url: str) -> Iterator[dict[str, str]]:
    """A login role with PASSWORD owning a table ``orders`` in the test's database: the URL parts."""
    url = make_url(pg_url)
    role = f"app_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as con:
            con.execute(sa.text(f"create role {role} login password '{PASSWORD}'"))
            con.execute(sa.text("create table orders (id bigint primary key, updated_at timestamptz not null, v text)"))
            con.execute(sa.text("insert into orders select i, now(), 'x' from generate_series(1, 5) i"))
            con.execute(sa.text(f"grant select on orders to {role}"))
        yield {"role": role, "host": str(url.host), "port": str(url.port), "db": str(url.database)}
    finally:
        with engine.begin() as con:
            con.execute(sa.text(f"drop owned by {role}"))
            con.execute(sa.text(f"drop role {role}"))
        engine.dispose()


def _run(root: Path, pipeline: str, source: str, env: dict[str, str]) -> tuple[int, dict, str]:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "icefield.yaml").write_text("name: pgerr\n", encoding="utf-8")
    (root / "pipelines" / f"{pipeline}.yaml").write_text(
        f"name: {pipeline}\nsource: {source}\ntarget: {{table: raw.{pipeline}}}\n", encoding="utf-8"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "--json", "run", pipeline],
        capture_output=True, text=True, check=False, env={**os.environ, **env}, timeout=300,
    )
    for piece in PIECES:
        assert piece not in proc.stdout + proc.stderr, piece
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stdout.splitlines()
    return proc.returncode, json.loads(line), proc.stderr


def _url(app: dict[str, str], password_ref: str = "${env:APP_PW}", db: str | None = None) -> str:
    return f"postgresql+psycopg2://{app['role']}:{password_ref}@{app['host']}:{app['port']}/{db or app['db']}"


def test_a_password_with_url_characters_logs_in(tmp_path: Path, app: dict[str, str]) -> None:
    code, doc, err = _run(tmp_path / "p", "ok", f"{{type: sql, url: '{_url(app)}', table: orders, cursor: updated_at}}", {"APP_PW": PASSWORD})
    assert code == 0, doc
    assert doc["results"][0]["rows_committed"] == 5


def test_a_wrong_password_is_a_configuration_error(tmp_path: Path, app: dict[str, str]) -> None:
    code, doc, _ = _run(tmp_path / "p", "badpw", f"{{type: sql, url: '{_url(app)}', table: orders, cursor: updated_at}}", {"APP_PW": PASSWORD + "nope"})
    assert code == 2, doc
    assert "source.url: the source database refused the login" in doc["error"]


def test_a_missing_database_is_a_configuration_error(tmp_path: Path, app: dict[str, str]) -> None:
    url = _url(app, db="no_such_db_x")
    code, doc, _ = _run(tmp_path / "p", "nodb", f"{{type: sql, url: '{url}', table: orders, cursor: updated_at}}", {"APP_PW": PASSWORD})
    assert code == 2, doc
    assert "source.url" in doc["error"] and "does not exist" in doc["error"]


def test_a_bad_query_and_a_missing_table_are_configuration_errors(tmp_path: Path, app: dict[str, str]) -> None:
    env = {"APP_PW": PASSWORD}
    code, doc, _ = _run(tmp_path / "p", "badq", f"{{type: sql, url: '{_url(app)}', query: 'selec id from orders', cursor: id}}", env)
    assert code == 2, doc
    assert "source.query: the source database refused the query" in doc["error"]
    code, doc, _ = _run(tmp_path / "p", "notable", f"{{type: sql, url: '{_url(app)}', table: nope, cursor: id}}", env)
    assert code == 2, doc
    assert "source.table: no table 'nope'" in doc["error"]
    code, doc, _ = _run(tmp_path / "p", "nocol", f"{{type: sql, url: '{_url(app)}', query: 'select id, nope from orders', cursor: id}}", env)
    assert code == 2, doc
    assert "source.query" in doc["error"] and "nope" in doc["error"]


def test_an_initial_cursor_the_database_refuses_is_a_configuration_error(tmp_path: Path, app: dict[str, str]) -> None:
    """F17: through ADBC (when installed) the error escaped as an adbc_driver_manager traceback."""
    source = f"{{type: sql, url: '{_url(app)}', table: orders, cursor: updated_at, initial_cursor: 'not-a-date'}}"
    code, doc, _ = _run(tmp_path / "p", "badcursor", source, {"APP_PW": PASSWORD})
    assert code == 2, doc
    assert "source.table: the source database refused" in doc["error"] and "source.initial_cursor" in doc["error"]
