"""Write-audit-publish through pipeline runs (DESIGN.md rule 6): a failing error gate leaves main at its
snapshot and holds the batch on the audit branch; a passing one publishes data and position in one swap;
the held branch blocks its pipeline until a rerun passes, ``icefield publish`` or ``icefield discard``; each
way the batch lands exactly once. Also: warn-only gates, the results table and ``icefield checks``. Each test runs with
its warehouse on a local folder and on the S3 server (``tests/stores.py``); the source files stay local."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pyiceberg.serializers import FromInputFile
from tests.stores import STORES, Store, make_store

from icefield.cli import EXIT_FAILED, cli
from icefield.errors import GateFailedError
from icefield.iceberg.history import STATE_PREFIX, SUMMARY_BATCH_ID, head_id, is_held
from icefield.write.branches import audit_branch

BRANCH = audit_branch("events")
NO_NEGATIVE = {"sql": "select * from {table} where amount < 0", "name": "no_negative"}
FEW_NULLS = {"null_ratio": {"column": "v", "max": 0.5}, "severity": "warn"}


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


@pytest.fixture
def lake(lake: Callable[..., Any], store: Store) -> Callable[..., Any]:
    """The shared ``lake`` (``tests/unit/conftest.py``) with the project's warehouse in ``store``."""

    def make(pipelines: dict[str, dict[str, Any]], project: dict[str, Any] | None = None) -> Any:
        return lake(pipelines, store.project(**(project or {})))

    return make


def events(gates: list[dict[str, Any]], mode: str = "append") -> dict[str, Any]:
    target: dict[str, Any] = {"table": "raw.events", "mode": mode}
    if mode == "merge":
        target["keys"] = ["id"]
    return {
        "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl", "columns": {"id": "long", "v": "string", "amount": "double"}},
        "target": target,
        "gates": gates,
    }


def add(lk: Any, name: str, *rows: tuple[int, str | None, float]) -> None:
    (lk.root / "data").mkdir(exist_ok=True)
    (lk.root / "data" / name).write_text("".join(json.dumps({"id": i, "v": v, "amount": a}) + "\n" for i, v, a in rows))


def main_id(lk: Any) -> int | None:
    return head_id(lk.table("raw.events"))


def ids(lk: Any) -> list[int]:
    return sorted(r["id"] for r in lk.rows("raw.events", "id"))


def position(lk: Any) -> dict[str, Any]:
    return json.loads(lk.table("raw.events").metadata.properties[STATE_PREFIX + "events"])


def batch_ids_on_main(lk: Any) -> list[str]:
    from icefield.iceberg.history import ancestors

    t = lk.table("raw.events")
    return [s.summary[SUMMARY_BATCH_ID] for s in ancestors(t.metadata, head_id(t)) if s.summary and s.summary[SUMMARY_BATCH_ID]]


def cli_run(lk: Any, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["--project", str(lk.root), *args])
    return res.exit_code, res.output


@pytest.fixture
def held(lake):
    """A lake whose pipeline ``events`` published a.jsonl and holds b.jsonl (a negative amount)."""
    lk = lake({"events": events([NO_NEGATIVE, FEW_NULLS])})
    add(lk, "a.jsonl", (1, "x", 1.0), (2, "y", 2.0))
    lk.run("events")
    add(lk, "b.jsonl", (3, "z", -3.0), (4, "w", 4.0))
    before = main_id(lk)
    with pytest.raises(GateFailedError):
        lk.run("events")
    lk.published = before
    return lk


