"""Fixtures that start real services through ``stack`` for tests carrying the service's marker.

``pg_server`` reuses the developer's stack server (``python -m stack up`` / ``make stack-up``) when
one runs from the default state dir, so repeated runs skip initdb; it stops the server at the end
of the session only if it started it. ``ICEFIELD_STACK_DIR`` and ``ICEFIELD_PG_PORT`` move it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from stack import PG_PORT_ENV, Postgres
from stack.base import LOCALHOST, port_open

PG_READY_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """A running PostgreSQL (``wal_level=logical``, superuser icefield/icefield) on 127.0.0.1.

    Raises (as a fixture error, never a skip) if PostgreSQL is not installed or does not start.
    """
    server = Postgres(fast=True)
    if not server.status().running and port_open(LOCALHOST, server.port) and not os.environ.get(PG_PORT_ENV):
        # Another process (another checkout's stack server, say) holds the default port: use a free one.
        server = Postgres(fast=True, port=_free_port())
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
