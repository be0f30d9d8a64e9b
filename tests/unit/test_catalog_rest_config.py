"""The REST catalog's configuration (``catalog: {type: rest, ...}``): what is refused before any server is
asked, with the file, the key, the value and the fix, and what is never shown (a token, a credential)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError, load_project
from icefield.catalog import open_catalog


def config_error(root: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root, env=env or {})
    return str(info.value)


def rest(**keys: Any) -> dict[str, Any]:
    return {"name": "p", "catalog": {"type": "rest", **keys}}


def test_a_rest_catalog_loads_with_its_keys(make_project):
    root = make_project(project=rest(uri="http://127.0.0.1:8181", warehouse="lake", token="${env:T}", name="lake"))
    cfg = load_project(root, env={}).config.catalog
    assert (cfg.type, cfg.uri, cfg.warehouse, cfg.token, cfg.credential) == (
        "rest", "http://127.0.0.1:8181", "lake", "${env:T}", None
    )


def test_a_rest_catalog_without_uri_is_refused_with_an_example(make_project):
    root = make_project(project=rest())
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg and "needs catalog.uri" in msg and "http://127.0.0.1:8181" in msg


@pytest.mark.parametrize("uri", ["ftp://h/x", "sqlite:///x.db", "127.0.0.1:8181", "http://"])
def test_a_rest_uri_that_is_no_http_url_is_refused_naming_it(make_project, uri):
    root = make_project(project=rest(uri=uri))
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg and repr(uri) in msg and "not an http(s) URL" in msg


def test_token_and_credential_together_are_refused_without_showing_them(make_project):
    root = make_project(project=rest(uri="http://h:1", token="tok-very-secret", credential="id:cred-very-secret"))
    msg = config_error(root)
    assert "give catalog.token or catalog.credential, not both" in msg
    assert "very-secret" not in msg


@pytest.mark.parametrize("key", ["token", "credential", "warehouse", "leases"])
def test_rest_only_keys_are_refused_for_a_sql_catalog(make_project, key):
    root = make_project(project={"name": "p", "catalog": {key: "value-very-secret"}})
    msg = config_error(root)
    assert str(root / "icefield.yaml") in msg and f"{key} apply to a REST" in msg and "catalog only" in msg
    assert "catalog.type: rest" in msg
    if key in ("token", "credential"):
        assert "very-secret" not in msg


def test_an_unknown_catalog_type_and_key_are_refused(make_project):
    msg = config_error(make_project(project={"name": "p", "catalog": {"type": "glue", "uri": "thrift://h:9083"}}))
    assert "catalog.type" in msg and "'sql', 'rest' or 'hive'" in msg and "'glue'" in msg
    msg = config_error(make_project(project=rest(uri="http://h:1", tokn="x"), root=None))
    assert "catalog.tokn: unknown key" in msg and "token, credential" in msg


def test_an_unset_token_variable_names_the_key_and_is_refused_before_any_request(make_project):
    root = make_project(project=rest(uri="http://127.0.0.1:9", token="${env:ICEFIELD_TEST_NO_SUCH_TOKEN}"))
    project = load_project(root, env={})
    with pytest.raises(ConfigError) as info:
        open_catalog(project)
    assert "catalog.token" in str(info.value) and "ICEFIELD_TEST_NO_SUCH_TOKEN" in str(info.value)
