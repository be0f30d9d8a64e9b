"""The REST catalog launcher's settings (no server: the `rest` integration tests start one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stack import REST_PORT_DEFAULT, RestCatalog, StackError, get_service


def test_rest_is_a_registered_service_on_its_port_from_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert isinstance(get_service("rest", base_dir=tmp_path), RestCatalog)
    assert RestCatalog(tmp_path).port == REST_PORT_DEFAULT == 18181
    monkeypatch.setenv("ICEFIELD_REST_PORT", "28181")
    assert RestCatalog(tmp_path).port == 28181
    assert RestCatalog(tmp_path, port=38181).url() == "http://127.0.0.1:38181"
    with pytest.raises(StackError, match="out of range"):
        RestCatalog(tmp_path, port=70000)


def test_a_credential_needs_the_token_it_is_exchanged_for(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="give a token too"):
        RestCatalog(tmp_path, credential="id:secret")


def test_the_token_reaches_the_server_by_environment_never_by_its_settings_file(tmp_path: Path) -> None:
    server = RestCatalog(tmp_path, token="tok-very-secret", credential="id:cred-very-secret")
    server.prepare()
    assert "very-secret" not in server.config_file.read_text()
    env = server.environment()
    assert env["ICEFIELD_REST_TOKEN"] == "tok-very-secret" and env["ICEFIELD_REST_CREDENTIAL"] == "id:cred-very-secret"
    assert env["ICEFIELD_REST_WAREHOUSE"] == str(server.warehouse) and server.warehouse.is_dir()
