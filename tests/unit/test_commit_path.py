"""The one commit path (docs/architecture.md, "The write path"): every commit site replans on conflicts and
resolves an unknown outcome by looking at the table, never by guessing; storage that cannot be reached is a
transient failure (exit 75); fault injection is off in production unless a test arms it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import EXIT_OK, EXIT_TRANSIENT, FailpointError, IntegrityError
from icefield.iceberg.history import read_position
from icefield.testing import failpoints
from icefield.write import TableWriter

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Any]:
    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    yield cat
    cat.engine.dispose()


def _writer(catalog: Any, **target: Any) -> TableWriter:
    return TableWriter(catalog, TargetConfig(table="t.e", **target), "p", LocalEngine())


def _batch(keys: list[int], label: str = "v") -> pa.Table:
    return pa.table({"k": keys, "v": [f"{label}{k}" for k in keys]}, schema=SCHEMA)


def _keys(w: TableWriter) -> list[int]:
    t = w.load()
    assert t is not None
    return sorted(t.scan().to_arrow().column("k").to_pylist())


class LandsThenTimesOut:
    """Wraps a real catalog; its next commit lands, then the response is lost (a ``TimeoutError``). The one
    thing mocked: a catalog that loses a response cannot be produced on demand otherwise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load_table(self, ident: Any) -> Any:
        table = self.inner.load_table(ident)
        table.catalog = self
        return table

    def commit_table(self, table: Any, requirements: Any, updates: Any) -> Any:
        response = self.inner.commit_table(table, requirements, updates)
        if not self.fired:
            self.fired = True
            raise TimeoutError("simulated: the response was lost after the swap")
        return response


# ---------------------------------------------------------------------------------------- failpoints


def test_the_failpoint_variable_alone_fires_nothing_in_production(catalog: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Production code used to read ICEFIELD_FAILPOINT itself: the variable alone, set by mistake in a
    service's environment, crashed or failed every commit. Now only a test that arms failpoints makes them fire."""
    monkeypatch.setenv(failpoints.ENV, "before-commit:raise")
    w = _writer(catalog)
    w.commit(_batch([1]), "b1", {"n": 1}, "r")
    assert _keys(w) == [1]
    with failpoints.armed(), pytest.raises(FailpointError, match="failpoint before-commit fired"):
        w.commit(_batch([2]), "b2", {"n": 2}, "r")
    assert _keys(w) == [1] and read_position(w.load(), "p") == {"n": 1}

    # The command line too: a run with the variable set (kill after the first commit) runs to its end.
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "drop" / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "t"}))
    pipe = {"name": "f", "source": {"type": "files", "path": "drop/*.jsonl"}, "target": {"table": "raw.f"}}
    (root / "pipelines" / "f.yaml").write_text(yaml.safe_dump(pipe))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    run = [sys.executable, "-m", "icefield.cli", "--project", str(root), "run"]
    done = subprocess.run(run, env={**env, failpoints.ENV: "after-commit@1"}, capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_OK, done.stderr


# ---------------------------------------------------------------------------------------- unknown outcomes


def test_an_expiry_whose_commit_landed_but_timed_out_deletes_the_old_files_and_reports_it(tmp_path: Path) -> None:
    """Expiry committed through pyiceberg on its own: a lost response escaped as a raw TimeoutError (an
    internal error). Through the commit path the outcome is looked up: the snapshots it expired are gone,
    so it landed and its files go as after any expiry."""
    from icefield.write.expire import expire_table

    root = tmp_path
    catalog = sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())
    w = TableWriter(catalog, TargetConfig(table="t.e", mode="merge", keys=["k"]), "p", LocalEngine())
    for b in range(3):
        w.commit(_batch(list(range(20)), f"m{b}"), f"m{b}", {"at": b}, "r")
    flaky = LandsThenTimesOut(catalog)
    result = expire_table(flaky, "t.e", older_than=0, retain_last=1)  # type: ignore[arg-type]
    assert flaky.fired and result.snapshots_expired == 2 and result.data_files_deleted > 0
    table = w.load()
    assert table is not None and len(table.metadata.snapshots) == 1
    assert _keys(w) == list(range(20)) and read_position(table, "p") == {"at": 2}
    catalog.engine.dispose()


