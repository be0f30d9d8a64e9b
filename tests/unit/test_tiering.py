"""Cold-data tiering (``icefield archive``, ``target.maintenance.archive_older_than``): the partitions of a
time-partitioned table older than an age are rewritten under an archive location in one ``replace``
snapshot; readers see the same rows; a second run does nothing; a concurrent merge makes it replan; once
the old snapshots expire, the data has left the table's own location. One test runs on a local folder and
on the S3 server (``tests/stores.py``)."""

from __future__ import annotations

import calendar
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner
from tests.stores import STORES, Store, make_store

from icefield.catalog import sql_catalog
from icefield.cli import EXIT_USAGE, cli
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.write import TableWriter
from icefield.write.tiering import archive_table

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("_deleted", pa.bool_())])
NOW = calendar.timegm((2026, 6, 30, 0, 0, 0))
# With 30d: the cutoff is 2026-05-31 00:00. Day 05-30 ends exactly then (old); 05-31 ends after it (recent).
OLD_DAYS = [(2026, 5, 1), (2026, 5, 2), (2026, 5, 30)]
RECENT_DAYS = [(2026, 5, 31), (2026, 6, 29)]


def _ts(day: tuple[int, int, int], hour: int = 12) -> int:
    return calendar.timegm((*day, hour, 0, 0)) * 1_000_000


def _writer(root: Path, table: str = "t.ev", catalog: Any = None, **target: Any) -> TableWriter:
    catalog = catalog or sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())
    cfg = TargetConfig(
        table=table, mode="merge", keys=["k"], delete_column="_deleted", properties={"write.merge.mode": "merge-on-read"},
        **{"partition_by": ["day(ts)"], **target},
    )
    return TableWriter(catalog, cfg, "p", LocalEngine())


def _batch(rows: list[tuple[int, str | None, int]]) -> pa.Table:
    return pa.table(
        {"k": [k for k, _, _ in rows], "v": [v or "" for _, v, _ in rows], "ts": [t for _, _, t in rows], "_deleted": [v is None for _, v, _ in rows]},
        schema=SCHEMA,
    )


def _load(w: TableWriter) -> pa.Table:
    """Five days of rows (ten a day, keys 10*d..10*d+9), then a merge-on-read merge that deletes two rows of
    each old day and updates one of each day (position deletes beside the old files)."""
    days = OLD_DAYS + RECENT_DAYS
    w.commit(_batch([(10 * d + i, f"v{d}.{i}", _ts(day, i)) for d, day in enumerate(days) for i in range(10)]), "b0", {"n": 0}, "r")
    changes: list[tuple[int, str | None, int]] = []
    for d, day in enumerate(days):
        changes.append((10 * d + 1, f"u{d}", _ts(day, 1)))
        if day in OLD_DAYS:
            changes += [(10 * d + 2, None, _ts(day, 2)), (10 * d + 3, None, _ts(day, 3))]
    w.commit(_batch(changes), "b1", {"n": 1}, "r")
    return _contents(w)


def _contents(w: TableWriter) -> pa.Table:
    t = w.load()
    assert t is not None
    return t.scan(selected_fields=("k", "v", "ts")).to_arrow().sort_by("k")


def _live(w: TableWriter) -> tuple[list[str], list[str]]:
    """The data files and delete files of the current snapshot."""
    t = w.load()
    assert t is not None
    tasks = list(t.scan().plan_files())
    return [x.file.file_path for x in tasks], sorted({d.file_path for x in tasks for d in x.delete_files})


def _day_of(path: str) -> str:
    return next(part.split("=", 1)[1] for part in path.split("/") if part.startswith("ts_day="))


