"""The ``storage`` section of ``icefield.yaml``: how icefield reaches an S3 warehouse. Its keys become
pyiceberg's ``s3.*`` FileIO properties (over ``catalog.properties``), its secrets come from references and
are never shown, and a section that cannot work is refused when the project loads, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icefield.catalog import storage_properties
from icefield.config import load_project
from icefield.config.secrets import redact
from icefield.errors import ConfigError


def _project(root: Path, storage: dict[str, object], **config: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "t", "warehouse": "s3://lake/wh", "storage": storage, **config}))
    return root


def test_storage_keys_become_the_s3_file_io_properties_with_secrets_resolved_and_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_SECRET", "s3cr3t-value-for-the-lake")
    (tmp_path / "key").write_text("AKIALAKEKEY\n")
    root = _project(
        tmp_path / "p",
        {
            "endpoint": "http://127.0.0.1:7070",
            "region": "eu-west-1",
            "path_style": True,
            "access_key": f"${{file:{tmp_path / 'key'}}}",
            "secret_key": "${env:LAKE_SECRET}",
        },
        catalog={"properties": {"s3.region": "us-east-1", "s3.connect-timeout": "5"}},
    )
    project = load_project(root, env={})
    assert project.warehouse_path() is None and project.warehouse_uri() == "s3://lake/wh"
    props = storage_properties(project)
    assert props == {
        "s3.endpoint": "http://127.0.0.1:7070",
        "s3.region": "eu-west-1",
        "s3.access-key-id": "AKIALAKEKEY",
        "s3.secret-access-key": "s3cr3t-value-for-the-lake",
        "s3.path-style-access": "true",
    }
    assert redact("failed with s3cr3t-value-for-the-lake") == "failed with ***", "the secret is never shown"

    from icefield.catalog import open_catalog

    catalog = open_catalog(project)
    try:
        assert catalog.properties["s3.region"] == "eu-west-1", "the storage section wins over catalog.properties"
        assert catalog.properties["s3.connect-timeout"] == "5", "other catalog properties stay"
    finally:
        catalog.engine.dispose()  # type: ignore[attr-defined]


def test_an_empty_storage_section_adds_nothing(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path / "p", {}), env={})
    assert storage_properties(project) == {}


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"access_key": "AKIA"}, "storage.access_key and storage.secret_key together"),
        ({"secret_key": "${env:X}"}, "storage.access_key and storage.secret_key together"),
        ({"session_token": "${env:T}"}, "session_token goes with"),
        ({"endpoint": "127.0.0.1:7070"}, "not an http"),
        ({"endpoint": "http://host:7070/some/path"}, "not an http"),
        ({"path_style": "sometimes"}, "path_style"),
        ({"bucket": "lake"}, "bucket"),
    ],
)
def test_a_storage_section_that_cannot_work_is_refused_naming_the_key(tmp_path: Path, storage: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_project(_project(tmp_path / "p", storage), env={})


def test_a_missing_secret_names_the_reference_and_the_key(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path / "p", {"access_key": "AKIA", "secret_key": "${env:NOT_SET_ANYWHERE}"}), env={})
    with pytest.raises(ConfigError, match=r"storage.secret_key.*NOT_SET_ANYWHERE"):
        storage_properties(project)
