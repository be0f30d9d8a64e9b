"""Configuration that could never work is refused when the project loads (issue 13: F17, F22, F6), with
the file, the key, the value and the fix, before any source is read or any table created."""

from __future__ import annotations

from typing import Any

import pytest

from icefield import ConfigError, load_project

FILES_SOURCE = {"type": "files", "path": "landing/*.jsonl"}


def pipeline(target: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": dict(FILES_SOURCE), "target": {"table": "raw.t", **(target or {})}}
    body.update(changes)
    return body


def refused(make_project: Any, body: dict[str, Any]) -> str:
    root = make_project({"p": body})
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    msg = str(info.value)
    assert str(root / "pipelines" / "p.yaml") in msg
    return msg


@pytest.mark.parametrize(
    ("partition_by", "says"),
    [
        # The table was created with spec bucket[99999999999999999999] and every write failed for ever.
        (["bucket(99999999999999999999, id)"], "at most 2147483647"),
        (["bucket(2147483648, id)"], "at most 2147483647"),
        (["truncate(99999999999, s)"], "at most 2147483647"),
        # Refused before, but only after the source was read.
        (["bucket(0, id)"], "must be a positive number"),
        (["day(id); drop"], "is not a partition expression"),
        # Tracebacks from pyiceberg's spec update.
        (["id", "id"], "repeats 'id'"),
        (["bucket(4, id)", "bucket(4, id)"], "repeats"),
        (["day(ts)", "hour(ts)"], "two time partitions of column 'ts'"),
        (["bucket(4, id)", "bucket(8, id)"], "both make a partition field named 'id_bucket'"),
    ],
)
def test_a_partition_spec_that_cannot_work_is_refused_at_load(make_project, partition_by, says):
    """F17: partition transforms are checked when the project loads (a spec is fixed once a table exists)."""
    msg = refused(make_project, pipeline({"partition_by": partition_by}))
    assert "target.partition_by" in msg and says in msg


def test_a_partition_spec_that_works_loads(make_project):
    body = pipeline({"partition_by": ["day(ts)", "bucket(2147483647, id)", "truncate(4, s)", "region"]})
    load_project(make_project({"p": body}), env={})


@pytest.mark.parametrize("pattern", ["(?=a)", "(?<=a)b", r"(a)\1", r"\Z"])
def test_a_regex_that_re2_cannot_run_is_refused_at_load(make_project, pattern):
    """F17: lookarounds and backreferences pass Python's ``re`` but fail in RE2, which checks run on."""
    msg = refused(make_project, pipeline(checks=[{"regex": {"column": "s", "pattern": pattern}}]))
    assert "checks.regex.pattern" in msg and repr(pattern) in msg and "RE2" in msg


@pytest.mark.parametrize("values", [["1", 2], [True, "x"], [1.5, "a", 3], [[1], [2]]])
def test_accepted_values_of_mixed_kinds_are_refused_at_load(make_project, values):
    """F17: ``accepted_values: {values: ["1", 2]}`` failed at run time with an ArrowTypeError."""
    msg = refused(make_project, pipeline(checks=[{"accepted_values": {"column": "id", "values": values}}]))
    assert "checks.accepted_values.values" in msg


def test_accepted_values_of_one_kind_load(make_project):
    body = pipeline(checks=[{"accepted_values": {"column": "id", "values": [1, 2.5, None]}}, {"accepted_values": {"column": "s", "values": ["a", "b"]}}])
    load_project(make_project({"p": body}), env={})


@pytest.mark.parametrize("table", ["a.b.t", "t", "a..t"])
def test_a_table_name_that_is_not_namespace_dot_name_is_refused_at_load(make_project, table):
    """F17: ``a.b.t`` passed, then pyiceberg refused the hierarchical namespace at run time."""
    msg = refused(make_project, pipeline({"table": table}))
    assert "target.table" in msg and "namespace.name" in msg


def test_a_secret_reference_in_table_properties_is_refused(make_project):
    """F22: ``${env:...}`` in ``target.properties`` was stored literally in the table's metadata; table
    properties are plain text for every reader of the table, so a reference there is refused."""
    msg = refused(make_project, pipeline({"properties": {"custom.token": "${env:CANARY_PROP}"}}))
    assert "target.properties" in msg and "custom.token" in msg and "plain text" in msg


@pytest.mark.parametrize("name", ["", "__icefield_file"])
def test_a_file_column_that_cannot_be_a_column_is_refused(make_project, name):
    msg = refused(make_project, pipeline(source={**FILES_SOURCE, "file_column": name}))
    assert "source.file_column" in msg


@pytest.mark.parametrize("root", ["data/*", ""])
def test_roots_must_be_folders(make_project, root):
    msg = refused(make_project, pipeline(source={**FILES_SOURCE, "roots": [root]}))
    assert "source.roots" in msg


# ------------------------------------------------------------------------------------- F6: the warehouse


def test_a_warehouse_reference_is_resolved_relative_to_the_project(make_project, monkeypatch):
    """F6: ``icefield init`` scaffolds ``profiles.prod.warehouse: ${env:ICEFIELD_WAREHOUSE}``, which was
    never resolved: the data went to a folder literally named ``%24%7Benv%3AICEFIELD_WAREHOUSE%7D``."""
    root = make_project(project={"name": "p", "profiles": {"prod": {"warehouse": "${env:ICEFIELD_WAREHOUSE}"}}})
    monkeypatch.setenv("ICEFIELD_WAREHOUSE", "lake/wh")
    project = load_project(root, env={}, profile="prod")
    assert project.warehouse_path() == root.resolve() / "lake" / "wh"
    assert project.warehouse_uri() == (root.resolve() / "lake" / "wh").as_uri()
    monkeypatch.setenv("ICEFIELD_WAREHOUSE", "s3://bucket/wh")
    assert load_project(root, env={}, profile="prod").warehouse_uri() == "s3://bucket/wh"
    assert load_project(root, env={}, profile="prod").warehouse_path() is None


def test_scaffolded_prod_profile_resolves_its_warehouse(tmp_path, monkeypatch):
    from icefield.scaffold import init_project

    init_project(tmp_path / "proj")
    monkeypatch.setenv("ICEFIELD_WAREHOUSE", str(tmp_path / "wh"))
    monkeypatch.setenv("ICEFIELD_CATALOG_URI", "sqlite:///cat.db")
    project = load_project(tmp_path / "proj", env={}, profile="prod")
    assert project.warehouse_path() == (tmp_path / "wh").resolve()


@pytest.mark.parametrize("folder", ["sp ace", "per%20cent", "hash#x", "ünï"])
def test_a_local_warehouse_location_reads_the_same_to_every_reader(make_project, tmp_path, folder):
    """F6: a percent-encoded ``file://`` URI is a literal path to pyiceberg (and Hadoop) but decoded by
    pyarrow and other URI readers: a location is a ``file://`` URI only when nothing in it is escaped."""
    root = make_project(root=tmp_path / folder / "proj")
    location = load_project(root, env={}).warehouse_uri()
    assert location.removeprefix("file://") == (root.resolve() / ".icefield" / "warehouse").as_posix()
