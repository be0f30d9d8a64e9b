"""The engine seam (docs/architecture.md, "Engines"): what the pipeline asks of an engine is to stage a batch
as one transaction; icefield puts the position into it and commits it. An engine that cannot hand data files
back to icefield (Spark) writes the batch on a staging branch with its own commit and returns the
fast-forward of ``main``: the batch and the position still land on ``main`` in one commit, a conflict
replans, and a rerun finds the batch by its id. What an engine can do is data (``capabilities``), never its
class: a merge target needs ``supports_merge``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest
from pyiceberg.serializers import FromInputFile

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.base import Engine, EngineCapabilities, StagedWrite, WriteRequest
from icefield.errors import ConfigError
from icefield.iceberg.history import MAIN, STATE_PREFIX, SUMMARY_BATCH_ID, head_id, read_position
from icefield.write import TableWriter

STAGING = "icefield-stage-p"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Any]:
    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    yield cat
    cat.engine.dispose()


class BranchEngine(Engine):
    """Lands appends as a distributed engine would: its own writer commits the batch on a staging branch
    cut from ``main`` (here pyiceberg's append stands in for Spark's ``INSERT INTO ... branch_<name>``), and
    the transaction it returns fast-forwards ``main`` to that branch head. ``before_return`` runs once the
    branch is written (a test's rival commits there)."""

    name: ClassVar[str] = "branchy"
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities(distributed=True)

    def __init__(self) -> None:
        self.staged = 0
        self.before_return: Any = None

    def stage(self, table: Any, request: WriteRequest) -> StagedWrite:
        from pyiceberg.table.refs import SnapshotRefType

        from icefield.write.branches import cut_branch

        assert request.target.mode == "append"
        self.staged += 1
        table = cut_branch(table, STAGING, force=True)
        table.append(request.data, branch=STAGING, snapshot_properties=request.summary)
        table = table.refresh()
        if self.before_return is not None:
            self.before_return()
        tx = table.transaction()
        tx._stage(*tx._set_ref_snapshot(snapshot_id=head_id(table, STAGING), ref_name=MAIN, type=SnapshotRefType.BRANCH))
        return StagedWrite(tx, changed=True, rows_written=request.data.num_rows, files_added=1)


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64())})


def ids(table: Any) -> list[int]:
    return sorted(table.scan().to_arrow().column("id").to_pylist())


def test_an_engine_that_commits_on_a_staging_branch_lands_batch_and_position_in_one_commit(catalog: Any) -> None:
    engine = BranchEngine()
    writer = TableWriter(catalog, TargetConfig(table="raw.events"), "p", engine)
    first = writer.commit(rows(3), "b1", {"i": 1}, "run")
    second = writer.commit(rows(2, 3), "b2", {"i": 2}, "run")
    table = writer.load()
    assert table is not None
    assert ids(table) == [0, 1, 2, 3, 4] and read_position(table, "p") == {"i": 2}
    assert second.snapshot_id == head_id(table) and table.snapshot_by_id(first.snapshot_id) is not None
    assert table.current_snapshot().summary[SUMMARY_BATCH_ID] == "b2"
    # No metadata version has main at a batch without the batch's position: they moved together.
    versions = [FromInputFile.table_metadata(table.io.new_input(e.metadata_file)) for e in table.metadata.metadata_log]
    for md in [*versions, table.metadata]:
        main = md.refs.get(MAIN)
        expected = {first.snapshot_id: '{"i":1}', second.snapshot_id: '{"i":2}'}.get(main.snapshot_id if main else None)
        if expected is not None:
            assert md.properties.get(STATE_PREFIX + "p") == expected
    # A rerun of a landed batch is found by its id in main's history, and stages nothing.
    again = writer.commit(rows(2, 3), "b2", {"i": 2}, "run")
    assert again.skipped and engine.staged == 2 and ids(writer.load()) == [0, 1, 2, 3, 4]


def test_a_commit_on_main_after_the_staging_replans_the_batch(catalog: Any) -> None:
    engine = BranchEngine()
    writer = TableWriter(catalog, TargetConfig(table="raw.events"), "p", engine)
    writer.commit(rows(1), "b1", {"i": 1}, "run")
    rival = TableWriter(catalog, TargetConfig(table="raw.events"), "rival", BranchEngine())
    engine.before_return = lambda: (setattr(engine, "before_return", None), rival.commit(rows(1, 100), "r1", None, "other"))
    result = writer.commit(rows(2, 1), "b2", {"i": 2}, "run")
    assert engine.staged == 3, "the fast-forward lost to the rival's commit and the batch was staged again"
    table = writer.load()
    assert ids(table) == [0, 1, 2, 100] and read_position(table, "p") == {"i": 2}
    assert result.snapshot_id == head_id(table)


class _NoMerge(Engine):
    name: ClassVar[str] = "appends-only"


def test_a_merge_target_needs_an_engine_that_declares_merges(catalog: Any) -> None:
    with pytest.raises(ConfigError, match="needs an engine that merges; engine 'appends-only' does not"):
        TableWriter(catalog, TargetConfig(table="raw.events", mode="merge", keys=["id"]), "p", _NoMerge())
