"""Fixtures that start real services through ``stack`` for tests carrying the service's marker.

``pg_server`` reuses the developer's stack server (``python -m stack up`` / ``make stack-up``) when
one runs from the default state dir, so repeated runs skip initdb; it stops the server at the end
of the session only if it started it. ``ICEFIELD_STACK_DIR`` and ``ICEFIELD_PG_PORT`` move it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from stack import Postgres

PG_READY_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """A running PostgreSQL (``wal_level=logical``, superuser icefield/icefield) on 127.0.0.1.

    Raises (as a fixture error, never a skip) if PostgreSQL is not installed or does not start.
    """
    server = Postgres(fast=True)
    started = server.up(timeout=PG_READY_TIMEOUT)
    try:
        yield server
    finally:
        if started:
            server.stop()


@pytest.fixture
def pg_url(pg_server: Postgres) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, uniquely named database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)
