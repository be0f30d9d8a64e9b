"""Every test runs isolated: no ICEFIELD*/PYICEBERG* variables of the developer, a temporary HOME
(pyiceberg reads ~/.pyiceberg.yaml), an empty registry of secrets to redact, and failpoints disarmed
again after a test that armed them. The download cache of
the stack launchers (jars, the Debezium plugin) stays the developer's: ``ICEFIELD_CACHE`` is pinned to
it, so the temporary HOME never makes a test fetch them again."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from stack import S3Server, S3Settings
from stack.maven import CACHE_ENV, cache_dir

from icefield import failpoints
from icefield.config import secrets

# Property tests explore fixed examples in `make test`, so a CI run is reproducible and a finding is a
# regression test from then on; `make test-long` (ICEFIELD_LONG=1) explores fresh random examples, longer.
settings.register_profile("icefield", derandomize=not os.environ.get("ICEFIELD_LONG"))
settings.load_profile("icefield")

_CACHE = str(cache_dir())  # read once, from the developer's environment, before any test changes it


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("ICEFIELD", "PYICEBERG")) and key not in ("ICEFIELD_LONG", "ICEFIELD_SEED"):
            monkeypatch.delenv(key)
    home: Path = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(CACHE_ENV, _CACHE)
    saved = set(secrets._known)
    secrets._known.clear()
    injector = failpoints.install(None)
    try:
        yield
    finally:
        failpoints.install(injector)
        secrets._known.clear()
        secrets._known.update(saved)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that no one listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The S3 server is here, not in tests/integration: the core suites (unit and reliability) run on it too,
# through tests/stores.py.
S3_READY_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A running S3 server (versitygw, POSIX backend) on 127.0.0.1 with a bucket, a writer and a reader
    made for the session: ``endpoint``, ``region``, ``bucket``, ``writer_key``/``writer_secret`` (list, get,
    put, delete), ``reader_key``/``reader_secret`` (list and get; put and delete refused with 403
    AccessDenied), ``storage(reader=False)`` (icefield's ``storage:`` settings) and ``server`` (the
    launcher, for more accounts and buckets). See :class:`stack.s3.S3Settings`.

    Its own state dir and a free port, never the developer's stack server. Raises (as a fixture error,
    never a skip) if Go is missing (the first use builds versitygw) or the server does not start.
    """
    server = S3Server(tmp_path_factory.mktemp("stack"), port=free_port())
    server.up(timeout=S3_READY_TIMEOUT)
    try:
        yield server.provision("icefield-test", writer_key="icefield-writer", reader_key="icefield-reader")
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Settings) -> str:
    """A fresh ``s3://<bucket>/<uuid>`` prefix (no trailing slash) in the session's bucket, for one test.
    Nothing is deleted afterwards: the server's state dir goes with the session."""
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex}"




_jars_fetched: list[bool] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first test marked ``spark``: the Spark engine's jars in the icefield cache (fetched with
    Maven on a new machine). The engine finds them there, and refuses to start without them."""
    if item.get_closest_marker("spark") is not None and not _jars_fetched:
        from stack.spark import ensure_jars

        ensure_jars()
        _jars_fetched.append(True)
