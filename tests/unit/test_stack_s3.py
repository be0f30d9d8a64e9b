"""The S3 server launcher without its server: port settings, building versitygw with Go (a stand-in `go`
script, never a real build), the root account file, the gateway's command line and environment."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from stack import S3_PORT_DEFAULT, S3Server, ServiceNotInstalled, StackError, get_service
from stack.s3 import VERSITYGW_MODULE, VERSITYGW_VERSION, build_versitygw, versitygw_binary


def _fake_go(folder: Path, version: str, *, builds: bool = True) -> Path:
    """A `go` on PATH answering ``version`` and, for ``install``, writing a versitygw script into $GOBIN and
    recording its arguments and GOBIN in ``go.calls``."""
    folder.mkdir(parents=True, exist_ok=True)
    go = folder / "go"
    build = 'printf "#!/bin/sh\\n" > "$GOBIN/versitygw"; chmod +x "$GOBIN/versitygw"' if builds else "echo 'compile error' >&2; exit 1"
    go.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = env ]; then echo {version}; exit 0; fi\n'
        f'if [ "$1" = version ]; then echo "go version {version} linux/amd64"; exit 0; fi\n'
        f'echo "$* GOBIN=$GOBIN" >> "{folder}/go.calls"\n'
        f"{build}\n"
    )
    go.chmod(0o755)
    return go


def test_s3_is_a_registered_service_on_its_port_from_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ICEFIELD_S3_PORT", raising=False)
    assert isinstance(get_service("s3", base_dir=tmp_path), S3Server)
    assert S3Server(tmp_path).port == S3_PORT_DEFAULT == 17070
    monkeypatch.setenv("ICEFIELD_S3_PORT", "27070")
    assert S3Server(tmp_path).url() == "http://127.0.0.1:27070"
    assert S3Server(tmp_path, port=37070).endpoint == "http://127.0.0.1:37070"
    monkeypatch.setenv("ICEFIELD_S3_PORT", "seventy")
    with pytest.raises(StackError, match="ICEFIELD_S3_PORT='seventy' is not a port number"):
        S3Server(tmp_path)
    with pytest.raises(StackError, match="out of range"):
        S3Server(tmp_path, port=70000)


def test_without_go_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServiceNotInstalled, match=r"`go` is not on PATH: install Go 1\.21 or newer .*apt-get install golang-go"):
        S3Server(tmp_path).install()


def test_a_go_too_old_to_fetch_the_toolchain_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    go = _fake_go(tmp_path / "gobin", "go1.19.8")
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    with pytest.raises(ServiceNotInstalled, match=r"is Go 1\.19, versitygw v1\.8\.0 needs Go 1\.21 or newer"):
        build_versitygw()
    assert not (go.parent / "go.calls").exists()


def test_the_binary_is_built_once_into_the_cache_with_the_pinned_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICEFIELD_CACHE", str(cache))
    go = _fake_go(tmp_path / "gobin", "go1.22.2")
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    assert build_versitygw() == versitygw_binary() == cache / "bin" / "versitygw"
    assert build_versitygw() == cache / "bin" / "versitygw"  # cached: no second build
    calls = (go.parent / "go.calls").read_text().splitlines()
    assert calls == [f"install {VERSITYGW_MODULE}@{VERSITYGW_VERSION} GOBIN={cache / 'bin'}"]


def test_a_failed_build_shows_go_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICEFIELD_CACHE", str(tmp_path / "cache"))
    go = _fake_go(tmp_path / "gobin", "go1.22.2", builds=False)
    monkeypatch.setenv("PATH", f"{go.parent}:/usr/bin:/bin")
    with pytest.raises(StackError, match=r"go install .*versitygw@v1\.8\.0` failed \(exit 1\):\ncompile error"):
        build_versitygw()
    assert not versitygw_binary().exists()


def test_the_root_account_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    server = S3Server(tmp_path)
    root = server.root
    assert stat.S_IMODE(server.credentials_file.stat().st_mode) == 0o600
    assert json.loads(server.credentials_file.read_text()) == {"access_key": root.access_key, "secret_key": root.secret_key}
    assert S3Server(tmp_path).root == root  # another launcher on the same state dir: the same account
    assert S3Server(tmp_path / "other").root.secret_key != root.secret_key
    assert root.secret_key not in repr(root)


def test_the_root_secret_reaches_the_gateway_by_environment_never_its_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VGW_READ_ONLY", "true")  # a developer's setting must not change the gateway behind our back
    monkeypatch.setenv("ROOT_ACCESS_KEY", "someone-else")
    server = S3Server(tmp_path, port=17123)
    server._binary = Path("/opt/versitygw")
    argv = server.command()
    assert argv[:3] == ["/opt/versitygw", "--port", "127.0.0.1:17123"]
    assert argv[-2:] == ["posix", str(server.data_dir)] and str(server.iam_dir) in argv
    env = server.environment()
    assert env["ROOT_ACCESS_KEY_ID"] == server.root.access_key and env["ROOT_SECRET_ACCESS_KEY"] == server.root.secret_key
    assert "VGW_READ_ONLY" not in env and "ROOT_ACCESS_KEY" not in env
    assert not any(server.root.secret_key in a or server.root.access_key in a for a in argv)


def test_accounts_and_buckets_need_valid_names_and_a_running_server(tmp_path: Path) -> None:
    server = S3Server(tmp_path)
    with pytest.raises(StackError, match="role 'superuser' is not one of user, userplus, admin"):
        server.create_account(role="superuser")
    with pytest.raises(StackError, match="access key 'a b' must match"):
        server.create_account("a b")
    with pytest.raises(StackError, match="bucket name 'Lake_1' must be"):
        server.create_bucket("Lake_1", server.root)
    with pytest.raises(StackError, match=r"not running; start it: python -m stack up s3"):
        server.create_account("writer")
    assert not os.path.exists(server.iam_dir)
