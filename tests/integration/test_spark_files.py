"""On ``engine: spark``, Spark reads ``files`` sources itself (marker ``spark``).

Two projects read the same drop of files (a folder both list in ``source.roots``), one on each engine. The files
source still decides which files are new, what each batch holds and the positions; on Spark, once the table
exists, the chosen files are read by Spark's ``binaryFile`` source and decoded in Spark's Python workers by the
source's own decoders with the table's types. Only the records a check may refuse and those the decoders refuse
or cannot decode as the table is (a bad value, a record of the wrong shape, a key the table lacks) come back to
the run, to be decided as on the local engine; a CSV or Parquet file whose columns are not the table's is read
by the run itself (the table evolves there). After each run the tables, the quarantines (check, reason, raw
record, coordinates), the counts of every batch and the positions are the same on both engines, with batches that
cut files and group them, a changed file that replaces its rows, and a second run that reads only what is new.

One Spark session (local[2]) serves the module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icefield import Project, load_project, run_pipeline
from icefield.catalog import open_catalog
from icefield.iceberg.history import read_position

pytestmark = [
    pytest.mark.spark,
    pytest.mark.timeout(900),
    # pyspark leaves the sockets of its JVM round trips (collect, py4j) to the garbage collector.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket:ResourceWarning"),
]

CHECKS = "checks:\n  - range: {column: amount, min: 0}\n  - not_null: [id]\n"
PIPELINES = {
    # CSV files grouped into batches of 200 records (a batch ends in one file and goes on in the next).
    "csvs": ("drop/csv/*.csv", "raw.csvs", 200, True),
    # JSON Lines, a batch every 100 records.
    "events": ("drop/jsonl/*.jsonl", "raw.events", 100, False),
    "parq": ("drop/parquet/*.parquet", "raw.parq", 100, False),
}


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _project(root: Path, engine: str, drop: Path) -> Project:
    _write(root / "icefield.yaml", f"name: files\nengine: {engine}\nspark: {{master: 'local[2]', memory: 1g}}\n")
    for name, (glob, table, size, group) in PIPELINES.items():
        source = {"type": "files", "path": str(drop.parent / glob), "roots": [str(drop)], "group_files": group}
        _write(
            root / "pipelines" / f"{name}.yaml",
            f"name: {name}\nsource: {json.dumps(source)}\ntarget: {{table: {table}}}\nbatch_size: {size}\n" + CHECKS,
        )
    project = load_project(root)
    open_catalog(project)
    return project


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared") / "drop"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, drop: Path) -> dict[str, Project]:
    base = tmp_path_factory.mktemp("files")
    drop.mkdir(parents=True, exist_ok=True)
    return {engine: _project(base / engine, engine, drop) for engine in ("local", "spark")}


@pytest.fixture(scope="module")
def spark(projects: dict[str, Project]) -> Iterator[Any]:
    from icefield.engines.spark_session import project_session

    session = project_session(projects["spark"])
    try:
        yield session
    finally:
        session.stop()


def _csv(start: int, n: int, header: str = "id,kind,amount", extra: str = "") -> str:
    lines = [header] + [f"{i},k{i % 5},{i * 0.25 + 0.5}{extra}" for i in range(start, start + n)]
    return "\n".join(lines) + "\n"


def _jsonl(start: int, n: int) -> list[str]:
    return [json.dumps({"id": i, "kind": f"k{i % 5}", "amount": i * 0.25 + 0.5}) for i in range(start, start + n)]


def _parquet(path: Path, start: int, n: int, amounts: list[Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(range(start, start + n))
    amount = pa.array(amounts) if amounts is not None else pa.array([i * 0.25 + 0.5 for i in ids], pa.float64())
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "kind": [f"k{i % 5}" for i in ids], "amount": amount}), path)


def _rows(project: Project, table: str) -> tuple[int, str]:
    data = open_catalog(project).load_table(table).scan().to_arrow()
    rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in data.to_pylist())
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _quarantine(project: Project, table: str) -> list[tuple[Any, ...]]:
    catalog = open_catalog(project)
    name = table + "__quarantine"
    if not catalog.table_exists(name):
        return []
    data = catalog.load_table(name).scan().to_arrow()
    return sorted((r["pipeline"], r["batch_id"], r["check"], r["reason"], r["raw"], r["source"]) for r in data.to_pylist())


def _counts(result: Any) -> list[tuple[Any, ...]]:
    return [
        (b.batch_id, b.rows_in, b.rows_committed, b.rows_quarantined, b.rows_filtered, b.replaced_file, b.skipped)
        for b in result.batches
    ]


def _run_both(
    projects: dict[str, Project], name: str, caplog: pytest.LogCaptureFixture, max_batches: int | None = None
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Run ``name`` on both engines and check they land the same; returns the results and, of the Spark run,
    the ``(files, rows)`` of each read Spark made of the source."""
    results: dict[str, Any] = {}
    reads: list[tuple[int, int]] = []
    for engine, project in projects.items():
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="icefield.engines.spark"), caplog.at_level(logging.INFO, logger="icefield.ingest.files"):
            results[engine] = run_pipeline(project, name, max_batches=max_batches)
        print(f"{name} on {engine}: {time.monotonic() - started:.1f}s, {len(results[engine].batches)} batches")
        assert results[engine].status == "success", results[engine].error
        found = [re.match(r"the engine read (\d+) of \d+ files \((\d+) records\)", r.getMessage()) for r in caplog.records]
        if any(found):
            assert any(r.getMessage().startswith("spark read ") for r in caplog.records), "Spark read the files"
        if engine == "spark":
            reads = [(int(m[1]), int(m[2])) for m in found if m]
            results["log"] = [r.getMessage() for r in caplog.records]
        else:
            assert not any(found)
    local, spark = projects["local"], projects["spark"]
    table = PIPELINES[name][1]
    assert _counts(results["spark"]) == _counts(results["local"])
    assert results["spark"].conserved and results["local"].conserved
    assert _rows(spark, table) == _rows(local, table)
    assert _quarantine(spark, table) == _quarantine(local, table)
    sp, lp = (read_position(open_catalog(p).load_table(table), name) for p in (spark, local))
    assert sp == lp and sp is not None
    return results, reads