def test_old_partitions_move_to_the_archive_with_their_deletes_applied_and_readers_see_the_same_rows(tmp_path: Path, make_project: Any) -> None:
    from icefield.config import load_project
    from icefield.query.run import run_query

    w = _writer(tmp_path)
    before = _load(w)
    files_before, deletes_before = _live(w)
    assert deletes_before, "the merge left position delete files"
    cold = tmp_path / "cold"
    t = w.load()
    assert t is not None
    head = t.current_snapshot().snapshot_id  # type: ignore[union-attr]

    dry = archive_table(w.catalog, "t.ev", older_than="30d", location=str(cold), now=NOW, dry_run=True)
    assert dry.dry_run and dry.snapshot_id is None and dry.partitions == 3 and dry.files_moved >= 3
    assert w.load().current_snapshot().snapshot_id == head and not cold.exists()  # type: ignore[union-attr]

    res = archive_table(w.catalog, "t.ev", older_than="30d", location=str(cold), now=NOW)
    assert res.snapshot_id is not None and res.partitions == 3 and res.files_moved == dry.files_moved
    assert res.rows == 3 * 8, "each old day keeps 8 of its 10 rows"
    assert res.location == (cold / "t" / "ev" / "data").as_uri()
    files, deletes = _live(w)
    archived = [f for f in files if f.startswith(res.location + "/")]
    hot = [f for f in files if not f.startswith(res.location + "/")]
    assert sorted({_day_of(f) for f in archived}) == ["2026-05-01", "2026-05-02", "2026-05-30"]
    assert sorted({_day_of(f) for f in hot}) == ["2026-05-31", "2026-06-29"]
    assert set(hot) == {f for f in files_before if _day_of(f) in ("2026-05-31", "2026-06-29")}, "recent files untouched"
    assert all(Path(f.removeprefix("file://")).is_file() for f in archived)
    assert all(f"/ts_day={_day_of(f)}/" in f for f in archived), "the table's partition layout, under the archive"
    assert len(archived) == res.files_written == 3
    assert res.delete_files_removed > 0 and len(deletes) == len(deletes_before) - res.delete_files_removed
    t = w.load()
    assert t is not None
    for task in t.scan().plan_files():
        if task.file.file_path in archived:
            assert not task.delete_files, "the deletes of the moved files were applied in the rewrite"
            assert pa.parquet.read_table(task.file.file_path.removeprefix("file://")).num_rows == 8
    snap = t.current_snapshot()
    assert snap is not None and snap.summary is not None and snap.parent_snapshot_id == head
    assert snap.summary.operation.value == "replace" and snap.summary["icefield.operation"] == "archive"
    assert json.loads(t.metadata.properties["icefield.state.p"]) == {"n": 1}, "the pipeline's position stays"

    assert _contents(w).equals(before)
    project = load_project(make_project())
    via_duckdb = run_query(project, "select k, v, ts from t.ev order by k", catalog=w.catalog)
    assert via_duckdb.column("k").to_pylist() == before.column("k").to_pylist()
    assert via_duckdb.column("v").to_pylist() == before.column("v").to_pylist()

    again = archive_table(w.catalog, "t.ev", older_than="30d", location=cold.as_uri() + "/", now=NOW)
    assert (again.files_moved, again.snapshot_id) == (0, None), "nothing moves twice: no new snapshot"
    assert w.load().current_snapshot().snapshot_id == res.snapshot_id  # type: ignore[union-attr]

    # A late row into an archived day lands in the table's own location; the next run moves it alone.
    w.commit(_batch([(999, "late", _ts(OLD_DAYS[0], 23))]), "b2", {"n": 2}, "r")
    late = archive_table(w.catalog, "t.ev", older_than="30d", location=str(cold), now=NOW)
    assert (late.files_moved, late.partitions, late.rows) == (1, 1, 1)
    assert all(f.startswith(res.location + "/") for f in _live(w)[0] if _day_of(f) == "2026-05-01")


