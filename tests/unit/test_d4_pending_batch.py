"""docs/reliability.md D4: a write error in the middle of a batch.

Three files are three batches; the second one fails while it is being written (a failpoint raising at
each point of the write path, or a storage error: its partition folder cannot be created). The run
fails with the first batch committed and the second reported pending (in the run result and in
``icefield run --json``); nothing of the second batch is in the table nor in its position; no row
vanishes (each source row is committed, pending or quarantined). The next run lands the rest exactly
once: every good row once in the table, every bad row once in the quarantine.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from icefield import IcefieldError
from icefield.cli import EXIT_FAILED, cli
from icefield.iceberg.history import find_batch, read_position
from icefield.testing import failpoints

TABLE = "raw.events"
FILES = {
    "drops/a.jsonl": [{"id": 1, "kind": "click"}, {"id": 2, "kind": "click"}, "{broken"],
    "drops/b.jsonl": [{"id": 3, "kind": "view"}, {"id": "12abc", "kind": "view"}, {"id": 4, "kind": "view"}],
    "drops/c.jsonl": [{"id": 5, "kind": "buy"}],
}
GOOD = [1, 2, 3, 4, 5]
BAD_SOURCES = ["drops/a.jsonl:3", "drops/b.jsonl:2"]


def _lake(lake: Any) -> Any:
    lk = lake({"events": {"source": {"type": "files", "path": "drops/*.jsonl"}, "target": {"table": TABLE, "partition_by": ["kind"]}}})
    for rel, lines in FILES.items():
        path = lk.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return lk


def _assert_landed_once(lk: Any) -> None:
    ids = Counter(r["id"] for r in lk.rows(TABLE))
    assert ids == Counter(GOOD)
    sources = Counter(q["source"] for q in lk.rows(TABLE + "__quarantine"))
    assert sources == Counter(BAD_SOURCES)


def _assert_pending_second_batch(lk: Any, err: IcefieldError, committed_in_run: int = 1) -> None:
    res = err.result  # type: ignore[attr-defined]
    assert res.status == "failed" and len(res.batches) == committed_in_run
    pending = res.pending
    assert pending is not None and pending.rows_in == 3 and "drops/b.jsonl" in pending.source_range
    assert pending.error == res.error and pending.error_type == type(err).__name__
    table = lk.table(TABLE)
    assert find_batch(table, pending.batch_id) is None
    assert [r["id"] for r in lk.rows(TABLE, "id")] == [1, 2]
    assert sorted(read_position(table, "events")["files"]) == ["drops/a.jsonl"]  # position not advanced
    # Nothing vanished: every source row is committed, in the pending batch, or quarantined.
    quarantined = {q["source"] for q in lk.rows(TABLE + "__quarantine")}
    assert quarantined <= set(BAD_SOURCES) and "drops/a.jsonl:3" in quarantined


# (point, hit): each batch commits its quarantine, then its rows, both through the writer, so the
# writer's points are hit twice per batch: the 3rd hit is the second batch's quarantine, the 4th its rows.
POINTS = [("before-quarantine", 2), ("after-quarantine", 2), ("after-data-files", 3), ("after-data-files", 4), ("before-commit", 4)]


@pytest.mark.parametrize(("point", "hit"), POINTS, ids=[f"{p}@{n}" for p, n in POINTS])
def test_failpoint_mid_batch_leaves_it_pending_then_lands_it_once(lake, monkeypatch, point, hit):
    lk = _lake(lake)
    failpoints.arm()
    monkeypatch.setenv(failpoints.ENV, f"{point}:raise@{hit}")
    with pytest.raises(IcefieldError, match=f"failpoint {point} fired") as info:
        lk.run("events")
    _assert_pending_second_batch(lk, info.value)
    pending = info.value.result.pending  # type: ignore[attr-defined]

    monkeypatch.delenv(failpoints.ENV)
    res = lk.run("events")
    assert res.status == "success" and res.pending is None
    assert res.batches[0].batch_id == pending.batch_id and not res.batches[0].skipped
    _assert_landed_once(lk)
    assert lk.run("events").batches == []


def test_storage_error_mid_batch_leaves_it_pending_then_lands_it_once(lake):
    lk = _lake(lake)
    lk.run("events", max_batches=1)
    # The second batch writes the partition kind=view: a file where its folder must go fails the write.
    data_dir = Path(lk.table(TABLE).location().removeprefix("file://")) / "data"
    blocker = data_dir / "kind=view"
    blocker.write_text("not a folder")
    with pytest.raises(IcefieldError, match="stays pending") as info:
        lk.run("events")
    _assert_pending_second_batch(lk, info.value, committed_in_run=0)
    blocker.unlink()
    res = lk.run("events")
    assert [b.batch_id for b in res.batches][0] == info.value.result.pending.batch_id  # type: ignore[attr-defined]
    _assert_landed_once(lk)


def test_cli_reports_the_pending_batch_and_exits_1(lake, monkeypatch):
    lk = _lake(lake)
    failpoints.arm()
    monkeypatch.setenv(failpoints.ENV, "after-data-files:raise@4")
    res = CliRunner().invoke(cli, ["--project", str(lk.root), "run", "--json"])
    assert res.exit_code == EXIT_FAILED
    (summary,) = res.stdout.splitlines()  # one document: the results and the error
    doc = json.loads(summary)
    assert doc["type"] == "FailpointError"
    (result,) = doc["results"]
    assert doc["status"] == "failed" and result["status"] == "failed"
    assert result["pending"]["rows_in"] == 3 and result["pending"]["error_type"] == "FailpointError"
    assert result["rows_committed"] == 2 and result["conserved"]
