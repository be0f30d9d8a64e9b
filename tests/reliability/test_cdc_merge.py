"""CDC semantics of the merge (docs/reliability.md C1-C4) at the writer: change events with a
``[commit LSN, LSN]`` sequence merged with ``keep_newest``. Each test prints its seed and the four counts
(lost, duplicated, unexpected, divergent) against an oracle that keeps, per key, the event with the
greatest sequence; any non-zero count fails."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TOMBSTONE_SUFFIX, TableWriter
from reliability.test_merge_path import counts as count_rows
from reliability.test_merge_path import rows

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("commit_lsn", pa.int64()), ("lsn", pa.int64()), ("_deleted", pa.bool_())])
Event = tuple[int, str | None, int, int]  # key, value (None: delete), commit LSN, LSN


def writer_at(root: Path, order_by: list[str] | None = None) -> TableWriter:
    catalog = sql_catalog("icefield", f"sqlite:///{root / 'catalog.db'}", (root / "warehouse").resolve().as_uri())
    target = TargetConfig(
        table="cdc.t", mode="merge", keys=["k"], order_by=order_by or ["commit_lsn", "lsn"], keep_newest=True, delete_column="_deleted"
    )
    return TableWriter(catalog, target, "p", LocalEngine())


def events_table(events: list[Event]) -> pa.Table:
    return pa.table(
        {
            "k": [e[0] for e in events],
            "v": [e[1] or "" for e in events],
            "commit_lsn": [e[2] for e in events],
            "lsn": [e[3] for e in events],
            "_deleted": [e[1] is None for e in events],
        },
        schema=SCHEMA,
    )


def oracle_of(events: list[Event]) -> dict[int, str]:
    """Per key, the event with the greatest (commit LSN, LSN) wins; a winning delete removes the key."""
    best: dict[int, Event] = {}
    for e in events:
        if e[0] not in best or (e[2], e[3]) > (best[e[0]][2], best[e[0]][3]):
            best[e[0]] = e
    return {k: e[1] for k, e in best.items() if e[1] is not None}


def counts(writer: TableWriter, oracle: dict[int, str]) -> tuple[int, int, int, int]:
    """Lost, duplicated, unexpected and divergent rows of the writer's table against ``oracle``."""
    return count_rows(rows(writer), oracle)


def history(rng: random.Random, keys: int, transactions: int) -> list[Event]:
    """Events of ``transactions`` transactions, in commit order; each touches 1-4 keys (insert, update or
    delete as the key's state allows). LSNs grow, commit LSN is the transaction's end."""
    alive: set[int] = set()
    out: list[Event] = []
    lsn = 1000
    for t in range(transactions):
        rows = []
        for _ in range(rng.randint(1, 4)):
            lsn += rng.randint(1, 5)
            k = rng.randrange(keys)
            if k in alive and rng.random() < 0.25:
                alive.discard(k)
                rows.append((k, None, lsn))
            else:
                alive.add(k)
                rows.append((k, f"t{t}-{lsn}", lsn))
        lsn += 1
        out.extend((k, v, lsn, row_lsn) for k, v, row_lsn in rows)
    return out


def deliver(rng: random.Random, events: list[Event], window: int) -> list[Event]:
    """Each event 1-3 times (at-least-once), shuffled within windows of ``window`` events."""
    copies = [e for e in events for _ in range(rng.choice([1, 1, 2, 3]))]
    out: list[Event] = []
    for i in range(0, len(copies), window):
        chunk = copies[i : i + window]
        rng.shuffle(chunk)
        out.extend(chunk)
    return out


def land(writer: TableWriter, stream: list[Event], rng: random.Random) -> int:
    """Commit ``stream`` in random batch sizes; returns the number of batches."""
    i = n = 0
    while i < len(stream):
        size = rng.randint(1, 60)
        writer.commit(events_table(stream[i : i + size]), f"b{n}", {"offset": i + size}, "r")
        i += size
        n += 1
    return n


