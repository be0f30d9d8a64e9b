"""The tombstone horizon (``icefield.write.tombstones``): tombstones recorded longer ago than the horizon
are pruned from ``<table>__tombstones`` in one commit, newer ones stay and still keep deleted keys
deleted, the data table does not change, and past the horizon a redelivered old version comes back (the
documented trade-off)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from icefield.catalog import sql_catalog
from icefield.cli import EXIT_USAGE, cli
from icefield.config.models import TargetConfig
from icefield.config.ownership import TOMBSTONE_SUFFIX, TOMBSTONED_AT
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError
from icefield.write import TableWriter
from icefield.write.tombstones import prune_tombstones

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("commit_lsn", pa.int64()), ("lsn", pa.int64()), ("_deleted", pa.bool_())])
Event = tuple[int, str | None, int, int]  # key, value (None: delete), commit LSN, LSN
HOUR = 3600.0


def writer_at(root: Path) -> TableWriter:
    catalog = sql_catalog("icefield", f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri())
    target = TargetConfig(table="cdc.t", mode="merge", keys=["k"], order_by=["commit_lsn", "lsn"], keep_newest=True, delete_column="_deleted")
    return TableWriter(catalog, target, "p", LocalEngine())


def events(evs: list[Event]) -> pa.Table:
    return pa.table(
        {"k": [e[0] for e in evs], "v": [e[1] or "" for e in evs], "commit_lsn": [e[2] for e in evs], "lsn": [e[3] for e in evs], "_deleted": [e[1] is None for e in evs]},
        schema=SCHEMA,
    )


def data(writer: TableWriter) -> dict[int, str]:
    table = writer.load()
    assert table is not None
    return {r["k"]: r["v"] for r in table.scan().to_arrow().to_pylist()}


def graves(writer: TableWriter) -> dict[int, float | None]:
    """Each tombstone's key and the time it was recorded (seconds since the epoch; None: no stamp)."""
    table = writer.catalog.load_table(("cdc", "t" + TOMBSTONE_SUFFIX))
    rows = table.scan(selected_fields=("k", TOMBSTONED_AT)).to_arrow().to_pylist()
    return {r["k"]: r[TOMBSTONED_AT] and r[TOMBSTONED_AT].timestamp() for r in rows}


def deleted_old_and_new(tmp_path: Path) -> tuple[TableWriter, float]:
    """Keys 1-4 inserted; 1 and 2 deleted in one batch, 3 in a later one; 4 stays. Returns the writer and
    a ``now`` at which, with a one-hour horizon, the first deletes are past it and the later one is not."""
    writer = writer_at(tmp_path)
    writer.commit(events([(k, f"v{k}", 10, k) for k in (1, 2, 3, 4)]), "b0", None, "r")
    writer.commit(events([(1, None, 20, 11), (2, None, 20, 12)]), "b1", None, "r")
    writer.commit(events([(3, None, 30, 21)]), "b2", None, "r")
    at = graves(writer)
    old, new = at[2], at[3]
    assert set(at) == {1, 2, 3} and old is not None and new is not None and at[1] == old < new
    return writer, (old + new) / 2 + HOUR


def test_tombstones_older_than_the_horizon_are_pruned_in_one_commit_and_the_data_does_not_change(tmp_path: Path) -> None:
    writer, now = deleted_old_and_new(tmp_path)
    table = writer.load()
    assert table is not None
    before, head = data(writer), table.current_snapshot()
    tombstones = writer.catalog.load_table(("cdc", "t" + TOMBSTONE_SUFFIX))
    snapshots = len(tombstones.metadata.snapshots)

    dry = prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now, dry_run=True)
    assert (dry.tombstones_removed, dry.snapshot_id) == (2, None) and set(graves(writer)) == {1, 2, 3}

    res = prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now)
    assert res.tombstones_removed == 2 and res.snapshot_id is not None
    assert set(graves(writer)) == {3}, "the deletes older than the horizon are pruned, the newer one is kept"
    assert len(writer.catalog.load_table(("cdc", "t" + TOMBSTONE_SUFFIX)).metadata.snapshots) == snapshots + 1, "one commit"
    after = writer.load()
    assert after is not None and data(writer) == before == {4: "v4"}
    assert after.current_snapshot() == head, "the data table gets no commit"

    again = prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now)
    assert (again.tombstones_removed, again.snapshot_id) == (0, None), "nothing older left: no commit"


