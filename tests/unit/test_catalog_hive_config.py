"""The Hive catalog's configuration (``catalog: {type: hive, ...}``): what is refused before any metastore
is asked, with the file, the key and the fix, and an unreachable metastore as a transient error."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError, TransientError, load_project
from icefield.catalog import open_catalog


def config_error(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    return str(info.value)


def hive(**keys: Any) -> dict[str, Any]:
    return {"name": "p", "catalog": {"type": "hive", **keys}}


def test_a_hive_catalog_loads_with_its_keys(make_project):
    root = make_project(project=hive(uri="thrift://127.0.0.1:9083", warehouse="s3://lake/w", leases="sqlite:///l.db", name="lake"))
    cfg = load_project(root, env={}).config.catalog
    assert (cfg.type, cfg.name, cfg.uri, cfg.warehouse, cfg.leases) == (
        "hive", "lake", "thrift://127.0.0.1:9083", "s3://lake/w", "sqlite:///l.db"
    )


def test_a_hive_catalog_without_uri_is_refused_with_an_example(make_project):
    msg = config_error(make_project(project=hive()))
    assert "needs catalog.uri" in msg and "thrift://127.0.0.1:9083" in msg


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9083", "thrift://metastore", "127.0.0.1:9083", "thrift://a:1,thrift://b:2"])
def test_a_hive_uri_that_is_no_thrift_uri_with_a_port_is_refused_naming_it(make_project, uri):
    root = make_project(project=hive(uri=uri))
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg and repr(uri) in msg and "not a Thrift URI" in msg


@pytest.mark.parametrize("key", ["token", "credential"])
def test_login_keys_are_refused_for_a_hive_catalog_without_showing_them(make_project, key):
    msg = config_error(make_project(project=hive(uri="thrift://h:9083", **{key: "value-very-secret"})))
    assert f"{key} apply to a REST catalog only" in msg and "very-secret" not in msg


def test_an_unreachable_metastore_is_a_transient_error_naming_it(make_project):
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        uri = f"thrift://127.0.0.1:{s.getsockname()[1]}"
        project = load_project(make_project(project=hive(uri=uri)), env={})
        with pytest.raises(TransientError) as info:
            open_catalog(project)
    assert uri in str(info.value) and "unreachable" in str(info.value) and "catalog.uri" in str(info.value)
