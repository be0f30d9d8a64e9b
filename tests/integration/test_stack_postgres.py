"""The stack's PostgreSQL launcher against a real server: settings, auth, databases, start/stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import Postgres
from stack.base import pid_alive, port_open

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def connect(url: str, **kwargs: Any) -> Iterator[Any]:
    """Open a psycopg2 connection from a SQLAlchemy URL, autocommit, closed on exit."""
    import psycopg2  # the `postgres` extra; imported here so collection never needs it

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), **kwargs)
    try:
        if "connection_factory" not in kwargs:  # replication connections are always autocommit
            conn.autocommit = True
        yield conn
    finally:
        conn.close()


def scalar(url: str, sql: str) -> Any:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_runs_with_logical_wal_on_localhost_only(pg_server: Postgres) -> None:
    url = pg_server.url()
    assert url == f"postgresql+psycopg2://icefield:icefield@127.0.0.1:{pg_server.port}/postgres"
    assert scalar(url, "SHOW wal_level") == "logical"
    assert scalar(url, "SHOW listen_addresses") == "127.0.0.1"
    assert scalar(url, "SHOW max_replication_slots") == "10"
    assert scalar(url, "SHOW max_wal_senders") == "10"
    assert scalar(url, "SHOW unix_socket_directories") == str(pg_server.socket_dir)
    assert scalar(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


def test_wrong_password_is_refused(pg_server: Postgres) -> None:
    import psycopg2

    bad = pg_server.url().replace("icefield:icefield@", "icefield:not-the-password@")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"), connect(bad):
        pass


def test_created_database_is_usable_and_isolated(pg_server: Postgres, pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    assert pg_url == pg_server.url(name)
    with connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric)")
        cur.execute("INSERT INTO orders VALUES (1, 9.5), (2, 20)")
        cur.execute("SELECT count(*), sum(amount) FROM orders")
        assert cur.fetchone() == (2, 29.5)

    other = f"{name}_other"
    other_url = pg_server.create_database(other)
    try:
        assert scalar(other_url, "SELECT to_regclass('public.orders') IS NULL") is True
    finally:
        pg_server.drop_database(other)
    assert pg_server.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{other}'") == "0"
    pg_server.drop_database(other)  # dropping a missing database is not an error


def test_logical_decoding_and_replication_connections_work(pg_url: str) -> None:
    from psycopg2.extras import LogicalReplicationConnection, PhysicalReplicationConnection

    with connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
        cur.execute("SELECT pg_create_logical_replication_slot('stack_test', 'test_decoding')")
        try:
            cur.execute("INSERT INTO t VALUES (42)")
            cur.execute("SELECT data FROM pg_logical_slot_get_changes('stack_test', NULL, NULL)")
            changes = [row[0] for row in cur.fetchall()]
        finally:
            cur.execute("SELECT pg_drop_replication_slot('stack_test')")
    assert "table public.t: INSERT: id[integer]:42" in changes

    # Debezium opens a logical replication connection; pg_basebackup-style tools a physical one.
    for factory in (LogicalReplicationConnection, PhysicalReplicationConnection):
        with connect(pg_url, connection_factory=factory) as conn, conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            system_id, timeline, _, _ = cur.fetchone()
            assert int(system_id) > 0 and timeline >= 1


def test_start_twice_is_idempotent(pg_server: Postgres) -> None:
    before = pg_server.status()
    assert before.running and before.pid is not None

    assert pg_server.start() is False
    assert Postgres(pg_server.base_dir, port=pg_server.port).start() is False  # a second launcher too
    pg_server.wait_ready(timeout=10)

    after = pg_server.status()
    assert (after.running, after.pid, after.port) == (True, before.pid, pg_server.port)


def test_stop_ends_the_process_by_pid(tmp_path: Path) -> None:
    # Its own cluster on its own port: the session server stays up for the other tests. As root
    # this also covers the /tmp fallback, since pytest's tmp dirs are not reachable by postgres.
    server = Postgres(tmp_path / "stack", port=free_port(), fast=True)
    if os.geteuid() == 0:
        assert not server.state_dir.is_relative_to(tmp_path)
    try:
        assert server.up(timeout=120) is True
        pid = server.status().pid
        assert pid is not None and pid_alive(pid)
        assert port_open("127.0.0.1", server.port)

        assert server.stop() is True  # pg_ctl stop -m fast
        assert not pid_alive(pid)
        assert not port_open("127.0.0.1", server.port)
        assert server.status().running is False
        assert server.stop() is False

        # Without postmaster.pid, pg_ctl cannot help: stop() must signal the recorded pid.
        assert server.up(timeout=120) is True
        pid = server.status().pid
        assert pid is not None
        (server.data_dir / "postmaster.pid").unlink()
        assert server.status().running is False
        assert server.stop() is True
        assert not pid_alive(pid)
        assert not port_open("127.0.0.1", server.port)
    finally:
        server.stop()
        if not server.state_dir.is_relative_to(tmp_path):
            shutil.rmtree(server.state_dir.parent, ignore_errors=True)
