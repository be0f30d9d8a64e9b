"""``icefield init``: a new project folder with a working example pipeline."""

from __future__ import annotations

from pathlib import Path

from icefield.errors import ConfigError

_PROJECT = """\
# icefield project. Keys: name, catalog {name, uri, properties}, warehouse, engine, namespace,
# batch_size, target_file_size_mb, profiles. Override any key with ICEFIELD__SECTION__KEY.
name: __NAME__
catalog:
  name: icefield
  # uri defaults to SQLite under .icefield/; for PostgreSQL:
  # uri: "postgresql+psycopg2://icefield:${env:CATALOG_PASSWORD}@127.0.0.1:5432/lake"
# warehouse: a folder (relative to the project) or an object store URI (s3://bucket/path); it may be
# a secret reference, as in the prod profile below.
warehouse: .icefield/warehouse
engine: local
profiles:
  prod:
    catalog:
      uri: "${env:ICEFIELD_CATALOG_URI}"
    warehouse: "${env:ICEFIELD_WAREHOUSE}"
"""

_PIPELINE = """\
name: events
description: Example pipeline; put JSON Lines files in data/events/ and run `icefield run`.
source: {type: files, path: "data/events/*.jsonl"}
target:
  table: raw.events
  mode: append
checks:
  - not_null: [id]
"""

_GITIGNORE = ".icefield/\n"


def init_project(directory: Path, name: str | None = None) -> list[str]:
    """Create the project files in ``directory`` (created if needed). Returns the paths created.

    Raises :class:`ConfigError` if ``directory`` already holds an ``icefield.yaml``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "icefield.yaml").exists():
        raise ConfigError(f"{directory / 'icefield.yaml'} already exists; pick an empty folder")
    files = {
        "icefield.yaml": _PROJECT.replace("__NAME__", name or directory.resolve().name),
        "pipelines/events.yaml": _PIPELINE,
        ".gitignore": _GITIGNORE,
        "models/.keep": "",
        "data/events/.keep": "",
    }
    created = []
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            created.append(rel)
    return created