def test_inside_the_horizon_a_redelivered_old_version_still_does_not_resurrect_the_key(tmp_path: Path) -> None:
    writer, now = deleted_old_and_new(tmp_path)
    prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now)
    writer.commit(events([(3, "v3", 10, 3)]), "late", None, "r")  # the insert of key 3, redelivered
    assert data(writer) == {4: "v4"}
    writer.commit(events([(3, "again", 40, 31)]), "b3", None, "r")  # a genuinely newer insert brings it back
    assert data(writer) == {3: "again", 4: "v4"}


def test_past_the_horizon_a_redelivered_old_version_comes_back_as_documented(tmp_path: Path) -> None:
    writer, now = deleted_old_and_new(tmp_path)
    prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now)
    writer.commit(events([(1, "v1", 10, 1), (4, "old", 5, 0)]), "late", None, "r")  # redelivered
    assert data(writer) == {1: "v1", 4: "v4"}, "key 1's tombstone is gone, so its old insert lands; key 4's stored row still wins"


def test_unstamped_tombstones_are_stamped_by_the_first_prune_and_pruned_a_horizon_later(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    writer.commit(events([(k, f"v{k}", 10, k) for k in (1, 2)]), "b0", None, "r")
    # A tombstone as recorded before the stamp existed, then one recorded now (it adds the column).
    legacy = TargetConfig(table="cdc.t" + TOMBSTONE_SUFFIX, mode="merge", keys=["k"], order_by=["commit_lsn", "lsn"], keep_newest=True)
    TableWriter(writer.catalog, legacy, "p", LocalEngine()).commit(pa.table({"k": [1], "commit_lsn": [20], "lsn": [11]}), "old", None, "r")
    writer.commit(events([(1, None, 20, 11), (2, None, 20, 12)]), "b1", None, "r")
    stamped = graves(writer)[2]
    assert stamped is not None and graves(writer)[1] is None, "key 1's delete is already recorded at that version"

    first = prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=stamped + 2 * HOUR)
    assert (first.tombstones_removed, first.tombstones_stamped) == (1, 1)
    assert set(graves(writer)) == {1}, "the unstamped tombstone is kept, stamped with the prune's time"
    assert graves(writer)[1] == pytest.approx(stamped + 2 * HOUR)
    assert prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=stamped + 2.5 * HOUR).tombstones_removed == 0
    assert prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=stamped + 3.5 * HOUR).tombstones_removed == 1
    assert graves(writer) == {}


