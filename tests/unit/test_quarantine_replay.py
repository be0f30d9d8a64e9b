"""Quarantine replay: rows re-validated with the pipeline's current rules move into the table exactly
once, whatever point a replay is interrupted at (failpoints, SIGKILL); rows that still fail stay with
their new reason; filtered rows leave; the contract still decides about new columns; old quarantine
tables are upgraded. Plus ``icefield quarantine list|show|replay`` with ``--json`` and exit codes. Each test runs with
its warehouse on a local folder and on the S3 server (``tests/stores.py``); the source files stay local."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from tests.stores import STORES, Store, make_store

from icefield import ConfigError, IcefieldError, SchemaError
from icefield.cli import EXIT_OK, EXIT_USAGE, cli
from icefield.iceberg.history import find_batch
from icefield.pipeline.replay import list_quarantines, replay_quarantine, show_quarantine
from icefield.testing import failpoints

TABLE = "raw.events"
Q = TABLE + "__quarantine"
LINES: list[Any] = [
    {"id": 1, "kind": "click"},
    {"id": 2, "kind": "buy"},  # fails accepted_values until "buy" is accepted
    {"id": 3, "kind": "buy", "coupon": "X"},  # the same, with a column the table lacks
    {"id": "x", "kind": "view"},  # never an integer
    "{broken",  # never JSON
    {"id": 6, "kind": "refund"},  # fails accepted_values; later a filter drops it
    {"id": None, "kind": "view"},  # fails not_null
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


@pytest.fixture
def lake(lake: Callable[..., Any], store: Store) -> Callable[..., Any]:
    """The shared ``lake`` (``tests/unit/conftest.py``) with the project's warehouse in ``store``."""

    def make(pipelines: dict[str, dict[str, Any]], project: dict[str, Any] | None = None) -> Any:
        return lake(pipelines, store.project(**(project or {})))

    return make


def _pipeline(kinds: list[str], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"type": "files", "path": "drops/*.jsonl"},
        "target": {"table": TABLE},
        "checks": [{"not_null": ["id"]}, {"accepted_values": {"column": "kind", "values": kinds}}],
    }
    for key, value in extra.items():
        if key in ("mode", "keys", "contract"):
            body["target"][key] = value
        else:
            body[key] = value
    return body


def _set_pipeline(lk: Any, body: dict[str, Any]) -> None:
    (lk.root / "pipelines" / "events.yaml").write_text(yaml.safe_dump({"name": "events", **body}, sort_keys=False))


def _write(lk: Any, name: str, lines: list[Any]) -> None:
    path = lk.root / "drops" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n" for x in lines))


@pytest.fixture
def loaded(lake: Any, store: Store) -> Any:
    lk = lake({"events": _pipeline(["click", "view"])})
    _write(lk, "a.jsonl", LINES)
    res = lk.run("events")
    assert (res.rows_committed, res.rows_quarantined) == (1, 6)
    assert all(lk.table(t).location().startswith(store.uri) for t in (TABLE, Q)), "the tables live in the store"
    return lk


def _ids(lk: Any) -> Counter[Any]:
    return Counter(r["id"] for r in lk.rows(TABLE))


def _quarantine(lk: Any) -> dict[str, dict[str, Any]]:
    return {q["source"]: q for q in lk.rows(Q, "source")}


def _replay(lk: Any, **kwargs: Any) -> Any:
    return replay_quarantine(lk.project(), TABLE, catalog=lk.catalog, **kwargs)


def test_rows_that_pass_the_fixed_rules_move_once_and_the_rest_stay(loaded):
    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    before = _quarantine(lk)
    res = _replay(lk)
    assert (res.rows_considered, res.rows_committed, res.rows_quarantined, res.rows_filtered) == (6, 2, 4, 0)
    assert res.conserved and res.failures_by_check == {"type": 1, "decode": 1, "accepted_values": 1, "not_null": 1}
    assert _ids(lk) == Counter({1: 1, 2: 1, 3: 1})
    rows = {r["id"]: r for r in lk.rows(TABLE)}
    assert rows[3]["coupon"] == "X" and rows[2]["coupon"] is None
    assert rows[2]["_source_file"] == "drops/a.jsonl"  # restored from the coordinates
    snap = lk.table(TABLE).snapshot_by_id(res.snapshots[0])
    assert snap.summary["icefield.batch-id"] == res.replay_ids[0] and snap.summary["icefield.pipeline"] == "events"
    after = _quarantine(lk)
    assert sorted(after) == ["drops/a.jsonl:4", "drops/a.jsonl:5", "drops/a.jsonl:6", "drops/a.jsonl:7"]
    unchanged = ["drops/a.jsonl:4", "drops/a.jsonl:5", "drops/a.jsonl:7"]
    assert [after[s] for s in unchanged] == [before[s] for s in unchanged]  # same verdict: rows untouched
    refund = after["drops/a.jsonl:6"]  # same check, new reason (the accepted values changed)
    assert refund["reason"].endswith("is not one of click, view, buy") and refund["run_id"] == res.run_id
    assert refund["row_id"] == before["drops/a.jsonl:6"]["row_id"]
    # A rerun finds nothing more to move and changes nothing.
    snapshots = lk.snapshot_count(Q), lk.snapshot_count(TABLE)
    again = _replay(lk)
    assert (again.rows_considered, again.rows_committed, again.replay_ids) == (4, 0, [])
    assert (lk.snapshot_count(Q), lk.snapshot_count(TABLE)) == snapshots


