"""Reading ahead hands items over in order, raises a producer's error where it belongs, and never leaves
its thread running under a source that the caller closes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icefield.ingest.ahead import read_ahead


def test_items_arrive_in_order_and_the_producer_runs_ahead() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(6):
            produced.append(i)
            yield i

    got = []
    ahead = read_ahead(items(), lambda: None, 1, "t")
    for i in ahead:
        if i == 0:
            deadline = time.monotonic() + 5
            while len(produced) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(produced) >= 2, "the next item is produced while the caller works on this one"
        got.append(i)
    assert got == list(range(6))


def test_an_error_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad batch 3")

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for i in read_ahead(items(), lambda: None, 2, "t"):
            got.append(i)
    assert got == [1, 2]


def test_stopping_early_stops_the_producer_and_joins_it_before_returning() -> None:
    stop = threading.Event()
    closed_in: list[str] = []

    def items() -> Iterator[int]:
        try:
            i = 0
            while not stop.is_set():
                yield i
                i += 1
        finally:
            closed_in.append(threading.current_thread().name)

    ahead = read_ahead(items(), stop.set, 1, "reader-thread")
    assert next(ahead) == 0
    ahead.close()
    assert closed_in == ["reader-thread"], "the producer's generator is closed, in its own thread, before close() returns"
    assert not any(t.name == "reader-thread" for t in threading.enumerate())


def test_an_error_of_the_caller_also_joins_the_producer() -> None:
    started = threading.Event()

    def items() -> Iterator[int]:
        started.set()
        yield from range(1000)

    with pytest.raises(RuntimeError):
        ahead = read_ahead(items(), lambda: None, 1, "reader-2")
        try:
            for _ in ahead:
                raise RuntimeError("write failed")
        finally:
            ahead.close()
    assert started.is_set()
    assert not any(t.name == "reader-2" for t in threading.enumerate())


def test_a_pipeline_reads_ahead_or_in_turn_with_the_same_result(tmp_path: Path) -> None:
    """The files source through the runner: the same tables with read_ahead 0, 1 and 3."""
    import json

    import yaml

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.pipeline.runner import run_pipeline

    tables = []
    for depth in (0, 1, 3):
        root = tmp_path / f"p{depth}"
        (root / "pipelines").mkdir(parents=True)
        (root / "data").mkdir()
        for f in range(5):
            lines = [json.dumps({"id": f * 100 + i, "v": f"f{f}-{i}"}) for i in range(50)]
            (root / "data" / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
        (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "ra", "read_ahead": depth}))
        pipe = {"name": "ev", "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl"},
                "target": {"table": "raw.ev"}}  # fmt: skip
        (root / "pipelines" / "ev.yaml").write_text(yaml.safe_dump(pipe))
        project = load_project(root)
        result = run_pipeline(project, "ev")
        assert (result.status, result.rows_in, result.rows_committed, len(result.batches)) == ("success", 250, 250, 5)
        table = open_catalog(project).load_table("raw.ev").scan(selected_fields=("id", "v")).to_arrow().sort_by("id")
        tables.append(table.to_pylist())
        assert run_pipeline(project, "ev").batches == [], "a rerun reads nothing new"
    assert tables[0] == tables[1] == tables[2]
    assert [r["id"] for r in tables[0]] == sorted(f * 100 + i for f in range(5) for i in range(50))


def _gc_project(tmp_path: Path) -> Any:
    import yaml

    from icefield.config import load_project

    root = tmp_path / "p"
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "gc"}))
    pipe = {"name": "ev", "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl"}, "target": {"table": "raw.ev"}}
    (root / "pipelines" / "ev.yaml").write_text(yaml.safe_dump(pipe))
    return load_project(root)


def test_a_run_called_directly_leaves_the_garbage_collector_alone(tmp_path: Path) -> None:
    """A library call (a service, an Airflow worker) changes no process state: run_pipeline used to freeze
    the objects of the whole process and change its collection thresholds, for every caller, and two runs
    in two threads gave back each other's settings."""
    import gc

    from icefield.pipeline import runner

    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    during: list[tuple[int, tuple[int, ...]]] = []
    result = runner.run_pipeline(_gc_project(tmp_path), "ev", on_batch=lambda _: during.append((gc.get_freeze_count(), gc.get_threshold())))
    assert result.rows_committed == 2
    assert during == [(0, before)]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_tuned_run_keeps_what_existed_before_it_out_of_full_collections_and_gives_it_back(tmp_path: Path) -> None:
    """Inside icefield.process.tuned (as the icefield program runs it), run_pipeline freezes the objects that
    exist when it starts (gc.freeze: full collections, set off by a stream of messages, then skip them)
    and young collections are spaced out; both are given back when the tuning ends, also when the run
    fails."""
    import gc

    from icefield import process
    from icefield.errors import IcefieldError
    from icefield.pipeline import runner

    project = _gc_project(tmp_path)
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    during: list[tuple[int, tuple[int, ...]]] = []
    with process.tuned():
        result = runner.run_pipeline(project, "ev", on_batch=lambda _: during.append((gc.get_freeze_count(), gc.get_threshold())))
    assert result.rows_committed == 2 and during
    frozen, thresholds = during[0]
    assert frozen > 1000 and thresholds[0] == max(before[0], process.YOUNG_COLLECTION_EVERY) and thresholds[1:] == before[1:]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before

    def fail(_: object) -> None:
        raise IcefieldError("stop here")

    (project.root / "data" / "b.jsonl").write_text('{"id": 3}\n')
    with pytest.raises(IcefieldError, match="stop here"), process.tuned():
        runner.run_pipeline(project, "ev", on_batch=fail)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
