"""Every test runs isolated: no ICEFIELD*/PYICEBERG* variables of the developer, a temporary HOME
(pyiceberg reads ~/.pyiceberg.yaml), an empty registry of secrets to redact, and failpoints disarmed
again after a test that armed them. The download cache of
the stack launchers (jars, the Debezium plugin) stays the developer's: ``ICEFIELD_CACHE`` is pinned to
it, so the temporary HOME never makes a test fetch them again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
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
