"""The writer refuses, before it creates a table, a table it could never write (issue 13, F17), and the
shared table-name helpers refuse names that are not ``namespace.table``; working columns never meet the
data's columns (F14)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from icefield.catalog import sql_catalog
from icefield.config.models import TargetConfig
from icefield.engines.local import LocalEngine
from icefield.errors import ConfigError, SchemaError
from icefield.iceberg.tables import load_existing, table_identifier
from icefield.quality import check_rows
from icefield.write import TableWriter

DATA = pa.table(
    {
        "id": pa.array([1, 2], pa.int64()),
        "s": ["a", "b"],
        "ts": pa.array([0, 1], pa.timestamp("us")),
        "ts_day": ["x", "y"],
        "f": pa.array([1.5, 2.5], pa.float64()),
    }
)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Any]:
    cat = sql_catalog("test", f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "warehouse").as_uri())
    yield cat
    cat.engine.dispose()


def writer(catalog: Any, **target: Any) -> TableWriter:
    return TableWriter(catalog, TargetConfig(table="shop.orders", **target), "p", LocalEngine())


@pytest.mark.parametrize(
    ("partition_by", "says"),
    [
        (["day(id)"], "day() cannot partition column 'id' of type long; for this column use one of: identity, bucket, truncate"),
        (["hour(s)"], "hour() cannot partition column 's' of type string"),
        (["bucket(4, f)"], "bucket() cannot partition column 'f' of type double; for this column use one of: identity"),
        (["truncate(4, ts)"], "truncate() cannot partition column 'ts' of type timestamp"),
        (["day(ts)"], "the partition field 'ts_day' of day(ts) has the name of a column"),
    ],
)
def test_a_transform_that_does_not_fit_its_column_creates_no_table(catalog, partition_by, says):
    """F17: ``day(id)`` on a long, ``hour(s)`` on a string: ValueError tracebacks from pyiceberg. Types are
    only known once the schema is: the writer checks before it creates the table."""
    w = writer(catalog, partition_by=partition_by)
    with pytest.raises(ConfigError) as info:
        w.commit(DATA, "b1", {"n": 1}, "run")
    assert says in str(info.value) and "target.partition_by" in str(info.value)
    assert w.load() is None


def test_merge_keys_the_data_lacks_create_no_table(catalog):
    """F17: merge ``keys: [nope]`` left an empty table created, then ``ArrowInvalid: No match for
    FieldRef.Name(nope)``."""
    w = writer(catalog, mode="merge", keys=["nope"])
    with pytest.raises(ConfigError, match=r"target.keys names 'nope', which the data does not have \(columns: id, s, ts, ts_day, f\)"):
        w.commit(DATA, "b1", {"n": 1}, "run")
    assert w.load() is None


def test_fitting_transforms_create_the_table(catalog):
    w = writer(catalog, partition_by=["day(ts)", "bucket(4, id)", "truncate(2, s)", "f"])
    w.commit(DATA.drop(["ts_day"]), "b1", {"n": 1}, "run")
    assert [f.name for f in w.load().spec().fields] == ["ts_day", "id_bucket", "s_truncate", "f"]


@pytest.mark.parametrize("name", ["notqualified", "a.b.c", ".t", "a."])
def test_a_name_that_is_not_namespace_dot_table_is_a_config_error(catalog, name):
    """F17: ``icefield show notqualified`` died with ``ValueError: Empty namespace identifier``."""
    with pytest.raises(ConfigError, match=r"namespace\.table"):
        table_identifier(name)
    with pytest.raises(ConfigError):
        load_existing(catalog, name)


def test_a_table_in_a_missing_namespace_is_a_config_error(catalog):
    with pytest.raises(ConfigError, match=r"no table 'nowhere.t'"):
        load_existing(catalog, "nowhere.t")


def test_a_batch_column_in_the_reserved_namespace_is_refused():
    """Working columns are named ``__icefield_*``; a source column of that name (a SQL query's, say) is
    refused with a clear message instead of meeting one of them."""
    with pytest.raises(SchemaError, match=r"column '__icefield_del' of the batch starts with '__icefield_'.*rename it"):
        check_rows(pa.table({"id": [1], "__icefield_del": [True]}), [])


def test_a_merge_keyed_and_ordered_by_columns_named_like_working_columns(catalog):
    """F14: ``__del``, ``__pos``, ``__row``, ``__file`` were icefield's working column names; they are the
    data's own now (keys and order columns included)."""
    w = TableWriter(
        catalog,
        TargetConfig(table="shop.v", mode="merge", keys=["__row", "__file"], order_by="__pos", keep_newest=True, delete_column="__del"),
        "p",
        LocalEngine(),
    )
    first = pa.table({"__row": [1, 2, 3], "__file": ["a", "a", "b"], "__pos": [1, 1, 1], "__del": [False, False, False], "__new___pos": [0, 0, 0]})
    w.commit(first, "b1", None, "run")
    second = pa.table({"__row": [1, 2, 3], "__file": ["a", "a", "b"], "__pos": [2, 0, 2], "__del": [False, False, True], "__new___pos": [9, 9, 9]})
    w.commit(second, "b2", None, "run")
    rows = sorted((r["__row"], r["__pos"], r["__new___pos"]) for r in w.load().scan().to_arrow().to_pylist())
    assert rows == [(1, 2, 9), (2, 1, 0)]