def test_a_passing_gate_publishes_data_and_position_in_one_swap(lake, store):
    lk = lake({"events": events([NO_NEGATIVE, FEW_NULLS])})
    add(lk, "a.jsonl", (1, "x", 1.0), (2, None, 2.0))
    res = lk.run("events")
    assert res.status == "success" and ids(lk) == [1, 2]
    assert [(c.check, c.status) for c in res.checks] == [("no_negative", "pass"), ("null_ratio(v)", "pass")]
    table = lk.table("raw.events")
    (snap,) = res.snapshots
    assert head_id(table) == snap == head_id(table, BRANCH)  # main was fast-forwarded to the audited snapshot
    assert "data/a.jsonl" in position(lk)["files"]
    assert table.location().startswith(store.uri) and store.exists(table.metadata_location), "the table lives in the store"

    # Replay every metadata version: main's snapshot and the position always move together, and the
    # batch sat on the branch (audited) in a version where main did not have it yet.
    paths = [e.metadata_file for e in table.metadata.metadata_log] + [table.metadata_location]
    versions = [FromInputFile.table_metadata(table.io.new_input(p)) for p in paths]
    audited_only = [m for m in versions if m.refs.get(BRANCH) and m.refs[BRANCH].snapshot_id == snap and (m.current_snapshot_id != snap)]
    assert audited_only, "the batch was never on the branch alone"
    for m in versions:
        has_position = STATE_PREFIX + "events" in m.properties
        assert (m.current_snapshot_id == snap) == has_position, "main's data and position moved apart"


def test_a_failing_gate_leaves_main_untouched_and_holds_the_batch(held):
    lk = held
    table = lk.table("raw.events")
    assert main_id(lk) == lk.published  # main at its previous snapshot id
    assert ids(lk) == [1, 2]
    assert is_held(table, BRANCH)
    branch_rows = table.scan(snapshot_id=head_id(table, BRANCH)).to_arrow()
    assert sorted(branch_rows.column("id").to_pylist()) == [1, 2, 3, 4]  # kept for inspection
    assert "data/b.jsonl" not in position(lk)["files"]  # main's position did not move
    stored = [r for r in lk.rows("icefield.quality_results", "checked_at") if r["check"] == "no_negative"]
    assert [(r["status"], r["value"], r["branch"]) for r in stored] == [("pass", 0.0, BRANCH), ("fail", 1.0, BRANCH)]
    assert stored[-1]["snapshot_id"] == head_id(table, BRANCH)


def test_the_run_exits_1_listing_the_failing_checks(lake):
    lk = lake({"events": events([NO_NEGATIVE])})
    add(lk, "a.jsonl", (1, "x", -1.0))
    code, out = cli_run(lk, "run")
    out = " ".join(out.split())  # the console wraps long lines
    assert code == EXIT_FAILED
    assert "no_negative (fail): the query returned 1 failing row(s)" in out
    assert f"icefield publish raw.events --branch {BRANCH}" in out and "icefield discard" in out
    code, out = cli_run(lk, "--json", "run")
    (doc,) = (json.loads(line) for line in out.splitlines())  # one document: the results and the error
    assert code == EXIT_FAILED and doc["status"] == "failed"
    assert doc["type"] == "GateFailedError" and "still fail on the held batch" in doc["error"]
    (res,) = doc["results"]
    assert res["status"] == "held" and [c["check"] for c in res["checks"] if c["status"] == "fail"] == ["no_negative"]


def test_a_held_branch_blocks_its_pipeline_until_settled(held):
    lk = held
    add(lk, "c.jsonl", (5, "v", 5.0))
    with pytest.raises(GateFailedError, match="still fail on the held batch"):
        lk.run("events")
    table = lk.table("raw.events")
    assert main_id(lk) == lk.published
    # c.jsonl was not read: nothing new on the branch either.
    assert sorted(table.scan(snapshot_id=head_id(table, BRANCH)).to_arrow().column("id").to_pylist()) == [1, 2, 3, 4]