def test_a_row_failing_for_another_reason_keeps_its_new_reason_and_a_filtered_row_leaves(loaded):
    lk = loaded
    body = _pipeline(["click", "view", "buy"])
    body["checks"].insert(0, {"filter": "kind <> 'refund'"})
    body["checks"].append({"range": {"column": "id", "max": 2}})
    _set_pipeline(lk, body)
    res = _replay(lk)
    assert (res.rows_committed, res.rows_quarantined, res.rows_filtered) == (1, 4, 1)
    assert _ids(lk) == Counter({1: 1, 2: 1})
    q = _quarantine(lk)
    assert "drops/a.jsonl:6" not in q  # the refund is filtered now
    assert q["drops/a.jsonl:3"]["check"] == "range" and "above the maximum 2" in q["drops/a.jsonl:3"]["reason"]
    assert q["drops/a.jsonl:3"]["run_id"] == res.run_id
    assert q["drops/a.jsonl:4"]["check"] == "type"


def test_dry_run_counts_and_writes_nothing(loaded):
    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    snapshots = lk.snapshot_count(Q), lk.snapshot_count(TABLE)
    res = _replay(lk, dry_run=True)
    assert (res.dry_run, res.rows_committed, res.rows_quarantined) == (True, 2, 4)
    assert (lk.snapshot_count(Q), lk.snapshot_count(TABLE)) == snapshots


@pytest.mark.parametrize("point", ["replay-after-claim", "replay-after-commit"])
def test_interrupted_replay_resumes_exactly_once(loaded, monkeypatch, point):
    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    failpoints.arm()
    monkeypatch.setenv(failpoints.ENV, f"{point}:raise")
    with pytest.raises(IcefieldError, match=point):
        _replay(lk)
    monkeypatch.delenv(failpoints.ENV)
    claimed = [q for q in lk.rows(Q) if q["replay_id"] is not None]
    assert sorted(q["source"] for q in claimed) == ["drops/a.jsonl:2", "drops/a.jsonl:3"]
    (rid,) = {q["replay_id"] for q in claimed}
    (info,) = list_quarantines(lk.catalog)
    assert info.replaying == 2
    landed = find_batch(lk.table(TABLE), rid) is not None
    assert landed == (point == "replay-after-commit")

    res = _replay(lk)
    assert _ids(lk) == Counter({1: 1, 2: 1, 3: 1})  # each row once, however far the first replay got
    assert (res.rows_resumed, res.rows_committed) == ((2, 0) if landed else (0, 2))
    assert res.replay_ids == ([] if landed else [rid])  # an unlanded claim lands under its own id
    assert res.conserved
    assert sorted(_quarantine(lk)) == ["drops/a.jsonl:4", "drops/a.jsonl:5", "drops/a.jsonl:6", "drops/a.jsonl:7"]
    assert all(q["replay_id"] is None for q in lk.rows(Q))


def test_a_claimed_row_that_fails_after_a_rule_change_is_unclaimed_not_lost(loaded, monkeypatch):
    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    failpoints.arm()
    monkeypatch.setenv(failpoints.ENV, "replay-after-claim:raise")
    with pytest.raises(IcefieldError):
        _replay(lk)
    monkeypatch.delenv(failpoints.ENV)
    body = _pipeline(["click", "view", "buy"])
    body["checks"].append({"range": {"column": "id", "max": 2}})  # row 3 fails now
    _set_pipeline(lk, body)
    res = _replay(lk)
    assert _ids(lk) == Counter({1: 1, 2: 1})
    q = _quarantine(lk)
    assert q["drops/a.jsonl:3"]["check"] == "range" and q["drops/a.jsonl:3"]["replay_id"] is None
    assert res.conserved and all(r["replay_id"] is None for r in q.values())