def test_expiry_of_the_old_snapshots_takes_the_hot_files_and_the_archive_still_reads(tmp_path: Path) -> None:
    from icefield.write.expire import expire_table

    w = _writer(tmp_path)
    before = _load(w)
    files_before, deletes_before = _live(w)
    cold = tmp_path / "cold"
    res = archive_table(w.catalog, "t.ev", older_than="30d", location=cold.as_uri(), now=NOW)
    moved = [f for f in files_before if f not in _live(w)[0]]
    assert len(moved) == res.files_moved and all(Path(f.removeprefix("file://")).is_file() for f in moved), "kept for older snapshots"

    gone = expire_table(w.catalog, "t.ev", older_than="0s", retain_last=1)
    assert gone.snapshots_expired >= 1
    assert not any(Path(f.removeprefix("file://")).exists() for f in moved), "the hot copies are gone"
    removed_deletes = set(deletes_before) - set(_live(w)[1])
    assert removed_deletes and not any(Path(f.removeprefix("file://")).exists() for f in removed_deletes)
    assert _contents(w).equals(before)
    assert all(Path(f.removeprefix("file://")).is_file() for f in _live(w)[0] if f.startswith(res.location))


@pytest.mark.parametrize(
    ("partition_by", "columns", "expected"),
    [
        ([], {}, r"archive of t.ev: its partition spec \(unpartitioned\) has no time field"),
        (["v"], {}, r"archive of t.ev: its partition spec \(identity\(v\)\) has no time field.*day\(created_at\)"),
    ],
)
def test_a_table_without_a_time_partition_is_refused_with_the_fix(tmp_path: Path, partition_by: list[str], columns: Any, expected: str) -> None:
    w = _writer(tmp_path, partition_by=partition_by)
    w.commit(_batch([(1, "a", _ts(OLD_DAYS[0]))]), "b0", None, "r")
    with pytest.raises(ConfigError, match=expected):
        archive_table(w.catalog, "t.ev", older_than="30d", location=str(tmp_path / "cold"), now=NOW)
    assert not (tmp_path / "cold").exists()


