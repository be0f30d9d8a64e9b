"""Two runs in one process, in two threads (as a service or an Airflow worker runs them), land the same
tables as two processes do, and leave the process's garbage collector as it was."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import yaml

QUARANTINE_COLUMNS = ("pipeline", "check", "reason", "raw")
"""What a quarantined row says of itself (its run id, time and file path differ from run to run)."""


def _orders(root: Path) -> Path:
    """A merging pipeline (keys, newest ``updated`` wins, four files: four batches) with rows that fail
    a check."""
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    for f in range(4):
        rows = [
            f'{{"id": {i}, "status": "s{f}", "amount": {i * 10 + f}, "updated": {f}}}' for i in range(f * 20, f * 20 + 60)
        ] + [f'{{"id": null, "status": "bad", "amount": {f}, "updated": {f}}}']
        (root / "data" / f"orders-{f}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "orders"}))
    pipe = {
        "name": "orders",
        "source": {
            "type": "files",
            "path": "data/*.jsonl",
            "format": "jsonl",
            "columns": {"id": "long", "status": "string", "amount": "long", "updated": "long"},
        },
        "checks": [{"not_null": ["id"]}],
        "target": {"table": "shop.orders", "mode": "merge", "keys": ["id"], "order_by": "updated"},
    }
    (root / "pipelines" / "orders.yaml").write_text(yaml.safe_dump(pipe))
    return root


def _events(root: Path) -> Path:
    """An appending pipeline of another project (three files: three batches), with rows out of range."""
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    for f in range(3):
        rows = [f'{{"event": {f * 1000 + i}, "kind": "k{i % 3}", "value": {(i * 7) % 120}}}' for i in range(200)]
        (root / "data" / f"events-{f}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "events"}))
    pipe = {
        "name": "events",
        "source": {
            "type": "files",
            "path": "data/*.jsonl",
            "format": "jsonl",
            "columns": {"event": "long", "kind": "string", "value": "long"},
        },
        "checks": [{"range": {"column": "value", "min": 0, "max": 100}}],
        "target": {"table": "raw.events"},
    }
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(pipe))
    return root


def _tables(root: Path, table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows of ``table`` and of its quarantine, sorted."""
    from icefield.catalog import open_catalog
    from icefield.config import load_project

    catalog = open_catalog(load_project(root, env={}))
    try:
        data = catalog.load_table(table).scan().to_arrow()
        quarantine = catalog.load_table(f"{table}__quarantine").scan(selected_fields=QUARANTINE_COLUMNS).to_arrow()
        return (
            sorted(tuple(r.values()) for r in data.to_pylist()),
            sorted(tuple(r[c] for c in QUARANTINE_COLUMNS) for r in quarantine.to_pylist()),
        )
    finally:
        catalog.engine.dispose()


@pytest.mark.parametrize("tuned", [False, True], ids=["library-calls", "both-tuned"])
def test_two_runs_in_two_threads_land_what_two_processes_land_and_give_the_collector_back(tmp_path: Path, tuned: bool) -> None:
    """The runs overlap on purpose: the first starts, the second starts, the first ends while the second
    goes on, the second ends. Each thread either calls run_pipeline as a library does (no tuning) or
    enters icefield.process.tuned itself, as a worker running pipelines does. A run used to save the
    collector's thresholds when it started and restore them when it ended: the second, started while the
    first had the process tuned, restored the tuned thresholds for good (and the first unfroze the
    objects the second had frozen)."""
    from icefield.config import load_project
    from icefield.pipeline import run_pipeline

    def tuning() -> AbstractContextManager[Any]:
        if not tuned:
            return nullcontext()
        from icefield import process

        return process.tuned()

    orders, events = _orders(tmp_path / "threads" / "orders"), _events(tmp_path / "threads" / "events")
    shutil.copytree(tmp_path / "threads", tmp_path / "processes")
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0

    second_started, first_done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}
    seen_after_first: list[tuple[int, tuple[int, int, int]]] = []

    def first() -> None:
        def on_batch(_: object) -> None:
            assert second_started.wait(60), "the second run did not start"

        try:
            with tuning():
                results["orders"] = run_pipeline(load_project(orders, env={}), "orders", on_batch=on_batch)
        finally:
            first_done.set()

    def second() -> None:
        def on_batch(_: object) -> None:
            second_started.set()
            assert first_done.wait(60), "the first run did not end"
            seen_after_first.append((gc.get_freeze_count(), gc.get_threshold()))

        with tuning():
            results["events"] = run_pipeline(load_project(events, env={}), "events", on_batch=on_batch)

    errors: list[BaseException] = []

    def guarded(fn: Any) -> Any:
        def go() -> None:
            try:
                fn()
            except BaseException as e:  # reported by the test below
                errors.append(e)

        return go

    t1 = threading.Thread(target=guarded(first), name="orders")
    t1.start()
    t2 = threading.Thread(target=guarded(second), name="events")
    t2.start()
    t1.join(300)
    t2.join(300)
    assert not errors, errors
    assert (results["orders"].status, len(results["orders"].batches)) == ("success", 4)
    assert (results["events"].status, len(results["events"].batches)) == ("success", 3)
    assert len(seen_after_first) == 3
    if tuned:  # the second run stays tuned after the first one left
        assert all(frozen > 0 and t[0] == max(before[0], 50_000) for frozen, t in seen_after_first)
    else:  # library calls leave the collector alone
        assert seen_after_first == [(0, before)] * 3
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0, "the collector as it was before the runs"

    # The same two projects, each run by the icefield program in its own process.
    procs = [
        subprocess.Popen([sys.executable, "-m", "icefield.cli", "--project", str(tmp_path / "processes" / name), "run"], stderr=subprocess.PIPE, text=True)
        for name in ("orders", "events")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]

    for name, table in (("orders", "shop.orders"), ("events", "raw.events")):
        in_threads = _tables(tmp_path / "threads" / name, table)
        in_processes = _tables(tmp_path / "processes" / name, table)
        assert in_threads == in_processes, name
        assert in_threads[0] and in_threads[1], f"{name}: rows and quarantined rows"
