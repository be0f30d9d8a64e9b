"""Shared fixtures of the unit tests: an isolated environment and a project folder in ``tmp_path``.

Nothing here is autouse; a test module opts in with
``pytestmark = pytest.mark.usefixtures("isolated_env")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the developer's ``ICEFIELD*`` / ``PYICEBERG*`` variables and home folder (pyiceberg reads
    ``~/.pyiceberg.yaml``), so a test sees only what it sets itself."""
    for key in list(os.environ):
        if key.startswith(("ICEFIELD", "PYICEBERG")):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


ProjectFactory = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    """Return ``make(pipelines=None, project=None, root=None) -> Path``: writes ``icefield.yaml`` (the
    mapping ``project``, default a bare name) and one ``pipelines/<name>.yaml`` per pipeline mapping
    (keyed by name) into ``root`` (default ``tmp_path / "proj"``)."""

    def make(
        pipelines: dict[str, dict[str, Any]] | None = None,
        project: dict[str, Any] | None = None,
        root: Path | None = None,
    ) -> Path:
        root = root or tmp_path / "proj"
        root.mkdir(parents=True, exist_ok=True)
        (root / "icefield.yaml").write_text(yaml.safe_dump(project or {"name": "test"}), encoding="utf-8")
        if pipelines:
            (root / "pipelines").mkdir(exist_ok=True)
            for name, body in pipelines.items():
                (root / "pipelines" / f"{name}.yaml").write_text(
                    yaml.safe_dump({"name": name, **body}, sort_keys=False), encoding="utf-8"
                )
        return root

    return make