def test_identity_on_a_date_column_and_month_partitions_age_by_the_end_of_their_range(tmp_path: Path) -> None:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import IdentityTransform, MonthTransform
    from pyiceberg.types import DateType, NestedField, TimestamptzType

    from icefield.write.tiering import old_partition_end

    schema = Schema(NestedField(1, "d", DateType()), NestedField(2, "ts", TimestamptzType()))
    by_date = PartitionSpec(PartitionField(1, 1000, IdentityTransform(), "d"))
    may_30 = (calendar.timegm((2026, 5, 30, 0, 0, 0)) // 86400)
    assert old_partition_end(by_date, schema, [may_30]) == calendar.timegm((2026, 5, 31, 0, 0, 0))
    by_month = PartitionSpec(PartitionField(2, 1000, MonthTransform(), "m"))
    december_2025 = (2025 - 1970) * 12 + 11
    assert old_partition_end(by_month, schema, [december_2025]) == calendar.timegm((2026, 1, 1, 0, 0, 0))
    assert old_partition_end(by_month, schema, [None]) is None, "a null time value is never old"


def test_a_merge_that_deletes_from_a_moved_file_meanwhile_makes_the_archive_replan(tmp_path: Path) -> None:
    from icefield import failpoints

    w = _writer(tmp_path)
    _load(w)
    rival = _writer(tmp_path)
    cold = tmp_path / "cold"
    hits: list[list[Path]] = []

    def race(name: str) -> None:
        if name != "rewrite-before-commit":
            return
        hits.append(sorted(p for p in cold.rglob("*.parquet")))
        if len(hits) == 1:  # between the archive's plan and its commit, a merge deletes an old row
            rival.commit(_batch([(0, None, _ts(OLD_DAYS[0], 0)), (40, "raced", _ts(RECENT_DAYS[1], 0))]), "race", None, "r")

    previous = failpoints.install(race)
    try:
        res = archive_table(w.catalog, "t.ev", older_than="30d", location=str(cold), now=NOW)
    finally:
        failpoints.install(previous)
    assert len(hits) == 2, "the first commit conflicted and the archive replanned"
    assert not any(p.exists() for p in hits[0]), "the files of the attempt that lost were deleted"
    assert sorted(p for p in cold.rglob("*.parquet")) == hits[1]
    rows = {r["k"]: r["v"] for r in _contents(w).to_pylist()}
    assert 0 not in rows and rows[40] == "raced", "the merge's changes are kept"
    assert res.rows == 3 * 8 - 1
    assert all(not task_deletes for f, task_deletes in _file_deletes(w).items() if f.startswith(res.location))


def _file_deletes(w: TableWriter) -> dict[str, list[str]]:
    t = w.load()
    assert t is not None
    return {x.file.file_path: [d.file_path for d in x.delete_files] for x in t.scan().plan_files()}


def test_bad_ages_and_locations_are_refused(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _load(w)
    with pytest.raises(ConfigError, match="older_than='soon' is not an age"):
        archive_table(w.catalog, "t.ev", older_than="soon", location=str(tmp_path / "cold"))
    with pytest.raises(ConfigError, match="'cold' is not an absolute folder or a URI"):
        archive_table(w.catalog, "t.ev", older_than="30d", location="cold")
    with pytest.raises(ConfigError, match="holds the table's own location"):
        archive_table(w.catalog, "t.ev", older_than="30d", location=str(tmp_path), now=NOW)


def _pipeline(maintenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {"type": "files", "path": "drop/*.jsonl", "format": "jsonl", "columns": {"k": "long", "v": "string", "ts": "timestamptz"}},
        "target": {"table": "t.ev", "mode": "merge", "keys": ["k"], "partition_by": ["day(ts)"], "maintenance": maintenance},
    }


def test_pipeline_maintenance_archives_after_a_compaction_and_reports_the_counts(lake: Any, tmp_path: Path) -> None:
    from icefield.observe.events import MaintenanceDone

    cold = tmp_path / "cold"
    lk = lake({"p": _pipeline({"compact_every": 1, "archive_older_than": "30d", "archive_location": str(cold)})})
    (lk.root / "drop").mkdir()
    for b, when in enumerate(["2020-01-01T10:00:00Z", "2020-01-02T10:00:00Z", "2999-01-01T10:00:00Z"]):
        lines = [json.dumps({"k": 10 * b + i, "v": f"v{b}", "ts": when}) for i in range(3)]
        (lk.root / "drop" / f"b{b}.jsonl").write_text("\n".join(lines) + "\n")
    seen: list[Any] = []
    res = lk.run("p", observers=[seen.append])
    assert res.status == "success"
    done = [e for e in seen if isinstance(e, MaintenanceDone) and e.operation == "archive"]
    assert done and sum(e.partitions_archived for e in done) == 2 and sum(e.rows_archived for e in done) == 6
    assert all(e.snapshot_id is not None and e.files_removed >= 1 for e in done)
    t = lk.table("t.ev")
    where = {task.file.file_path.startswith(cold.as_uri() + "/") for task in t.scan().plan_files() if "2020-01" in task.file.file_path}
    assert where == {True}
    assert sorted(r["k"] for r in t.scan().to_arrow().to_pylist()) == [0, 1, 2, 10, 11, 12, 20, 21, 22]


@pytest.mark.parametrize(
    ("maintenance", "expected"),
    [
        ({"compact_every": 1, "archive_older_than": "180d"}, "'archive_older_than' needs 'archive_location'"),
        ({"compact_every": 1, "archive_location": "s3://cold/a"}, "'archive_location' needs 'archive_older_than'"),
        ({"archive_older_than": "180d", "archive_location": "s3://cold/a"}, "'archive_older_than' runs after a compaction: set 'compact_every' too"),
        ({"compact_every": 1, "archive_older_than": "half a year", "archive_location": "s3://cold/a"}, "'half a year' is not an age"),
        ({"compact_every": 1, "archive_older_than": "180d", "archive_location": "cold"}, "'cold' is not an absolute folder or a URI"),
    ],
)
def test_archive_keys_are_refused_alone_or_malformed_with_the_fix(make_project: Any, maintenance: dict[str, Any], expected: str) -> None:
    from icefield.config import load_project

    with pytest.raises(ConfigError, match=expected):
        load_project(make_project({"p": _pipeline(maintenance)}), env={})


def test_the_archive_command_moves_old_partitions_and_says_so_in_json(lake: Any, tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    lk = lake({"p": _pipeline({})})
    (lk.root / "drop").mkdir()
    lines = [json.dumps({"k": i, "v": "x", "ts": f"20{10 + i}-03-01T00:00:00Z"}) for i in range(3)]
    (lk.root / "drop" / "b0.jsonl").write_text("\n".join(lines) + "\n")
    lk.run("p")
    args = ["--project", str(lk.root), "archive", "t.ev", "--older-than", "1d", "--location", str(cold)]
    res = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert res.exit_code == 0 and "Would move 3 file(s) of 3 partition(s) of t.ev" in res.stdout
    res = CliRunner().invoke(cli, [*args, "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and (doc["status"], doc["files_moved"], doc["partitions"], doc["rows"]) == ("ok", 3, 3, 3)
    assert doc["snapshot_id"] is not None and doc["location"] == (cold / "t" / "ev" / "data").as_uri()
    res = CliRunner().invoke(cli, [*args])
    assert res.exit_code == 0 and "Nothing to archive in t.ev" in res.stdout
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "archive", "t.ev", "--older-than", "soon", "--location", str(cold), "--json"])
    assert res.exit_code == EXIT_USAGE and "'soon'" in json.loads(res.stdout)["error"]
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "archive", "t.ev", "--json"])
    assert res.exit_code == EXIT_USAGE and "give --older-than and --location" in json.loads(res.stdout)["error"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def test_on_each_store_the_archive_reads_the_same_and_expiry_takes_the_hot_copies(tmp_path: Path, store: Store, make_project: Any) -> None:
    """A local warehouse archiving to a local folder, and an S3 warehouse archiving to another S3 prefix: the
    files land there (read back through the store), pyiceberg and DuckDB read the same rows, and expiry
    deletes the hot objects."""
    from icefield.config import load_project
    from icefield.query.run import run_query
    from icefield.write.expire import expire_table

    w = _writer(tmp_path, catalog=store.catalog(tmp_path / "c.db"))
    before = _load(w)
    files_before, _ = _live(w)
    cold = store.uri + "-cold"
    res = archive_table(w.catalog, "t.ev", older_than="30d", location=cold, now=NOW)
    assert res.location == f"{cold}/t/ev/data" and res.partitions == 3
    archived = store.files(res.location)
    assert len(archived) == res.files_written and {_day_of(f"/{p}") for p in archived} == {"2026-05-01", "2026-05-02", "2026-05-30"}
    assert _contents(w).equals(before)
    project = load_project(make_project(project=store.project()), env={})
    via_duckdb = run_query(project, "select k, v from t.ev order by k", catalog=w.catalog)
    assert via_duckdb.column("k").to_pylist() == before.column("k").to_pylist()
    assert via_duckdb.column("v").to_pylist() == before.column("v").to_pylist()
    assert archive_table(w.catalog, "t.ev", older_than="30d", location=cold, now=NOW).snapshot_id is None

    moved = [f for f in files_before if f not in _live(w)[0]]
    assert len(moved) == res.files_moved and all(store.exists(f) for f in moved)
    expire_table(w.catalog, "t.ev", older_than="0s", retain_last=1)
    assert not any(store.exists(f) for f in moved), "the hot copies are gone"
    assert store.files(res.location) == archived and _contents(w).equals(before)
