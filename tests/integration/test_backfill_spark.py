"""Backfill by date window on ``engine: spark`` (marker ``spark``): each window is one ``MERGE ... ON FALSE``
on the staging branch (the batch inserted, the window's stored rows deleted by ``WHEN NOT MATCHED BY
SOURCE``), fast-forwarded to ``main`` with no position; run twice it gives the same table, and the rows
outside the window and the regular run's position stay as they were. One Spark session (local[2])."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from icefield import Window, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.config.window import SUMMARY_WINDOW
from icefield.iceberg.history import head_id, read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _csv(rows: list[tuple[int, int, str]]) -> str:
    return "id,amount,updated_at\n" + "".join(f"{i},{a},{t}\n" for i, a, t in rows)


def _rows(catalog: Any) -> list[dict[str, Any]]:
    return sorted(catalog.load_table("raw.orders").scan().to_arrow().to_pylist(), key=lambda r: r["id"])


def test_a_spark_backfill_replaces_its_windows_in_one_snapshot_each(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "icefield.yaml", "name: sparkwin\nengine: spark\nspark: {master: 'local[2]', memory: 1g}\n")
    _write(
        root, "pipelines/orders.yaml",
        "name: orders\nsource: {type: files, path: 'data/*.csv', format: csv}\ntarget: {table: raw.orders}\n"
        "window: {column: updated_at, size: 1d}\n",
    )
    days = [(d * 10 + n, d * 100 + n, f"2026-01-0{d}T{n * 6:02d}:00:00") for d in range(1, 5) for n in range(3)]
    _write(root, "data/a.csv", _csv(days))
    project = load_project(root)
    catalog = open_catalog(project)
    from icefield.engines.spark_session import project_session

    # The test's own session, stopped at the end: the Spark modules after this one start sessions of their
    # own projects (a session left running would be reused on this project's catalog).
    session = project_session(project)
    try:
        _backfill_twice(root, project, catalog, days)
    finally:
        session.stop()


def _backfill_twice(root: Path, project: Any, catalog: Any, days: list[tuple[int, int, str]]) -> None:
    run_pipeline(project, "orders", catalog=catalog)
    position = read_position(catalog.load_table("raw.orders"), "orders")
    before = _rows(catalog)
    # In the window: 21 changes, 32 goes, 33 comes late; outside it: 11 changes (a backfill does not read it).
    changed = [(i, 1 if i in (21, 11) else a, t) for i, a, t in days if i != 32] + [(33, 7, "2026-01-03T23:00:00")]
    _write(root, "data/a.csv", _csv(changed))

    hashes = []
    for _ in range(2):
        main = head_id(catalog.load_table("raw.orders"))
        result = run_pipeline(project, "orders", catalog=catalog, window=_window())
        assert result.status == "success" and [b.window for b in result.batches] == ["2026-01-02..2026-01-03", "2026-01-03..2026-01-04"]
        table = catalog.load_table("raw.orders")
        new = [s for s in table.metadata.snapshots if s.snapshot_id not in _ancestors(table, main)]
        assert sorted(s.summary.additional_properties[SUMMARY_WINDOW] for s in new) == ["2026-01-02..2026-01-03", "2026-01-03..2026-01-04"]
        assert read_position(table, "orders") == position
        rows = _rows(catalog)
        hashes.append((len(rows), hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()))
        amounts = {r["id"]: r["amount"] for r in rows}
        assert amounts[21] == 1 and 32 not in amounts and amounts[33] == 7  # the window: as the source has it
        assert amounts[11] == 101 and [r for r in rows if r["id"] < 20 or r["id"] >= 40] == [r for r in before if r["id"] < 20 or r["id"] >= 40]
    assert hashes[0] == hashes[1] and hashes[0][0] == len(days)


def _window() -> Window:
    import datetime as dt

    return Window(dt.date(2026, 1, 2), dt.date(2026, 1, 4))


def _ancestors(table: Any, snapshot_id: int | None) -> set[int]:
    from icefield.iceberg.history import ancestors

    return {s.snapshot_id for s in ancestors(table.metadata, snapshot_id)} if snapshot_id is not None else set()
