"""The VictoriaLogs launcher without its server: port settings, building it with Go (a stand-in `go` script,
never a real build), its command line, and stopping or querying a server that does not run."""

from __future__ import annotations

from pathlib import Path

import pytest
from stack import VICTORIALOGS_PORT_DEFAULT, ServiceNotInstalled, StackError, VictoriaLogs, get_service
from stack.victorialogs import (
    VICTORIALOGS_MODULE,
    VICTORIALOGS_VERSION,
    build_victorialogs,
    victorialogs_binary,
)


def _fake_go(folder: Path, version: str, *, builds: bool = True) -> Path:
    """A `go` on PATH answering ``version`` and, for ``install``, writing a victoria-logs script into $GOBIN
    and recording its arguments, GOBIN and CGO_ENABLED in ``go.calls``."""
    folder.mkdir(parents=True, exist_ok=True)
    go = folder / "go"
    build = 'printf "#!/bin/sh\\n" > "$GOBIN/victoria-logs"; chmod +x "$GOBIN/victoria-logs"' if builds else "echo 'compile error' >&2; exit 1"
    go.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = env ]; then echo {version}; exit 0; fi\n'
        f'if [ "$1" = version ]; then echo "go version {version} linux/amd64"; exit 0; fi\n'
        f'echo "$* GOBIN=$GOBIN CGO_ENABLED=$CGO_ENABLED" >> "{folder}/go.calls"\n'
        f"{build}\n"
    )
    go.chmod(0o755)
    return go


def test_victorialogs_is_a_registered_service_on_its_port_from_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ICEFIELD_VICTORIALOGS_PORT", raising=False)
    assert isinstance(get_service("victorialogs", base_dir=tmp_path), VictoriaLogs)
    assert VictoriaLogs(tmp_path).port == VICTORIALOGS_PORT_DEFAULT == 19428
    monkeypatch.setenv("ICEFIELD_VICTORIALOGS_PORT", "29428")
    assert VictoriaLogs(tmp_path).url() == "http://127.0.0.1:29428"
    assert VictoriaLogs(tmp_path, port=39428).url() == "http://127.0.0.1:39428"
    monkeypatch.setenv("ICEFIELD_VICTORIALOGS_PORT", "many")
    with pytest.raises(StackError, match="ICEFIELD_VICTORIALOGS_PORT='many' is not a port number"):
        VictoriaLogs(tmp_path)
    with pytest.raises(StackError, match="out of range"):
        VictoriaLogs(tmp_path, port=0)


def test_without_go_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServiceNotInstalled, match=r"`go` is not on PATH: install Go 1\.21 or newer"):
        VictoriaLogs(tmp_path).install()


def test_the_binary_is_built_once_in_pure_go_into_the_cache_with_the_pinned_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICEFIELD_CACHE", str(cache))
    go = _fake_go(tmp_path / "gobin", "go1.22.2")
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    assert build_victorialogs() == victorialogs_binary() == cache / "bin" / "victoria-logs"
    assert build_victorialogs() == cache / "bin" / "victoria-logs"  # cached: no second build
    calls = (go.parent / "go.calls").read_text().splitlines()
    assert calls == [f"install {VICTORIALOGS_MODULE}@{VICTORIALOGS_VERSION} GOBIN={cache / 'bin'} CGO_ENABLED=0"]


def test_a_failed_build_shows_go_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    go = _fake_go(tmp_path / "gobin", "go1.22.2", builds=False)
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    with pytest.raises(StackError, match=r"go install .*victoria-logs@v1\.52\.2` failed \(exit 1\):\ncompile error"):
        build_victorialogs()
    assert not victorialogs_binary().exists()


def test_the_server_listens_on_localhost_only_and_keeps_its_data_in_the_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    go = _fake_go(tmp_path / "gobin", "go1.22.2")
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    server = VictoriaLogs(tmp_path / "stack", port=39428)
    server.install()
    argv = server.command()
    assert "-httpListenAddr=127.0.0.1:39428" in argv
    assert f"-storageDataPath={tmp_path / 'stack' / 'victorialogs' / 'data'}" in argv


def test_a_server_that_does_not_run_is_not_stopped_and_cannot_be_queried(tmp_path: Path) -> None:
    server = VictoriaLogs(tmp_path, port=1)
    assert server.stop() is False
    assert not server.status().running
    with pytest.raises(StackError, match=r"did not answer the query 'run_id:\"x\"'"):
        server.query('run_id:"x"', timeout=2)
