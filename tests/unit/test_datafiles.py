"""icefield's data-file writer splits rows by partition with one sort; each file must hold exactly one
partition (nulls included) and the table must read back the rows written, as pyiceberg's own writer does."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pyarrow as pa

from icefield.catalog import sql_catalog
from icefield.write.datafiles import write_data_files


def _table(catalog, name, schema, fields):
    tx = catalog.create_table_transaction(name, schema=schema)
    with tx.update_spec() as spec:
        for source, transform in fields:
            spec.add_field(source, transform, f"{source}_{transform.split('[')[0]}")
    return tx.commit_transaction()


def test_partition_split_matches_pyiceberg(tmp_path: Path) -> None:
    catalog = sql_catalog("icefield", f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "wh").as_uri())
    catalog.create_namespace("t")
    rng = random.Random(5)
    n = 3000
    data = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "region": pa.array([rng.choice(["eu", "us", None]) for _ in range(n)], pa.string()),
            "ts": pa.array([dt.datetime(2026, 1, 1) + dt.timedelta(hours=rng.randrange(24 * 20)) if rng.random() > 0.05 else None for _ in range(n)], pa.timestamp("us")),
            "v": pa.array([rng.random() for _ in range(n)], pa.float64()),
        }
    )
    fields = [("region", "identity"), ("ts", "day"), ("id", "bucket[4]")]
    mine = _table(catalog, "t.mine", data.schema, fields)
    theirs = _table(catalog, "t.theirs", data.schema, fields)
    files = write_data_files(mine, data.cast(mine.schema().as_arrow()), sort_by=["id"])
    with mine.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for f in files:
            append.append_data_file(f)
    theirs.append(data.cast(theirs.schema().as_arrow()))
    mine, theirs = catalog.load_table("t.mine"), catalog.load_table("t.theirs")

    def partitions(table):
        return sorted((repr(tuple(t.file.partition)), t.file.record_count) for t in table.scan().plan_files())

    assert partitions(mine) == partitions(theirs), "one file per partition with the same rows per partition"
    assert sum(f.record_count for f in files) == n
    got = mine.scan().to_arrow().sort_by("id")
    assert got.to_pylist() == data.sort_by("id").cast(got.schema).to_pylist()
    # each file's rows are sorted by the sort column
    import pyarrow.parquet as pq

    for task in mine.scan().plan_files():
        ids = pq.read_table(task.file.file_path.removeprefix("file://"), columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