@pytest.mark.parametrize("point", ["replay-after-claim", "replay-after-commit", "after-commit"])
def test_sigkill_during_replay_then_rerun_lands_each_row_once(loaded, point):
    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    args = [sys.executable, "-m", "icefield.testing.failpoints", "--project", str(lk.root), "quarantine", "replay", TABLE, "--json"]
    killed = subprocess.run(args, env={**env, failpoints.ENV: f"{point}:kill"}, capture_output=True, text=True, check=False)
    assert killed.returncode == 137, killed.stderr
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)["result"]
    assert result["conserved"] and result["rows_committed"] + result["rows_resumed"] == 2
    assert _ids(lk) == Counter({1: 1, 2: 1, 3: 1})
    assert len(_quarantine(lk)) == 4


def _quarantine_extra_row(lk: Any) -> None:
    """A quarantined row with a column the table never had (the batch that brought it was refused)."""
    from icefield.engines.local import LocalEngine
    from icefield.pipeline.quarantine import QuarantinedRow, write_quarantine

    row = QuarantinedRow("accepted_values", "accepted_values: no", '{"id": 10, "kind": "buy", "promo": "Y"}', "drops/z.jsonl:1")
    write_quarantine(lk.catalog, LocalEngine(), TABLE, "events", "batch-z", "run-z", [row])


@pytest.mark.parametrize("contract", ["freeze", "additive-only", "evolve"])
def test_the_contract_still_decides_about_new_columns(loaded, contract):
    lk = loaded
    _quarantine_extra_row(lk)
    _set_pipeline(lk, _pipeline(["click", "view", "buy"], contract=contract))
    snapshots = lk.snapshot_count(Q), lk.snapshot_count(TABLE)
    if contract == "freeze":
        with pytest.raises(SchemaError, match=r"column 'promo': \(absent\) -> string: additive \(new column\): REFUSED"):
            _replay(lk)
        assert (lk.snapshot_count(Q), lk.snapshot_count(TABLE)) == snapshots
        return
    res = _replay(lk)
    assert res.rows_committed == 3
    assert {r["id"]: r["promo"] for r in lk.rows(TABLE)} == {1: None, 2: None, 3: None, 10: "Y"}


def test_replay_into_a_merge_table_upserts_by_key(lake):
    lk = lake({"events": _pipeline(["click"], mode="merge", keys=["id"])})
    _write(lk, "a.jsonl", [{"id": 1, "kind": "click"}, {"id": 2, "kind": "view"}])
    lk.run("events")
    _set_pipeline(lk, _pipeline(["click", "view"], mode="merge", keys=["id"]))
    res = _replay(lk)
    assert res.rows_committed == 1
    assert sorted((r["id"], r["kind"]) for r in lk.rows(TABLE)) == [(1, "click"), (2, "view")]


def test_overwrite_tables_and_foreign_pipelines(loaded):
    lk = loaded
    _set_pipeline(lk, {**_pipeline(["click"]), "target": {"table": TABLE, "mode": "overwrite"}})
    with pytest.raises(ConfigError, match="mode overwrite"):
        _replay(lk)
    # Rows of a pipeline the project no longer has are left as they are, and counted.
    (lk.root / "pipelines" / "events.yaml").rename(lk.root / "pipelines" / "renamed.yaml")
    (lk.root / "pipelines" / "renamed.yaml").write_text(yaml.safe_dump({"name": "renamed", **_pipeline(["click", "buy"])}))
    res = _replay(lk)
    assert (res.rows_considered, res.rows_skipped, res.rows_committed) == (6, 6, 0) and res.conserved
    with pytest.raises(ConfigError, match="no quarantine"):
        replay_quarantine(lk.project(), "raw.nothing", catalog=lk.catalog)


def test_bytes_that_are_not_utf8_never_land_as_text(lake):
    lk = lake({"events": _pipeline(["click", "view"])})
    _write(lk, "a.jsonl", [{"id": 1, "kind": "click"}, b'{"id": 2, "kind": "vi\xffew"}'])
    lk.run("events")
    _set_pipeline(lk, {**_pipeline(["click", "view"]), "checks": []})  # no check left
    res = _replay(lk)
    assert (res.rows_committed, res.rows_quarantined) == (0, 1)
    (q,) = lk.rows(Q)
    assert q["raw_bytes"] == b'{"id": 2, "kind": "vi\xffew"}' and q["check"] == "decode"


