"""The event stream of a run (issue 15, part 4): typed events to every observer registered on a run, counts
that add up and match the run's result, snapshot ids that are the table's, a run-finished event however the
run ends, and JSON log lines that carry the run's ids during a batch. Before, counts such as rows updated or
files read reached no result, `RunResult` had no times and no source, and the JSON formatter printed
`run_id`, `pipeline` and `batch_id` but nothing set them."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from icefield import failpoints
from icefield.catalog import open_catalog
from icefield.cli.output import Output
from icefield.config import load_project
from icefield.demo import run_demo
from icefield.errors import TransientError
from icefield.iceberg.history import SUMMARY_BATCH_ID, ancestors, head_id
from icefield.observe import JsonFormatter
from icefield.observe.events import (
    BatchCommitted,
    BatchStarted,
    ContextFilter,
    ErrorRaised,
    Event,
    RunFinished,
    RunStarted,
)
from icefield.pipeline import run_pipeline, run_plan


class _Recorder(logging.Handler):
    """Keeps, in one list and in order, the events an observer receives and the JSON log lines emitted."""

    def __init__(self, stream: list[tuple[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.addFilter(ContextFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.append(("log", json.loads(self.format(record))))

    def observe(self, event: Event) -> None:
        self.stream.append(("event", event))


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    stream: list[tuple[str, Any]] = []
    handler = _Recorder(stream)
    # Every line of icefield's loggers reaches the root, whatever level an earlier command set on them.
    loggers = [logging.getLogger(), logging.getLogger("icefield"), logging.getLogger("icefield.events")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    loggers[0].addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    loggers[1].propagate = loggers[2].propagate = True
    try:
        yield handler
    finally:
        loggers[0].removeHandler(handler)
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate


def _events(rec: _Recorder) -> list[Event]:
    return [e for kind, e in rec.stream if kind == "event"]


def test_an_observer_receives_the_events_of_the_demo_with_counts_that_add_up(tmp_path: Path, recorder: _Recorder) -> None:
    report = run_demo(tmp_path / "demo", fresh=False, out=Output(as_json=True), observers=[recorder.observe])
    assert report["ok"], report["checks"]
    events = _events(recorder)
    kinds = Counter(e.kind for e in events)
    # Every kind the demo goes through: loads, a gate that holds a batch (an error), then publishes it.
    for kind in ("run_started", "batch_started", "batch_committed", "gate_evaluated", "batch_held", "batch_published", "error", "run_finished"):
        assert kinds[kind] > 0, (kind, kinds)

    # Each run: started first, finished last, and its finish sums its batches (the result's numbers).
    runs: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in events:
        runs[(e.run_id, e.pipeline)].append(e)
    results = {(r["run_id"], r["pipeline"]): r for step in report["runs"].values() for r in step}
    for key, evs in runs.items():
        assert isinstance(evs[0], RunStarted) and isinstance(evs[-1], RunFinished), [e.kind for e in evs]
        assert [e.kind for e in evs].count("run_finished") == 1
        finished = evs[-1]
        assert isinstance(finished, RunFinished)
        batches = [e for e in evs if isinstance(e, BatchCommitted) and not e.skipped]
        assert finished.rows_in == sum(b.rows_in for b in batches)
        assert finished.rows_committed == sum(b.rows_committed for b in batches)
        assert finished.rows_quarantined == sum(b.rows_quarantined for b in batches)
        assert finished.started_at <= finished.finished_at
        assert finished.source is not None and "://" in finished.source.uri
        if key in results:  # the runs of the three loads: the result says what the events said
            r = results[key]
            assert (r["rows_in"], r["rows_committed"], r["rows_quarantined"], r["status"]) == (
                finished.rows_in, finished.rows_committed, finished.rows_quarantined, finished.status
            )
            assert [b["snapshot_id"] for b in r["batches"] if not b["skipped"]] == [b.snapshot_id for b in batches]
        if finished.status == "held":
            assert any(e.kind == "batch_held" for e in evs) and any(isinstance(e, ErrorRaised) and e.exit_code == 1 for e in evs)

    # Every batch: rows in = committed + quarantined + filtered, and its snapshot is the table's, on main,
    # tagged with the batch's id.
    catalog = open_catalog(load_project(tmp_path / "demo"))
    committed = [e for e in events if isinstance(e, BatchCommitted) and not e.skipped]
    assert sum(e.rows_quarantined for e in committed) > 0 and sum(e.rows_updated for e in committed) > 0
    assert sum(e.bytes_added for e in committed) > 0
    for e in committed:
        assert e.rows_in == e.rows_committed + e.rows_quarantined + e.rows_filtered, e
        if e.snapshot_id is None:
            continue
        table = catalog.load_table(e.table)
        on_main = {s.snapshot_id for s in ancestors(table.metadata, head_id(table))}
        assert e.snapshot_id in on_main, (e.table, e.batch_id)
        snap = table.snapshot_by_id(e.snapshot_id)
        assert snap is not None and snap.summary is not None
        assert snap.summary.additional_properties[SUMMARY_BATCH_ID] == e.batch_id
        assert int(snap.summary.additional_properties.get("added-files-size", 0)) == e.bytes_added


def test_every_json_log_line_during_a_batch_carries_the_run_the_pipeline_and_the_batch(tmp_path: Path, recorder: _Recorder) -> None:
    run_demo(tmp_path / "demo", fresh=False, out=Output(as_json=True), observers=[recorder.observe])
    current: Event | None = None
    during = 0
    other_loggers = set()
    for kind, item in recorder.stream:
        if kind == "event":
            if isinstance(item, BatchStarted):
                current = item
            elif isinstance(item, (BatchCommitted, ErrorRaised)):
                current = None
            continue
        if current is None:
            continue
        during += 1
        assert (item.get("run_id"), item.get("pipeline"), item.get("batch_id")) == (current.run_id, current.pipeline, current.batch_id), item  # type: ignore[attr-defined]
        if item["logger"] != "icefield.events":
            other_loggers.add(item["logger"])
    # Not only the logging observer's own lines: the engine's and the write path's too.
    assert during > 20 and other_loggers, (during, other_loggers)


def _files_project(root: Path, pipe: dict[str, Any], files: dict[str, list[dict[str, Any]]]) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "ev"}))
    for name, rows in files.items():
        (root / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {"name": "events", "source": {"type": "files", "path": "data/*.jsonl"}, **pipe}
    (root / "pipelines" / "events.yaml").write_text(yaml.safe_dump(body))
    return root


def test_a_failed_run_ends_with_run_finished_failed_and_names_the_pending_batch(tmp_path: Path, recorder: _Recorder) -> None:
    root = _files_project(
        tmp_path, {"target": {"table": "raw.events"}}, {f"f{i}.jsonl": [{"id": i, "v": "x"}] for i in range(3)}
    )
    hits = Counter[str]()

    def second_commit_fails(point: str) -> None:
        hits[point] += 1
        if point == "before-commit" and hits[point] == 2:
            raise TransientError("the catalog went away (injected)")

    previous = failpoints.install(second_commit_fails)
    try:
        with pytest.raises(TransientError) as info:
            run_pipeline(load_project(root), "events", observers=[recorder.observe])
    finally:
        failpoints.install(previous)
    events = _events(recorder)
    assert [e.kind for e in events] == [
        "run_started", "batch_started", "batch_committed", "batch_started", "error", "run_finished"
    ]
    error, finished = events[-2], events[-1]
    assert isinstance(error, ErrorRaised) and isinstance(finished, RunFinished)
    pending = events[3]
    assert isinstance(pending, BatchStarted)
    assert error.batch_id == pending.batch_id and error.exit_code == 75 and "went away" in error.error
    assert finished.status == "failed" and finished.pending_batch == pending.batch_id
    assert finished.rows_committed == 1 and len(finished.outputs) == 1 and finished.outputs[0].table == "raw.events"
    partial = info.value.result  # type: ignore[attr-defined]
    assert partial.status == "failed" and partial.finished_at == finished.finished_at
    assert partial.pending.batch_id == pending.batch_id
    json.dumps(partial.to_dict())  # times, source and tables are JSON values


def test_the_outputs_columns_are_loaded_only_for_an_observer_that_wants_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run loaded every table it wrote once more at its end, for lineage's schema facet, with lineage off
    too: now only an observer with ``wants_schemas`` (the lineage observer) costs that load."""
    from icefield.pipeline import runner

    root = _files_project(tmp_path, {"target": {"table": "raw.events"}}, {"a.jsonl": [{"id": 1, "v": "x"}]})
    loads: list[str] = []
    real = runner.output_columns
    monkeypatch.setattr(runner, "output_columns", lambda catalog, table, snap: loads.append(table) or real(catalog, table, snap))
    seen: list[Event] = []
    run_pipeline(load_project(root), "events", observers=[seen.append])
    finished = seen[-1]
    assert isinstance(finished, RunFinished) and [(t.table, t.columns) for t in finished.outputs] == [("raw.events", ())]
    assert loads == []

    class Wanting:
        wants_schemas = True

        def __call__(self, event: Event) -> None:
            seen.append(event)

    (root / "data" / "b.jsonl").write_text(json.dumps({"id": 2, "v": "y"}) + "\n")
    seen.clear()
    run_pipeline(load_project(root), "events", observers=[Wanting()])
    finished = seen[-1]
    assert isinstance(finished, RunFinished) and loads == ["raw.events"]
    assert {"id": "long", "v": "string"}.items() <= dict(finished.outputs[0].columns).items()


