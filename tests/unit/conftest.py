"""Shared fixtures of the unit tests: a project folder in ``tmp_path`` and a ``lake`` (that project with
its embedded SQLite catalog). Isolation from the developer's environment is in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

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


class Lake:
    """A project folder with its embedded SQLite catalog: run pipelines and read their tables back."""

    def __init__(self, root: Path) -> None:
        from icefield.catalog import open_catalog
        from icefield.config import load_project

        self.root = root
        self.catalog = open_catalog(load_project(root, env={}))

    def project(self) -> Any:
        from icefield.config import load_project

        return load_project(self.root, env={})

    def run(self, name: str, **kwargs: Any) -> Any:
        from icefield import run_pipeline

        return run_pipeline(self.project(), name, catalog=self.catalog, **kwargs)

    def table(self, name: str) -> Any:
        return self.catalog.load_table(name)

    def rows(self, name: str, *sort_by: str) -> list[dict[str, Any]]:
        """The rows of table ``name`` (``namespace.table``), sorted by ``sort_by`` (default: all columns)."""
        rows = self.table(name).scan().to_arrow().to_pylist()
        return sorted(rows, key=lambda r: tuple(_sortable(r[c]) for c in (sort_by or sorted(r))))

    def snapshot_count(self, name: str) -> int:
        return len(self.table(name).metadata.snapshots)

    def close(self) -> None:
        self.catalog.engine.dispose()


def _sortable(v: Any) -> tuple[bool, Any]:
    return (v is not None, v if v is not None else 0)


@pytest.fixture
def lake(make_project: ProjectFactory) -> Iterator[Callable[..., Lake]]:
    """Return ``lake(pipelines, project=None) -> Lake``: a project (see ``make_project``) with its catalog,
    disposed at teardown."""
    opened: list[Lake] = []

    def make(pipelines: dict[str, dict[str, Any]], project: dict[str, Any] | None = None) -> Lake:
        lk = Lake(make_project(pipelines, project))
        opened.append(lk)
        return lk

    yield make
    for lk in opened:
        lk.close()