def test_a_table_without_tombstones_has_nothing_to_prune_and_a_bad_age_is_refused(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    writer.commit(events([(1, "v1", 10, 1)]), "b0", None, "r")
    assert prune_tombstones(writer.catalog, "cdc.t", older_than="0s").tombstones_removed == 0
    with pytest.raises(ConfigError, match="'soon' is not an age; give one like '7d'"):
        prune_tombstones(writer.catalog, "cdc.t", older_than="soon")
    with pytest.raises(ConfigError, match="no table 'cdc.nope'"):
        prune_tombstones(writer.catalog, "cdc.nope", older_than="1d")


# ------------------------------------------------------------------------------ configuration, pipeline, CLI


def event(op: str, row: dict[str, Any] | None, commit: int, lsn: int, before: dict[str, Any] | None = None) -> str:
    """A Debezium PostgreSQL change event as JsonConverter writes it with schemas.enable=false."""
    source = {"connector": "postgresql", "ts_ms": 1_790_000_000_000, "snapshot": "false", "db": "app", "schema": "public", "table": "users",
              "sequence": json.dumps([str(commit), str(lsn)]), "txId": 700, "lsn": lsn}  # fmt: skip
    return json.dumps({"before": before, "after": row, "source": source, "op": op, "ts_ms": 1_790_000_000_001})


def cdc_pipe(maintenance: dict[str, Any]) -> dict[str, Any]:
    return {"source": {"type": "debezium", "path": "cdc/*.jsonl"}, "target": {"table": "cdc.users", "keys": ["id"], "maintenance": maintenance}, "batch_size": 1}


@pytest.mark.parametrize(
    ("pipe", "expected"),
    [
        (cdc_pipe({"compact_every": 2, "tombstones_older_than": "soon"}), r"target\.maintenance\.tombstones_older_than: older_than='soon' is not an age; give one like '7d'"),
        (cdc_pipe({"tombstones_older_than": "30d"}), "'tombstones_older_than' runs after a compaction: set 'compact_every' too"),
        (
            {"source": {"type": "files", "path": "d/*.jsonl", "format": "jsonl", "columns": {"id": "long"}},
             "target": {"table": "raw.e", "mode": "merge", "keys": ["id"], "maintenance": {"compact_every": 2, "tombstones_older_than": "30d"}}},
            "this target keeps none: remove the key",
        ),
    ],
)  # fmt: skip
def test_a_horizon_that_is_not_an_age_or_has_no_tombstones_is_refused_with_the_file_and_fix(make_project: Any, pipe: dict[str, Any], expected: str) -> None:
    from icefield.config import load_project

    root = make_project({"users": pipe})
    with pytest.raises(ConfigError, match=expected) as e:
        load_project(root, env={})
    assert str(root / "pipelines" / "users.yaml") in str(e.value)


def test_maintenance_prunes_tombstones_past_the_horizon_and_says_how_many(lake: Any) -> None:
    from icefield.observe.events import MaintenanceDone

    lk = lake({"users": cdc_pipe({"compact_every": 1, "tombstones_older_than": "0s"})})
    (lk.root / "cdc").mkdir()
    lines = [event("c", {"id": i, "name": f"u{i}"}, 100 + i, 100 + i) for i in range(1, 5)]
    lines += [event("d", None, 200, 200, before={"id": 1, "name": "u1"}), event("d", None, 210, 210, before={"id": 2, "name": "u2"})]
    lines += [event("c", {"id": 5, "name": "u5"}, 300, 300)]
    (lk.root / "cdc" / "0001.jsonl").write_text("".join(line + "\n" for line in lines))
    seen: list[Any] = []
    lk.run("users", observers=[seen.append])
    assert [(r["id"], r["name"]) for r in lk.rows("cdc.users", "id")] == [(3, "u3"), (4, "u4"), (5, "u5")]
    done = [e for e in seen if isinstance(e, MaintenanceDone) and e.operation == "tombstones"]
    left = lk.table("cdc.users" + TOMBSTONE_SUFFIX).scan().to_arrow().num_rows
    assert done and sum(e.tombstones_removed for e in done) == 2 - left > 0, "the events count the tombstones they pruned"
    assert all(e.table == "cdc.users" for e in done)


def test_the_tombstones_command_prunes_by_hand_and_refuses_a_bad_age(lake: Any) -> None:
    lk = lake({"users": cdc_pipe({})})
    (lk.root / "cdc").mkdir()
    lines = [event("c", {"id": 1, "name": "u1"}, 100, 100), event("d", None, 200, 200, before={"id": 1, "name": "u1"})]
    (lk.root / "cdc" / "0001.jsonl").write_text("".join(line + "\n" for line in lines))
    lk.run("users")
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "tombstones", "cdc.users", "--older-than", "30d", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["tombstones_removed"] == 0
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "tombstones", "cdc.users", "--older-than", "0s", "--dry-run"])
    assert res.exit_code == 0 and "Would delete 1 tombstone(s) of cdc.users older than 0s" in res.stdout
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "tombstones", "cdc.users", "--older-than", "0s", "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and (doc["tombstones_removed"], doc["tombstones_table"]) == (1, "cdc.users" + TOMBSTONE_SUFFIX)
    assert lk.table("cdc.users" + TOMBSTONE_SUFFIX).scan().to_arrow().num_rows == 0
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "tombstones", "cdc.users", "--older-than", "soon", "--json"])
    assert res.exit_code == EXIT_USAGE and "'soon'" in json.loads(res.stdout)["error"]


def test_a_tombstone_recorded_while_the_prune_commits_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from icefield.write import tombstones

    writer, now = deleted_old_and_new(tmp_path)
    real, calls = tombstones._commit, []

    def racing(table: Any, removed: list[Any], added: list[Any], res: Any) -> None:
        calls.append(len(removed))
        if len(calls) == 1:  # key 1 deleted again, at a newer version, after the prune read its old tombstone
            writer.commit(events([(1, "back", 25, 13)]), "b3", None, "r")
            writer.commit(events([(1, None, 26, 14)]), "b4", None, "r")
        real(table, removed, added, res)

    monkeypatch.setattr(tombstones, "_commit", racing)
    res = prune_tombstones(writer.catalog, "cdc.t", older_than="1h", now=now)
    assert len(calls) == 2, "the prune conflicted with the recording and replanned"
    assert res.tombstones_removed == 1 and set(graves(writer)) == {1, 3}, "key 1's new tombstone stays, key 2's old one goes"
    writer.commit(events([(1, "v1", 10, 1)]), "late", None, "r")
    assert data(writer) == {4: "v4"}