def test_schema_changes_maintenance_and_skipped_nodes_are_events(tmp_path: Path, recorder: _Recorder) -> None:
    root = _files_project(
        tmp_path / "p",
        {"target": {"table": "raw.events", "maintenance": {"compact_every": 2, "expire_older_than": "0s", "retain_last": 1}}},
        {"a.jsonl": [{"id": 1}], "b.jsonl": [{"id": 2, "extra": "new"}], "c.jsonl": [{"id": 3}]},
    )
    (root / "models").mkdir()
    (root / "models" / "broken.sql").write_text("-- target: marts.broken\nselect nonsense from raw.events\n")
    (root / "models" / "after.sql").write_text("-- target: marts.after\nselect * from marts.broken\n")
    run_plan(load_project(root), observers=[recorder.observe])
    by_kind = defaultdict(list)
    for e in _events(recorder):
        by_kind[e.kind].append(e)
    (changed,) = by_kind["schema_changed"]
    assert changed.table == "raw.events" and any("extra" in c for c in changed.changes)
    assert changed.batch_id == by_kind["batch_committed"][1].batch_id
    ops = [e.operation for e in by_kind["maintenance_done"]]
    assert "compact" in ops and "expire" in ops, ops
    compacted = next(e for e in by_kind["maintenance_done"] if e.operation == "compact")
    assert compacted.files_removed >= 2 and compacted.snapshot_id is not None
    (skipped,) = by_kind["node_skipped"]
    assert skipped.pipeline == "model.after" and "marts.broken" in skipped.reason
    failed = [e for e in by_kind["run_finished"] if e.status == "failed"]
    assert [e.pipeline for e in failed] == ["model.broken"]
    model_runs = [e for e in by_kind["run_started"] if e.pipeline.startswith("model.")]
    assert [e.source.kind for e in model_runs] == ["model"]