@pytest.mark.parametrize("case", range(3))
def test_c1_c2_duplicates_and_out_of_order_match_the_oracle(tmp_path: Path, case: int) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    events = history(rng, keys=30, transactions=120)
    stream = deliver(rng, events, window=rng.choice([5, 20, 80]))
    writer = writer_at(tmp_path)
    batches = land(writer, stream, rng)
    c = counts(writer, oracle_of(events))
    print(f"seed={seed} events={len(events)} delivered={len(stream)} batches={batches} lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert c == (0, 0, 0, 0)


def test_c2_a_late_older_insert_never_resurrects_a_deleted_key(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    writer.commit(events_table([(1, "a", 10, 5), (2, "b", 10, 6)]), "b0", None, "r")
    writer.commit(events_table([(1, None, 20, 15)]), "b1", None, "r")
    # Redelivered: the old insert of key 1, in a batch of its own.
    writer.commit(events_table([(1, "a", 10, 5)]), "b2", None, "r")
    assert counts(writer, {2: "b"}) == (0, 0, 0, 0)
    graves = writer.catalog.load_table(("cdc", "t" + TOMBSTONE_SUFFIX)).scan(selected_fields=("k", "commit_lsn", "lsn")).to_arrow().to_pylist()
    assert graves == [{"k": 1, "commit_lsn": 20, "lsn": 15}], "the delete left its version behind"
    # A genuinely newer insert brings the key back.
    writer.commit(events_table([(1, "again", 30, 25)]), "b3", None, "r")
    assert counts(writer, {1: "again", 2: "b"}) == (0, 0, 0, 0)


def test_c2_an_older_update_or_delete_does_not_touch_a_newer_row(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    writer.commit(events_table([(1, "new", 50, 45)]), "b0", None, "r")
    result = writer.commit(events_table([(1, "old", 40, 35), (1, None, 41, 36)]), "b1", None, "r")
    assert counts(writer, {1: "new"}) == (0, 0, 0, 0)
    assert result.files_removed == 0, "nothing to rewrite when every version is stale"


def interleaved() -> list[Event]:
    """Two transactions interleaved: T1 writes key 1 at LSN 100 and commits at 300; T2 writes key 1 at
    LSN 200 and commits first, at 250. Commit order: T2 then T1, so T1's value is the final one, even
    though its row LSN (100) is lower than T2's (200)."""
    return [(1, "T2", 250, 200), (1, "T1", 300, 100)]


def test_c3_interleaved_transactions_order_by_commit_lsn_then_lsn(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    for i, e in enumerate(interleaved()):
        writer.commit(events_table([e]), f"b{i}", None, "r")
    assert counts(writer, {1: "T1"}) == (0, 0, 0, 0)


def test_c3_negative_control_ordering_by_lsn_alone_loses_the_last_commit(tmp_path: Path) -> None:
    """The bug the rule prevents, made visible: ordering by the row LSN alone keeps T2's value."""
    writer = writer_at(tmp_path, order_by=["lsn"])
    for i, e in enumerate(interleaved()):
        writer.commit(events_table([e]), f"b{i}", None, "r")
    assert counts(writer, {1: "T1"}) == (0, 0, 0, 1), "ordering by LSN alone must diverge"


def test_c4_snapshot_rows_never_overwrite_newer_changes(tmp_path: Path) -> None:
    """Snapshot reads (op r) carry no commit LSN (0 here) and the snapshot's LSN: any streamed change,
    which has a commit LSN, is newer. Streamed changes land first, then the overlapping snapshot."""
    writer = writer_at(tmp_path)
    writer.commit(events_table([(1, "changed", 600, 590), (2, None, 610, 605)]), "b0", None, "r")
    snapshot = [(1, "snap", 0, 500), (2, "snap", 0, 500), (3, "snap", 0, 500)]
    writer.commit(events_table(snapshot), "b1", None, "r")
    assert counts(writer, {1: "changed", 3: "snap"}) == (0, 0, 0, 0)


def test_keep_newest_needs_order_by() -> None:
    with pytest.raises(ValueError, match="'keep_newest' needs 'order_by'"):
        TargetConfig(table="a.b", mode="merge", keys=["k"], keep_newest=True)



def test_truncate_empties_the_table_in_one_commit_and_older_events_never_land_after_it(tmp_path: Path) -> None:
    writer = writer_at(tmp_path)
    writer.commit(events_table([(1, "a", 10, 5), (2, "b", 10, 6)]), "b0", None, "r")
    before = writer.load()
    assert before is not None and before.current_snapshot() is not None
    # The truncate at (100, 100), then the rows written after it in the same batch.
    res = writer.commit(events_table([(3, "c", 120, 110), (4, "d", 120, 111), (4, None, 130, 125)]), "b1", None, "r", truncate_at=[100, 100])
    assert res.files_removed >= 1
    assert counts(writer, {3: "c"}) == (0, 0, 0, 0)
    table = writer.load()
    assert table is not None
    assert len(table.metadata.snapshots) == len(before.metadata.snapshots) + 1, "truncate and rows in one snapshot"
    # A redelivered event from before the truncate does not come back.
    writer.commit(events_table([(1, "a", 10, 5), (5, "e", 140, 135)]), "b2", None, "r")
    assert counts(writer, {3: "c", 5: "e"}) == (0, 0, 0, 0)


@pytest.mark.parametrize("with_schema", [True, False])
def test_c1_to_c4_through_the_debezium_decoder_and_the_pipeline(tmp_path: Path, with_schema: bool) -> None:
    """The same histories as Debezium messages (embedded schema or not), with a snapshot overlapping the
    stream, delivered 1-3 times and shuffled, in JSON Lines files read in small batches."""
    import yaml

    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.pipeline import run_pipeline
    from icefield.testing.debezium import Column, DebeziumTable

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    events = history(rng, keys=25, transactions=80)
    table = DebeziumTable("users", [Column("k", "int64", optional=False), Column("v", "string")], key=["k"], with_schema=with_schema)
    # A snapshot read (op r, no commit LSN) of every key, at an LSN older than the stream's changes.
    snapshot: list[Event] = [(k, f"snap{k}", 0, 900) for k in range(25)]
    lines = []
    for k, v, commit, lsn in deliver(rng, snapshot + events, window=rng.choice([5, 30])):
        if commit == 0:
            lines.append(table.value("r", after={"k": k, "v": v}, lsn=lsn, commit_lsn=None, snapshot="true"))
        elif v is None:
            lines.append(table.value("d", before={"k": k, "v": None}, lsn=lsn, commit_lsn=commit))
        else:
            lines.append(table.value("u", after={"k": k, "v": v}, lsn=lsn, commit_lsn=commit))
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "cdc").mkdir()
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "c", "batch_size": rng.randint(5, 40)}))
    pipe = {"name": "users", "source": {"type": "debezium", "path": "cdc/*.jsonl"}, "target": {"table": "cdc.users", "keys": ["k"]}}
    (root / "pipelines" / "users.yaml").write_text(yaml.safe_dump(pipe))
    (root / "cdc" / "0001.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    project = load_project(root, env={})
    catalog = open_catalog(project)
    result = run_pipeline(project, "users", catalog)
    assert result.conserved
    c = count_rows(catalog.load_table("cdc.users").scan().to_arrow().to_pylist(), oracle_of(snapshot + events))
    print(f"seed={seed} messages={len(lines)} batches={len(result.batches)} lost={c[0]} duplicated={c[1]} unexpected={c[2]} divergent={c[3]}")
    assert c == (0, 0, 0, 0)