def test_spark_reads_csv_files_as_the_local_engine_does(
    projects: dict[str, Project], spark: Any, drop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = drop / "csv"
    # The first run creates the table: read by the run on both engines (Spark needs the table's types).
    _write(folder / "a0.csv", _csv(0, 30))
    results, reads = _run_both(projects, "csvs", caplog)
    assert reads == [] and results["spark"].rows_committed == 30
    # a1: 250 records, among them a value that is no number, a record of the wrong shape and a negative amount
    # (a check); b: 120 records, grouped with a1's last 50; c has a column the table lacks (read by the run, the
    # table gains it on both); d comes after it.
    lines = _csv(100, 250).splitlines()
    lines[10] = "109,k4,12abc"
    lines[20] = "119,k4"
    lines[30] = "129,k4,-3.5"
    _write(folder / "a1.csv", "\n".join(lines) + "\n")
    _write(folder / "b.csv", _csv(400, 120))
    _write(folder / "c.csv", _csv(600, 60, header="id,kind,amount,note", extra=",hello"))
    _write(folder / "d.csv", _csv(700, 90))
    results, reads = _run_both(projects, "csvs", caplog)
    assert reads == [(3, 460)], "Spark read a1, b and d itself; c has a new column and is read by the run"
    assert results["spark"].rows_in == 520 and results["spark"].rows_quarantined == 3
    assert len(results["spark"].batches) == 4  # a1[0:200), a1[200:250) + b, c, d
    assert "note" in open_catalog(projects["spark"]).load_table("raw.csvs").schema().column_names
    # Next run: only the new files and b, which changed (its rows are replaced in the same commit). Spark's reader
    # leaves out a name that starts with '_': the run reads _f itself, and its rows share a batch with those of a2,
    # which Spark holds, as on the local engine.
    lines = _csv(950, 10).splitlines()
    lines[2], lines[4] = "951,k1,-0.5", "953,k3,x"
    _write(folder / "_f.csv", "\n".join(lines) + "\n")
    lines = _csv(900, 40).splitlines()
    lines[7] = "906,k1,-7.25"
    _write(folder / "a2.csv", "\n".join(lines) + "\n")
    _write(folder / "b.csv", _csv(400, 125))
    results, reads = _run_both(projects, "csvs", caplog)
    assert reads == [(2, 165)]
    assert [b.rows_in for b in results["spark"].batches] == [50, 125] and results["spark"].rows_quarantined == 3
    assert results["spark"].rows_in == 175 and [b.replaced_file for b in results["spark"].batches].count(f"{drop}/csv/b.csv") == 1
    # Nothing new: nothing read.
    results, reads = _run_both(projects, "csvs", caplog)
    assert results["spark"].rows_in == 0 and reads == []


def test_spark_reads_json_lines_files_as_the_local_engine_does(
    projects: dict[str, Project], spark: Any, drop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = drop / "jsonl"
    _write(folder / "a0.jsonl", "\n".join(_jsonl(0, 20)) + "\n")
    results, reads = _run_both(projects, "events", caplog)
    assert reads == []
    # 230 records and a blank line: not JSON, not UTF-8, a text amount, a negative amount (a check), and a key
    # the table lacks (the table gains it on both).
    records = [line.encode() for line in _jsonl(100, 225)]
    records[5:5] = [b"not json", b'{"id": 1, "kind": "\xff\xfe", "amount": 1.0}', b'{"id": 2, "kind": "k", "amount": "12abc"}']
    records[150:150] = [b'{"id": 3, "kind": "k", "amount": -2.5}', b"", b'{"id": 4, "kind": "k", "amount": 1.5, "note": "new"}']
    _write(folder / "a1.jsonl", b"\n".join(records) + b"\n")
    # A run that stops after one batch leaves the file half loaded; the next one goes on from there.
    results, reads = _run_both(projects, "events", caplog, max_batches=1)
    assert reads == [(1, 230)] and results["spark"].rows_in == 100 and results["spark"].rows_quarantined == 3
    position = read_position(open_catalog(projects["spark"]).load_table("raw.events"), "events")
    assert position is not None and position["partial"]["rows"] == 100
    results, reads = _run_both(projects, "events", caplog)
    assert reads == [(1, 230)]
    assert results["spark"].rows_in == 130 and results["spark"].rows_quarantined == 1
    assert len(results["spark"].batches) == 2
    assert "note" in open_catalog(projects["spark"]).load_table("raw.events").schema().column_names
    _write(folder / "a2.jsonl", "\n".join(_jsonl(500, 30)) + "\n")
    results, reads = _run_both(projects, "events", caplog)
    assert reads == [(1, 30)] and results["spark"].rows_in == 30


def test_spark_reads_parquet_files_as_the_local_engine_does(
    projects: dict[str, Project], spark: Any, drop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = drop / "parquet"
    _parquet(folder / "a0.parquet", 0, 20)
    results, reads = _run_both(projects, "parq", caplog)
    assert reads == []
    # 180 rows whose amounts are text: one is no number, one is negative (a check). And a file whose pages are
    # broken (its footer is whole): Spark's worker cannot decode it, the run reads it and quarantines it whole.
    amounts = [str(i * 0.25) for i in range(180)]
    amounts[7], amounts[150] = "12abc", "-1.5"
    _parquet(folder / "a1.parquet", 100, 180, amounts)
    _parquet(folder / "a2.parquet", 300, 50)
    broken = bytearray((folder / "a2.parquet").read_bytes())
    broken[8:200] = b"\xab" * 192
    _write(folder / "a2.parquet", bytes(broken))
    assert pq.read_schema(folder / "a2.parquet").names == ["id", "kind", "amount"]
    results, reads = _run_both(projects, "parq", caplog)
    assert reads == [(1, 180)]
    assert f"{drop}/parquet/a2.parquet: the engine could not decode it whole as this source does; it is read here" in results["log"]
    assert results["spark"].rows_in == 181 and results["spark"].rows_quarantined == 3
    assert len(results["spark"].batches) == 3