def test_the_source_uri_names_the_source_without_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from icefield.ingest.identity import source_ref

    monkeypatch.setenv("SHOP_DB_PASSWORD", "s3cr3t-pw")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "icefield.yaml").write_text(yaml.safe_dump({"name": "ids"}))
    pipes = {
        "orders": {"type": "sql", "url": "postgresql://app:${env:SHOP_DB_PASSWORD}@db.internal:5432/shop?sslmode=require&token=t0k", "table": "orders", "schema": "public", "cursor": "id"},
        "clicks": {"type": "kafka", "bootstrap_servers": "k1:9092,k2:9092", "topic": "clicks"},
        "files": {"type": "files", "path": "data/*.csv"},
    }
    for name, src in pipes.items():
        (tmp_path / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "source": src, "target": {"table": f"raw.{name}"}}))
    project = load_project(tmp_path)
    refs = {name: source_ref(project.pipeline(name), project.root) for name in pipes}
    assert refs["orders"].kind == "sql" and refs["orders"].uri == "postgresql://app@db.internal:5432/shop#public.orders"
    assert refs["clicks"].uri == "kafka://k1:9092,k2:9092/clicks"
    assert refs["files"].uri == "file://" + str((tmp_path / "data" / "*.csv").absolute())
    assert not any("s3cr3t" in r.uri or "t0k" in r.uri for r in refs.values())


def test_two_runs_in_two_threads_log_with_their_own_ids(tmp_path: Path, recorder: _Recorder) -> None:
    projects = [
        load_project(_files_project(tmp_path / name, {"target": {"table": f"raw.{name}"}}, {f"{i}.jsonl": [{"id": i}] for i in range(4)}))
        for name in ("one", "two")
    ]
    threads = [threading.Thread(target=run_pipeline, args=(p, "events"), kwargs={"observers": [recorder.observe]}) for p in projects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = _events(recorder)
    run_of = {e.run_id: e for e in events if isinstance(e, RunStarted)}
    assert len(run_of) == 2
    lines = [item for kind, item in recorder.stream if kind == "log" and item["logger"] == "icefield.events"]
    assert len(lines) == len(events)
    for line in lines:
        # Each line of a run's events carries that run's id, whatever the other thread was doing.
        assert line["run_id"] == line["event"]["run_id"]
        if "batch_id" in line["event"]:
            assert line["batch_id"] == line["event"]["batch_id"]