def test_a_quarantine_written_before_row_ids_is_upgraded(lake):
    """A quarantine table of the first layout (no row_id, raw_bytes, replay_id) gains the columns on the
    next write, and its old rows get row ids on the first replay."""
    from icefield.config.models import TargetConfig
    from icefield.engines.local import LocalEngine
    from icefield.write import TableWriter

    lk = lake({"events": _pipeline(["click", "view"])})
    _write(lk, "a.jsonl", [{"id": 1, "kind": "click"}])
    lk.run("events")
    old = pa.table(
        {
            "pipeline": ["events", "events"],
            "batch_id": ["b1", "b1"],
            "run_id": ["r1", "r1"],
            "check": ["accepted_values", "accepted_values"],
            "reason": ["accepted_values: no", "accepted_values: no"],
            "raw": ['{"id": 7, "kind": "buy"}', '{"id": 8, "kind": "buy"}'],
            "source": ["drops/old.jsonl:1", "drops/old.jsonl:2"],
            "quarantined_at": pa.array([None, None], pa.timestamp("us", tz="UTC")),
        }
    )
    TableWriter(lk.catalog, TargetConfig(table=Q), "events", LocalEngine()).commit(old, "b1", None, "r1")
    _write(lk, "b.jsonl", [{"id": 9, "kind": "refund"}])
    lk.run("events")  # writes to the old table: it gains the new columns
    assert {"row_id", "raw_bytes", "replay_id"} <= set(lk.table(Q).schema().as_arrow().names)
    _set_pipeline(lk, _pipeline(["click", "view", "buy", "refund"]))
    res = _replay(lk)
    assert res.rows_committed == 3 and res.conserved
    assert _ids(lk) == Counter({1: 1, 7: 1, 8: 1, 9: 1})
    assert lk.rows(Q) == []


# ------------------------------------------------------------------ CLI


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.stdout


def test_cli_list_show_replay(loaded):
    lk = loaded
    root = str(lk.root)
    code, out = _cli("--project", root, "quarantine", "list", "--json")
    assert code == EXIT_OK
    (doc,) = json.loads(out)["quarantines"]
    assert (doc["table"], doc["rows"], doc["by_check"]) == (TABLE, 6, {"accepted_values": 3, "type": 1, "decode": 1, "not_null": 1})

    code, out = _cli("--project", root, "quarantine", "show", TABLE, "--limit", "2", "--check", "accepted_values", "--json")
    assert code == EXIT_OK
    doc = json.loads(out)
    assert doc["total"] == 3 and len(doc["rows"]) == 2
    row = doc["rows"][0]
    assert {"raw", "reason", "check", "source", "batch_id", "run_id", "quarantined_at", "row_id", "raw_bytes_base64"} <= set(row)
    assert row["check"] == "accepted_values" and row["raw_bytes_base64"] is None

    code, out = _cli("--project", root, "quarantine", "show", TABLE)
    assert code == EXIT_OK and "drops/a.jsonl:5" in out and "{broken" in out

    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    code, out = _cli("--project", root, "quarantine", "replay", TABLE, "--json")
    assert code == EXIT_OK
    result = json.loads(out)["result"]
    assert (result["rows_committed"], result["rows_quarantined"], result["conserved"]) == (2, 4, True)

    code, out = _cli("--project", root, "quarantine", "show", "raw.nothing", "--json")
    assert code == EXIT_USAGE and json.loads(out)["status"] == "error"
    code, _ = _cli("--project", root, "quarantine", "replay", TABLE, "--pipeline", "nope")
    assert code == EXIT_USAGE


def test_cli_show_gives_exact_bytes_as_base64(lake):
    lk = lake({"events": _pipeline(["click"])})
    _write(lk, "a.jsonl", [b"\xff\xfe not text"])
    lk.run("events")
    code, out = _cli("--project", str(lk.root), "quarantine", "show", TABLE, "--json")
    (row,) = json.loads(out)["rows"]
    assert base64.b64decode(row["raw_bytes_base64"]) == b"\xff\xfe not text"
    assert show_quarantine(lk.catalog, TABLE)[1][0]["raw_bytes"] == b"\xff\xfe not text"



def test_a_replay_refuses_while_a_run_writes_the_table_and_names_it(loaded):
    """A replay writes the pipeline's table: it takes the table's lease as a run does, so a running
    pipeline (or a second replay) and a replay never write it at once."""
    from icefield.catalog import leases

    lk = loaded
    _set_pipeline(lk, _pipeline(["click", "view", "buy"]))
    running = leases.acquire(lk.catalog, TABLE, "run-busy", "pipeline events")
    try:
        with pytest.raises(leases.LeaseHeldError, match="run run-busy of pipeline events"):
            _replay(lk)
        assert _ids(lk) == Counter({1: 1}), "nothing replayed while the run holds the table"
        assert _replay(lk, dry_run=True).rows_committed == 2, "a dry run writes nothing and needs no lease"
    finally:
        running.release()
    assert _replay(lk).rows_committed == 2
    assert _ids(lk) == Counter({1: 1, 2: 1, 3: 1})
