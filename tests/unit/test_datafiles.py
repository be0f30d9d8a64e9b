"""icefield's data-file writer splits rows by partition with one sort; each file must hold exactly one
partition (nulls included) and the table must read back the rows written, as pyiceberg's own writer does."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pyarrow as pa

from icefield.catalog import sql_catalog
from icefield.iceberg.datafiles import write_data_files


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


def _ids_per_file(table) -> list[list[int]]:
    import pyarrow.parquet as pq

    files = sorted(table.scan().plan_files(), key=lambda t: t.file.lower_bounds[1])
    return [pq.read_table(t.file.file_path.removeprefix("file://"), columns=["id"]).column("id").to_pylist() for t in files]


def test_a_batch_smaller_than_the_target_file_is_split_one_file_per_core(tmp_path: Path, monkeypatch) -> None:
    """pyiceberg writes one thread per file: a batch that fits in one file would use one core. It is cut
    into one sorted, non-overlapping file per core, unless the pieces would be smaller than the floor."""
    import icefield.iceberg.datafiles as datafiles

    monkeypatch.setattr(datafiles, "cores", lambda: 2)
    monkeypatch.setattr(datafiles, "PARALLEL_FILE_BYTES", 16 << 10)
    catalog = sql_catalog("icefield", f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "wh").as_uri())
    catalog.create_namespace("t")
    rng = random.Random(7)
    n = 20_000
    ids = list(range(n))
    rng.shuffle(ids)
    data = pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array([f"v{i}" for i in ids])})
    assert 2 * (16 << 10) < data.nbytes < 512 << 20

    flat = catalog.create_table("t.flat", schema=data.schema)
    files = write_data_files(flat, data.cast(flat.schema().as_arrow()), sort_by=["id"])
    with flat.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for f in files:
            append.append_data_file(f)
    per_file = _ids_per_file(catalog.load_table("t.flat"))
    assert [len(x) for x in per_file] == [n // 2, n // 2]
    assert per_file[0] + per_file[1] == list(range(n)), "sorted within and across files: key bounds do not overlap"

    # below the floor: one file
    monkeypatch.setattr(datafiles, "PARALLEL_FILE_BYTES", data.nbytes)
    assert len(write_data_files(flat, data.cast(flat.schema().as_arrow()))) == 1
    # as many partitions as cores: one file each, never cut further
    monkeypatch.setattr(datafiles, "PARALLEL_FILE_BYTES", 16 << 10)
    part = _table(catalog, "t.part", data.schema, [("id", "bucket[2]")])
    assert len(write_data_files(part, data.cast(part.schema().as_arrow()))) == 2
    # one partition in the batch: cut like an unpartitioned batch
    one = _table(catalog, "t.one", data.schema, [("v", "truncate[1]")])
    assert len(write_data_files(one, data.cast(one.schema().as_arrow()))) == 2


def test_a_batch_larger_than_cores_times_the_target_keeps_target_sized_files(monkeypatch) -> None:
    import icefield.iceberg.datafiles as datafiles
    from icefield.iceberg.datafiles import pack

    monkeypatch.setattr(datafiles, "PARALLEL_FILE_BYTES", 16 << 10)
    data = pa.table({"id": pa.array(range(100_000), pa.int64())})  # 800 kB
    bins = list(pack(data, target=200_000, workers=2))
    assert len(bins) == 4 and sum(sum(b.num_rows for b in batches) for batches in bins) == 100_000
    halves = list(pack(data, target=1 << 20, workers=2))
    assert [sum(b.num_rows for b in batches) for batches in halves] == [50_000, 50_000]


def test_only_columns_whose_values_repeat_are_dictionary_encoded_and_statistics_stay_right(tmp_path: Path) -> None:
    """A column of unique values is written plain (Arrow would hash it into a dictionary it then drops);
    repeating ones keep their dictionary, nested leaves too. Rows, bounds and counts are as pyiceberg's
    own writer gives them."""
    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.table import WriteTask

    from icefield.iceberg.datafiles import dictionary_columns

    catalog = sql_catalog("icefield", f"sqlite:///{tmp_path / 'c.db'}", (tmp_path / "wh").as_uri())
    catalog.create_namespace("t")
    n = 50_000
    data = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "status": pa.array([["new", "paid", None][i % 3] for i in range(n)], pa.string()),
            "note": pa.array([f"note {i * 7919 % n}" for i in range(n)], pa.string()),
            "flag": pa.array([i % 2 == 0 for i in range(n)]),
            "tags": pa.array([[f"t{i % 4}"] for i in range(n)], pa.list_(pa.string())),
        }
    )
    assert dictionary_columns(data) == ["status", "tags.list.element"]
    assert dictionary_columns(data.slice(0, 0)) == ["tags.list.element"]

    table = catalog.create_table("t.d", schema=data.schema)
    data = data.cast(table.schema().as_arrow())
    [mine] = write_data_files(table, data)
    encodings = {}
    meta = pq.ParquetFile(mine.file_path.removeprefix("file://")).metadata
    for j in range(meta.num_columns):
        col = meta.row_group(0).column(j)
        encodings[col.path_in_schema] = any("DICTIONARY" in e for e in col.encodings)
    assert encodings == {"id": False, "status": True, "note": False, "flag": False, "tags.list.element": True}
    assert pq.read_table(mine.file_path.removeprefix("file://")).to_pylist() == data.to_pylist()

    from pyiceberg.io.pyarrow import pyarrow_to_schema

    task = WriteTask(write_uuid=__import__("uuid").uuid4(), task_id=0, record_batches=data.to_batches(), schema=pyarrow_to_schema(data.schema, name_mapping=table.schema().name_mapping))
    [theirs] = write_file(io=table.io, table_metadata=table.metadata, tasks=iter([task]))
    for attr in ("record_count", "value_counts", "null_value_counts", "lower_bounds", "upper_bounds"):
        assert getattr(mine, attr) == getattr(theirs, attr), attr
    assert mine.file_size_in_bytes < theirs.file_size_in_bytes


def test_sort_indices_keeps_sorted_runs_and_matches_a_full_stable_sort() -> None:
    """The merge writes stored rows (sorted) then new versions: the order must equal a full stable sort,
    rows already in order must come back as None (nothing to move), and other shapes fall back."""
    import numpy as np
    import pyarrow.compute as pc

    from icefield.iceberg.datafiles import _Chunks, sort_indices

    rng = np.random.default_rng(3)
    stored = np.sort(rng.choice(1_000_000, 50_000, replace=False))
    new = rng.choice(1_000_000, 900)  # repeats a few stored keys: ties keep the stored row first
    keys = np.concatenate([stored, new]).astype(np.int64)
    t = pa.table({"k": keys, "i": np.arange(keys.size)})
    expected = pc.sort_indices(t, [("k", "ascending")]).to_pylist()  # Arrow's sort is stable
    assert sort_indices(t, ["k"]).to_pylist() == expected
    assert sort_indices(t.slice(0, 50_000), ["k"]) is None
    ts = pa.table({"k": pa.array(keys * 1000, pa.timestamp("us"))})
    assert sort_indices(ts, ["k"]).to_pylist() == expected
    # Nulls, two keys, text: Arrow's sort, nulls last.
    mixed = pa.table({"a": [2, None, 1, 2], "b": ["y", "x", "z", "x"]})
    assert sort_indices(mixed, ["a", "b"]).to_pylist() == [2, 3, 0, 1]
    assert sort_indices(pa.table({"s": ["b", "a", "c"]}), ["s"]).to_pylist() == [1, 0, 2]

    # A gather from a table of many chunks touches only the chunks it needs, and gives the same rows.
    chunked = pa.concat_tables([t.slice(i, 7_000) for i in range(0, t.num_rows, 7_000)])
    assert chunked.column("k").num_chunks > 5
    order = pa.array(expected[10_000:20_000] + [0, t.num_rows - 1])
    assert _Chunks(chunked).take(order).to_pylist() == t.take(order).to_pylist()