def test_a_replay_whose_quarantine_commit_landed_but_timed_out_goes_on(lake: Any) -> None:
    """Quarantine replay committed its claims in a loop of its own that knew conflicts only: a lost
    response escaped as a raw TimeoutError. Through the commit path the claim is found by its batch id
    and the replay goes on: every passing row lands once."""
    from icefield.pipeline.replay import replay_quarantine

    def pipeline(kinds: list[str]) -> dict[str, Any]:
        return {
            "source": {"type": "files", "path": "drops/*.jsonl"},
            "target": {"table": "raw.events"},
            "checks": [{"accepted_values": {"column": "kind", "values": kinds}}],
        }

    lk = lake({"events": pipeline(["click"])})
    (lk.root / "drops").mkdir()
    (lk.root / "drops" / "a.jsonl").write_text('{"id": 1, "kind": "click"}\n{"id": 2, "kind": "buy"}\n{"id": 3, "kind": "buy"}\n')
    assert lk.run("events").rows_quarantined == 2
    (lk.root / "pipelines" / "events.yaml").write_text(yaml.safe_dump({"name": "events", **pipeline(["click", "buy"])}))
    flaky = LandsThenTimesOut(lk.catalog)
    res = replay_quarantine(lk.project(), "raw.events", catalog=flaky)  # type: ignore[arg-type]
    assert flaky.fired and res.conserved and res.rows_committed == 2
    assert sorted(r["id"] for r in lk.rows("raw.events")) == [1, 2, 3]
    assert lk.rows("raw.events__quarantine") == []


# ---------------------------------------------------------------------------------------- errors


def test_a_compaction_that_would_lose_rows_is_refused_with_an_icefield_error(catalog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compaction's guard raised a bare RuntimeError (an internal error, exit 1 with "this is a bug")."""
    import icefield.iceberg.datafiles as datafiles
    from icefield.write.compact import compact_table

    w = _writer(catalog)
    for b in range(3):
        w.commit(_batch([b]), f"b{b}", None, "r")
    real = datafiles.write_data_files

    def losing_a_row(table: Any, data: pa.Table, *a: Any, **k: Any) -> Any:
        return real(table, data.slice(1), *a, **k)

    monkeypatch.setattr(datafiles, "write_data_files", losing_a_row)
    with pytest.raises(IntegrityError, match="read 3 rows, wrote 2; nothing was committed"):
        compact_table(catalog, "t.e")
    assert _keys(w) == [0, 1, 2] and len(w.load().metadata.snapshots) == 3  # type: ignore[union-attr]


def test_an_unreachable_object_store_is_a_transient_failure(tmp_path: Path) -> None:
    """A warehouse on an S3 endpoint that refuses connections ended `icefield run` as an internal error
    (exit 1, "this is a bug"); a retry may succeed once the store is back: exit 75, and the message says so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "drop" / "a.jsonl").write_text('{"id": 1}\n')
    project = {
        "name": "t",
        "warehouse": "s3://bucket/wh",
        "catalog": {
            "properties": {
                "s3.endpoint": f"http://127.0.0.1:{port}",
                "s3.access-key-id": "x",
                "s3.secret-access-key": "y",
                "s3.region": "us-east-1",
                "s3.connect-timeout": "2",
            }
        },
    }
    (root / "icefield.yaml").write_text(yaml.safe_dump(project))
    pipe = {"name": "f", "source": {"type": "files", "path": "drop/*.jsonl"}, "target": {"table": "raw.f"}}
    (root / "pipelines" / "f.yaml").write_text(yaml.safe_dump(pipe))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICEFIELD", "AWS"))}
    done = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "run"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == EXIT_TRANSIENT, done.stderr
    assert "object store is unreachable" in done.stderr and "internal error" not in done.stderr


def test_a_catalog_connection_dropped_during_a_commit_is_transient_and_resolved_by_looking(catalog: Any) -> None:
    """A Hive Metastore's Thrift connection dropping during a commit (``TTransportException``, no OSError)
    went out as an internal error (exit 1). It is an unknown outcome: the table is looked at (the batch did
    not land) and the failure is transient (exit 75), the batch pending."""
    from thrift.transport.TTransport import TTransportException

    from icefield.errors import TransientError
    from icefield.iceberg.commits import Retry, commit

    w = _writer(catalog)
    w.commit(pa.table({"k": [1], "v": ["a"]}, schema=SCHEMA), "b1", {"at": 1}, "r")

    def attempt(table: Any) -> Any:
        raise TTransportException(TTransportException.END_OF_FILE, "TSocket read 0 bytes")

    with pytest.raises(TransientError, match="TSocket read 0 bytes") as got:
        commit("batch b2 of t.e", w.load, attempt, retry=Retry(2, 5), landed=lambda t: None)
    assert got.value.exit_code == EXIT_TRANSIENT