def test_rerun_after_fixing_the_rule_publishes_the_held_batch_exactly_once(held):
    lk = held
    held_snapshot = head_id(lk.table("raw.events"), BRANCH)
    (lk.root / "pipelines" / "events.yaml").write_text(
        (lk.root / "pipelines" / "events.yaml").read_text().replace("amount < 0", "amount < -10")
    )
    add(lk, "c.jsonl", (5, "v", 5.0))
    res = lk.run("events")
    assert res.status == "success"
    assert ids(lk) == [1, 2, 3, 4, 5]
    batches = batch_ids_on_main(lk)
    assert len(batches) == len(set(batches)) == 3  # a, b (the held one) and c, once each
    assert held_snapshot in [s.snapshot_id for s in lk.table("raw.events").metadata.snapshots]
    assert set(position(lk)["files"]) == {"data/a.jsonl", "data/b.jsonl", "data/c.jsonl"}
    assert lk.run("events").snapshots == []  # and nothing again


def test_publish_by_hand_publishes_the_held_batch_and_its_position(held):
    lk = held
    held_snapshot = head_id(lk.table("raw.events"), BRANCH)
    code, out = cli_run(lk, "--json", "publish", "raw.events")
    assert code == 0, out
    doc = json.loads(out)
    assert (doc["published"], doc["branch"], doc["main"], doc["previous"]) == (True, BRANCH, held_snapshot, lk.published)
    assert main_id(lk) == held_snapshot and ids(lk) == [1, 2, 3, 4]
    assert "data/b.jsonl" in position(lk)["files"]
    rerun = lk.run("events")
    assert rerun.batches == [] and ids(lk) == [1, 2, 3, 4]  # b is not read again
    code, out = cli_run(lk, "publish", "raw.events")
    assert code == 0 and "Nothing to publish" in out


def test_discard_by_hand_drops_the_batch_and_the_next_run_reads_it_again(held):
    lk = held
    code, out = cli_run(lk, "discard", "raw.events")
    assert code == 0 and "Discarded branch" in out, out
    table = lk.table("raw.events")
    assert BRANCH not in table.metadata.refs and main_id(lk) == lk.published
    # The source is fixed; the same file, corrected, is read again from main's position.
    add(lk, "b.jsonl", (3, "z", 3.0), (4, "w", 4.0))
    res = lk.run("events")
    assert res.status == "success" and ids(lk) == [1, 2, 3, 4]
    assert lk.table("raw.events").scan().to_arrow().column("amount").to_pylist().count(-3.0) == 0


def test_a_discarded_batch_with_the_same_id_is_written_again_not_skipped(held):
    lk = held
    discarded_batch = lk.table("raw.events").snapshot_by_id(head_id(lk.table("raw.events"), BRANCH)).summary[SUMMARY_BATCH_ID]
    cli_run(lk, "discard", "raw.events", "--branch", BRANCH)
    (lk.root / "pipelines" / "events.yaml").write_text(
        (lk.root / "pipelines" / "events.yaml").read_text().replace("amount < 0", "amount < -10")
    )
    res = lk.run("events")
    assert [b.batch_id for b in res.batches if not b.skipped] == [discarded_batch]
    assert ids(lk) == [1, 2, 3, 4] and batch_ids_on_main(lk).count(discarded_batch) == 1


def test_publish_refuses_when_main_moved_and_says_how_to_fix(held, lake):
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    lk = held
    other = TableWriter(lk.catalog, TargetConfig(table="raw.events"), "other", LocalEngine())
    import pyarrow as pa

    moved = other.commit(pa.table({"id": pa.array([100], pa.int64()), "v": ["o"], "amount": [1.0]}), "other-1", None, "r").snapshot_id
    code, out = cli_run(lk, "publish", "raw.events")
    assert code == EXIT_FAILED
    assert "cannot publish" in out and "icefield discard raw.events" in out
    assert main_id(lk) == moved  # the other writer's commit is kept
    assert cli_run(lk, "discard", "raw.events")[0] == 0
    add(lk, "b.jsonl", (3, "z", 3.0), (4, "w", 4.0))
    lk.run("events")
    assert ids(lk) == [1, 2, 3, 4, 100]


