"""The Hive Metastore launcher's settings (no server: the `hive` integration tests start one)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from stack import HIVE_PORT_DEFAULT, HiveMetastore, StackError, get_service
from stack.hive_metastore import get_all_databases


def test_hive_is_a_registered_service_on_its_port_from_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert isinstance(get_service("hive", base_dir=tmp_path), HiveMetastore)
    assert HiveMetastore(tmp_path).port == HIVE_PORT_DEFAULT == 19083
    monkeypatch.setenv("ICEFIELD_HIVE_PORT", "29083")
    assert HiveMetastore(tmp_path).port == 29083
    assert HiveMetastore(tmp_path, port=39083).url() == "thrift://127.0.0.1:39083"
    with pytest.raises(StackError, match="out of range"):
        HiveMetastore(tmp_path, port=70000)


def test_the_state_lives_under_the_state_dir(tmp_path: Path) -> None:
    server = HiveMetastore(tmp_path)
    assert server.state_dir == tmp_path / "hive"
    assert server.database == (tmp_path / "hive" / "metastore_db").absolute()
    assert server.warehouse == (tmp_path / "hive" / "warehouse").absolute()


def test_the_probe_says_no_when_nothing_answers(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        assert get_all_databases("127.0.0.1", s.getsockname()[1], timeout=1) is None
