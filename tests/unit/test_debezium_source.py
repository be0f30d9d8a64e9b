"""The ``debezium`` source from JSON Lines files, through the pipeline: change events land as the
source table is, exactly once, with deletes, tombstones, truncates, new columns and bad events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from icefield.config.models import CDC_COMMIT_LSN, CDC_LSN

PIPE = {"source": {"type": "debezium", "path": "cdc/*.jsonl"}, "target": {"table": "cdc.users", "keys": ["id"]}}


def event(op: str, row: dict[str, Any] | None, commit: int | None, lsn: int, before: dict[str, Any] | None = None) -> str:
    """A Debezium 3.6 PostgreSQL event as JsonConverter writes it with schemas.enable=false."""
    source = {
        "version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1_790_000_000_000, "snapshot": "true" if op == "r" else "false",
        "db": "app", "sequence": json.dumps([None if commit is None else str(commit), str(lsn)]), "schema": "public", "table": "users",
        "txId": 700, "lsn": lsn, "xmin": None,
    }  # fmt: skip
    return json.dumps({"before": before, "after": row, "source": source, "op": op, "ts_ms": 1_790_000_000_001})


def write(root: Path, name: str, lines: list[str]) -> None:
    (root / "cdc").mkdir(exist_ok=True)
    with (root / "cdc" / name).open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def users(lk: Any) -> list[tuple[Any, ...]]:
    return [(r["id"], r["name"]) for r in lk.rows("cdc.users", "id")]


def test_snapshot_then_changes_land_as_the_source_is(lake: Any) -> None:
    lk = lake({"users": PIPE})
    write(lk.root, "0001.jsonl", [event("r", {"id": i, "name": f"u{i}"}, None, 100 + i) for i in range(1, 6)])
    first = lk.run("users")
    assert users(lk) == [(i, f"u{i}") for i in range(1, 6)]
    assert first.conserved and first.rows_in == 5
    write(
        lk.root,
        "0002.jsonl",
        [
            event("u", {"id": 2, "name": "two"}, 300, 290, before={"id": 2, "name": "u2"}),
            event("d", None, 300, 291, before={"id": 3, "name": "u3"}),
            "null",  # the tombstone after the delete
            event("c", {"id": 6, "name": "six"}, 310, 305),
        ],
    )
    second = lk.run("users")
    assert users(lk) == [(1, "u1"), (2, "two"), (4, "u4"), (5, "u5"), (6, "six")]
    assert second.rows_in == 4 and second.rows_filtered == 1 and second.conserved
    table = lk.table("cdc.users")
    assert {CDC_COMMIT_LSN, CDC_LSN, "_cdc_op", "_cdc_ts_ms"} <= set(table.schema().column_names)
    assert "_cdc_deleted" not in table.schema().column_names, "the delete flag steers the merge and is not stored"
    snapshots = lk.snapshot_count("cdc.users")
    third = lk.run("users")
    assert not third.batches and lk.snapshot_count("cdc.users") == snapshots, "nothing new: no snapshot"


def test_lines_appended_to_a_file_are_read_next_run_and_redeliveries_change_nothing(lake: Any) -> None:
    lk = lake({"users": PIPE})
    lines = [event("c", {"id": 1, "name": "a"}, 200, 190), event("u", {"id": 1, "name": "b"}, 210, 205)]
    write(lk.root, "log.jsonl", lines)
    lk.run("users")
    write(lk.root, "log.jsonl", [*lines, event("d", None, 220, 215, before={"id": 1, "name": "b"})][:2])  # redelivered
    lk.run("users")
    assert users(lk) == [(1, "b")], "old events delivered again do not roll the row back"
    write(lk.root, "log.jsonl", [event("d", None, 220, 215, before={"id": 1, "name": "b"})])
    lk.run("users")
    write(lk.root, "log.jsonl", [event("c", {"id": 1, "name": "a"}, 200, 190)])  # redelivered after the delete
    lk.run("users")
    assert users(lk) == [], "a redelivered insert does not resurrect the deleted row"


def test_a_truncate_empties_the_table_and_the_events_after_it_land(lake: Any) -> None:
    lk = lake({"users": PIPE})
    write(lk.root, "0001.jsonl", [event("c", {"id": i, "name": f"u{i}"}, 200, 190 + i) for i in range(1, 4)])
    lk.run("users")
    truncate = json.loads(event("t", None, 400, 395))
    write(lk.root, "0002.jsonl", [event("c", {"id": 9, "name": "before"}, 390, 385), json.dumps(truncate), event("c", {"id": 7, "name": "after"}, 410, 405)])
    result = lk.run("users")
    assert users(lk) == [(7, "after")]
    assert result.conserved


def test_a_column_added_in_the_source_reaches_the_table(lake: Any) -> None:
    lk = lake({"users": PIPE})
    write(lk.root, "0001.jsonl", [event("c", {"id": 1, "name": "a"}, 200, 190)])
    lk.run("users")
    write(lk.root, "0002.jsonl", [event("c", {"id": 2, "name": "b", "email": "b@x.io"}, 210, 200)])
    lk.run("users")
    rows = lk.rows("cdc.users", "id")
    assert [(r["id"], r["email"]) for r in rows] == [(1, None), (2, "b@x.io")]


def test_bad_events_go_to_the_quarantine_with_their_coordinates(lake: Any) -> None:
    lk = lake({"users": PIPE})
    lines = [event("c", {"id": 1, "name": "a"}, 200, 190), '{"before": null, "after": {"id": 2', event("x", {"id": 3, "name": "c"}, 200, 191)]
    write(lk.root, "0001.jsonl", lines)
    result = lk.run("users")
    assert users(lk) == [(1, "a")]
    assert result.rows_quarantined == 2 and result.conserved
    bad = lk.rows("cdc.users__quarantine", "source")
    second, third = len(lines[0]) + 1, len(lines[0]) + len(lines[1]) + 2
    assert sorted(r["source"] for r in bad) == sorted([f"cdc/0001.jsonl@{second}", f"cdc/0001.jsonl@{third}"])
    assert any(r["raw"] == lines[1] for r in bad), "the raw line is kept as it was"


def test_a_file_shorter_than_what_was_loaded_is_refused(lake: Any) -> None:
    from icefield.errors import ConfigError

    lk = lake({"users": PIPE})
    write(lk.root, "0001.jsonl", [event("c", {"id": 1, "name": "a"}, 200, 190)])
    lk.run("users")
    (lk.root / "cdc" / "0001.jsonl").write_text("")
    with pytest.raises(ConfigError, match="append-only"):
        lk.run("users")


def test_the_shop_capture_lands_exactly_the_source_orders(tmp_path: Path) -> None:
    """The demo's Debezium stand-in (embedded schema, decimals, micro-timestamps, redeliveries, interleaved
    transactions) through the pipeline: the table equals the database after each capture."""
    from icefield.catalog import open_catalog
    from icefield.config import load_project
    from icefield.demo import _cdc_matches, copy_example
    from icefield.examples.shop import cdc, generate
    from icefield.pipeline import run_pipeline

    root = tmp_path / "shop"
    copy_example(root, fresh=True)
    gen = generate.create(root, customers=20, orders=200)
    cdc.capture(root)
    project = load_project(root, env={})
    catalog = open_catalog(project)
    run_pipeline(project, "orders_cdc", catalog)
    assert _cdc_matches(project, catalog, gen.db_path)
    generate.mutate(root, new_orders=30, updated_orders=25)
    cdc.delete_orders(gen.db_path, list(gen.bad_order_ids))
    changes = cdc.capture(root)
    assert changes.deletes == len(gen.bad_order_ids) and changes.redelivered > 0
    result = run_pipeline(project, "orders_cdc", catalog)
    assert result.conserved
    assert _cdc_matches(project, catalog, gen.db_path)


def test_follow_commits_new_events_as_they_arrive_and_stops_when_asked(lake: Any) -> None:
    import threading
    import time

    from pyiceberg.exceptions import NoSuchTableError

    lk = lake({"users": {**PIPE, "source": {**PIPE["source"], "max_wait_seconds": 0.2}}})
    write(lk.root, "0001.jsonl", [event("c", {"id": 1, "name": "a"}, 200, 190)])
    stop = threading.Event()
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.setdefault("result", lk.run("users", follow=True, stop=stop)))
    runner.start()

    def wait_for(expected: list[tuple[Any, ...]]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if users(lk) == expected:
                    return
            except NoSuchTableError:  # not created yet
                pass
            time.sleep(0.1)
        raise AssertionError(f"the table never became {expected}")

    try:
        wait_for([(1, "a")])
        write(lk.root, "0001.jsonl", [event("c", {"id": 2, "name": "b"}, 210, 200)])
        wait_for([(1, "a"), (2, "b")])
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive(), "the follow loop ends once stopped"
    result = out["result"]
    assert len(result.batches) == 2 and result.conserved


def test_a_first_batch_of_tombstones_alone_is_filtered_and_the_next_lands(lake: Any) -> None:
    """A stream that starts with tombstones (a topic read from after some deletes) crashed the merge: the
    empty batch had no key column to merge by (KeyError), and the pipeline never got past it."""
    lk = lake({"users": PIPE})
    write(lk.root, "0001.jsonl", ["null", "null"])
    first = lk.run("users")
    assert first.status == "success" and first.rows_filtered == 2 and first.conserved
    write(lk.root, "0002.jsonl", [event("c", {"id": 1, "name": "one"}, 400, 401)])
    second = lk.run("users")
    assert second.rows_committed == 1 and users(lk) == [(1, "one")]