def test_show_lists_the_held_branch(held):
    code, out = cli_run(held, "--json", "show", "raw.events")
    branches = {b["branch"]: b for b in json.loads(out)["branches"]}
    assert branches["main"] == {"branch": "main", "snapshot_id": held.published, "held": False}
    assert branches[BRANCH]["held"] is True and branches[BRANCH]["snapshot_id"] == head_id(held.table("raw.events"), BRANCH)


def test_discard_and_publish_name_a_missing_branch(held):
    code, out = cli_run(held, "discard", "raw.events", "--branch", "nope")
    assert code == 2 and "no branch 'nope'" in out and BRANCH in out
    code, out = cli_run(held, "publish", "raw.nothing")
    assert code == 2 and "no table 'raw.nothing'" in out


def test_merge_pipelines_are_audited_on_the_branch_too(lake):
    lk = lake({"events": events([NO_NEGATIVE], mode="merge")})
    add(lk, "a.jsonl", (1, "x", 1.0), (2, "y", 2.0))
    lk.run("events")
    before = main_id(lk)
    add(lk, "b.jsonl", (2, "y2", -2.0), (3, "z", 3.0))
    with pytest.raises(GateFailedError):
        lk.run("events")
    assert main_id(lk) == before and [r["v"] for r in lk.rows("raw.events", "id")] == ["x", "y"]
    (lk.root / "pipelines" / "events.yaml").write_text((lk.root / "pipelines" / "events.yaml").read_text().replace("amount < 0", "amount < -5"))
    lk.run("events")
    assert [(r["id"], r["v"]) for r in lk.rows("raw.events", "id")] == [(1, "x"), (2, "y2"), (3, "z")]


def test_warn_only_gates_commit_on_main_and_report(lake):
    lk = lake({"events": events([{"sql": "select * from {table} where amount < 0", "severity": "warn"}])})
    add(lk, "a.jsonl", (1, "x", -1.0))
    res = lk.run("events")
    assert res.status == "success" and ids(lk) == [1]
    assert [(c.status, c.branch) for c in res.checks] == [("warn", "main")]
    assert BRANCH not in lk.table("raw.events").metadata.refs  # no audit branch without error gates


def test_checks_command_shows_the_latest_results(held):
    code, out = cli_run(held, "--json", "checks", "raw.events")
    assert code == 0, out
    doc = json.loads(out)
    assert [(r["check"], r["status"], r["severity"]) for r in doc["results"]] == [
        ("no_negative", "fail", "error"),
        ("null_ratio(v)", "pass", "warn"),
    ]
    r = doc["results"][0]
    assert set(r) == {"pipeline", "table", "snapshot_id", "branch", "check", "kind", "value", "threshold", "status", "severity", "message", "checked_at", "run_id"}
    assert (r["pipeline"], r["table"], r["kind"], r["value"], r["threshold"]) == ("events", "raw.events", "sql", 1.0, "0 rows")
    code, out = cli_run(held, "checks", "raw.events", "--history", "2")
    assert code == 0
    assert out.count("no_negative") == 2 and "fail" in out and "pass" in out
    code, out = cli_run(held, "checks", "raw.other")  # a misspelt table is an error, not "no results yet"
    assert code == 2 and "no table 'raw.other'" in out


def test_results_table_is_an_iceberg_table_any_engine_can_read(held: Any, tmp_path: Path) -> None:
    table = held.table("icefield.quality_results")
    names = [f.name for f in table.schema().fields]
    assert names == ["pipeline", "table", "snapshot_id", "branch", "check", "kind", "value", "threshold", "status", "severity", "message", "checked_at", "run_id"]
    rows = table.scan().to_arrow()
    assert rows.num_rows == 4  # two evaluations of two gates
    assert set(rows.column("run_id").to_pylist()) and all(rows.column("checked_at").to_pylist())
