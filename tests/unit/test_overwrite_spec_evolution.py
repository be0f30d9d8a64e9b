"""``mode: overwrite`` keeps replacing the partitions a batch touches after another engine evolved the
table's partition spec (interop finding D5).

Files written under the older spec are matched on the partition fields both specs share; when the new
spec cuts finer than the old one, an old file's rows in partitions the batch does not touch are kept
(rewritten), the others replaced.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.write import TableWriter

DAYS = [dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)]


def _writer(root: Path) -> TableWriter:
    catalog = sql_catalog("icefield", f"sqlite:///{root / 'c.db'}", (root / "wh").resolve().as_uri())
    target = TargetConfig(table="t.daily", mode="overwrite", partition_by=["day"])
    return TableWriter(catalog, target, "daily", LocalEngine())


def _rows(ids: list[int], day: dt.date, tag: str) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "day": pa.array([day] * len(ids), pa.date32()), "src": [tag] * len(ids)})


def _by_day(w: TableWriter) -> dict[tuple[dt.date, str], int]:
    t = w.load()
    assert t is not None
    data = t.scan().to_arrow()
    return dict(Counter(zip(data.column("day").to_pylist(), data.column("src").to_pylist(), strict=True)))


def _add_bucket(w: TableWriter, n: int = 4) -> None:
    """What Spark's ``ALTER TABLE ... ADD PARTITION FIELD bucket(4, id)`` does to the spec."""
    from pyiceberg.transforms import BucketTransform

    t = w.load()
    assert t is not None
    with t.update_spec() as spec:
        spec.add_field("id", BucketTransform(n), "id_bucket")


def _bucket(value: int, n: int = 4) -> int:
    from pyiceberg.transforms import BucketTransform
    from pyiceberg.types import LongType

    out = BucketTransform(n).transform(LongType())(value)
    assert out is not None
    return int(out)


@pytest.fixture
def loaded(tmp_path: Path) -> TableWriter:
    """Three days of 100 rows each (``d1``), written under the spec ``day``."""
    w = _writer(tmp_path)
    first = pa.concat_tables([_rows(list(range(i * 100 + 1, i * 100 + 101)), d, "d1") for i, d in enumerate(DAYS)])
    w.commit(first, "d1", None, "r")
    return w


def test_a_reloaded_day_replaces_the_rows_written_before_the_spec_gained_a_field(loaded: TableWriter) -> None:
    """D5: after ``bucket(4, id)`` is added, a reload of one day (50 rows over every bucket) leaves that day
    with its 50 new rows, not 150; the other days keep theirs."""
    _add_bucket(loaded)
    ids = list(range(1001, 1051))
    assert {_bucket(i) for i in ids} == {0, 1, 2, 3}
    loaded.commit(_rows(ids, DAYS[1], "d2"), "d2", None, "r")

    assert _by_day(loaded) == {(DAYS[0], "d1"): 100, (DAYS[1], "d2"): 50, (DAYS[2], "d1"): 100}
    t = loaded.load()
    assert t is not None
    current = t.spec().spec_id
    specs = Counter(task.file.spec_id == current for task in t.scan().plan_files())
    assert specs == {False: 2, True: 4}, "the untouched days' old files stay as they were; the reload is in the new spec"

    # Reloading the same day again (now all in the new spec) replaces it again.
    loaded.commit(_rows(ids[:10], DAYS[1], "d3"), "d3", None, "r")
    assert _by_day(loaded)[(DAYS[1], "d3")] == 10 and (DAYS[1], "d2") not in _by_day(loaded)


def test_an_old_file_partly_in_the_touched_partitions_keeps_its_other_rows(loaded: TableWriter) -> None:
    """When the batch touches only some of the new partitions an old file's rows fall in, the rows of the
    others stay (rewritten into the new spec); the touched ones are replaced."""
    _add_bucket(loaded)
    old_day3 = list(range(201, 301))
    new = [i for i in range(2001, 2100) if _bucket(i) == 0][:5]
    loaded.commit(_rows(new, DAYS[2], "d2"), "d2", None, "r")

    t = loaded.load()
    assert t is not None
    data = t.scan().to_arrow().to_pylist()
    day3 = sorted((r["id"], r["src"]) for r in data if r["day"] == DAYS[2])
    expected = sorted([(i, "d1") for i in old_day3 if _bucket(i) != 0] + [(i, "d2") for i in new])
    assert day3 == expected
    assert 0 < sum(1 for i in old_day3 if _bucket(i) == 0) < 100, "the old file spans touched and untouched buckets"
    assert Counter(r["day"] for r in data)[DAYS[0]] == 100 and Counter(r["day"] for r in data)[DAYS[1]] == 100


def test_a_dropped_partition_field_still_matches_on_the_fields_left(tmp_path: Path) -> None:
    """An old spec finer than the new one (a field removed): old files whose shared values match the batch's
    partition are replaced whole."""
    w = _writer(tmp_path)
    w.commit(_rows([0], DAYS[1], "d0"), "a", None, "r")  # creates the table, spec (day)
    _add_bucket(w)
    w.commit(_rows(list(range(1, 21)), DAYS[0], "d1"), "b", None, "r")  # spec (day, bucket): several files
    t = w.load()
    assert t is not None
    assert len(list(t.scan().plan_files())) > 2
    with t.update_spec() as spec:
        spec.remove_field("id_bucket")
    w.commit(_rows([7], DAYS[0], "d2"), "c", None, "r")
    assert _by_day(w) == {(DAYS[0], "d2"): 1, (DAYS[1], "d0"): 1}
