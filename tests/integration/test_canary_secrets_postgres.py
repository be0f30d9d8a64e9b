"""The canary battery row (see ``tests/reliability/test_canary_secrets.py``) for a PostgreSQL source whose
password holds ``@``: a run that loads, a run with a wrong password, a query the database refuses; then
every byte printed and every file of the project is scanned for the password's two halves."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from stack import Postgres
from tests.reliability.test_canary_secrets import Output, _icefield, _write, leaks, written_files

pytestmark = pytest.mark.postgres


def test_no_canary_from_a_postgresql_source_password(tmp_path: Path, pg_server: Postgres) -> None:
    """A PostgreSQL source whose password holds `@`: a run that loads, a run with a wrong password, a
    query the database refuses; then every output and file is scanned."""
    password = "CANARYpgsrc3c1@CANARYpgtail3c2"
    canaries = {"PostgreSQL source password, before @": "CANARYpgsrc3c1", "PostgreSQL source password, after @": "CANARYpgtail3c2"}
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = pg_server.create_database(name)
    url = make_url(admin_url)
    role = f"app_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url)
    try:
        with engine.begin() as con:
            con.execute(sa.text(f"create role {role} login password '{password}'"))
            con.execute(sa.text("create table orders (id bigint primary key, v text)"))
            con.execute(sa.text("insert into orders select i, case when i = 3 then null else 'v' || i end from generate_series(1, 10) i"))
            con.execute(sa.text(f"grant select on orders to {role}"))
        root = tmp_path / "proj"
        source_url = f"postgresql+psycopg2://{role}:${{env:PG_PW}}@{url.host}:{url.port}/{name}"
        _write(root / "icefield.yaml", "name: canary\n")
        _write(root / "pipelines" / "pg.yaml", f"""\
            name: pg
            source: {{type: sql, url: "{source_url}", table: orders, cursor: id}}
            target: {{table: raw.pg}}
            checks:
              - not_null: [v]
        """)
        _write(root / "pipelines" / "pgq.yaml", f"""\
            name: pgq
            source: {{type: sql, url: "{source_url}", query: "selec id from orders", cursor: id}}
            target: {{table: raw.pgq}}
        """)
        outputs: list[Output] = []
        loaded = -1
        ok = {"PG_PW": password}
        bad = {"PG_PW": password + "x"}
        for env, args in [
            (ok, ("run", "pg")), (ok, ("-vv", "--log-format", "json", "--json", "run", "pg")), (ok, ("-v", "run", "pgq")),
            (ok, ("--json", "run", "pgq")), (bad, ("run", "pg")), (bad, ("-vv", "run", "pg")), (bad, ("--json", "run", "pg")),
            (ok, ("quarantine", "show", "raw.pg")), (ok, ("show", "raw.pg")),
        ]:
            proc, printed = _icefield(root, env, *args)
            outputs.extend(printed)
            if args == ("run", "pg") and env is ok:
                loaded = proc.returncode
        outputs.extend(written_files(root))
        found = leaks(outputs, canaries)
        assert not found, "\n".join(found[:20])
        assert loaded == 0  # the password logged in: the scan covered a run that read and wrote rows
    finally:
        with engine.begin() as con:
            con.execute(sa.text(f"drop owned by {role}"))
            con.execute(sa.text(f"drop role {role}"))
        engine.dispose()
        pg_server.drop_database(name)
