"""An S3 server: versitygw (Versity S3 Gateway, Apache-2.0) with its POSIX backend, built from source with Go.

The gateway serves one local folder as S3: each subfolder of ``data/`` is a bucket, each file below it an
object (metadata and ACLs in extended attributes). Its internal IAM (``--iam-dir``) holds the accounts;
the launcher creates them through the gateway's own admin API (``versitygw admin``, signed with the root
credentials), and a bucket's readers get versitygw's bucket ACL ``READ`` grant. What versitygw v1.8.0
enforces (checked against the running gateway by ``tests/integration/test_s3_server.py``):

* an account of role ``user`` cannot create buckets; the root account creates them, owned by a writer;
* the bucket's owner lists, gets, puts and deletes its objects;
* an account granted ``READ`` on the bucket lists and gets every object in it, and is refused
  (HTTP 403 ``AccessDenied``) PutObject, CreateMultipartUpload and DeleteObject;
* any other account is refused even listing.

The binary is ``<cache>/bin/versitygw`` (see :func:`stack.maven.cache_dir`), built once by
``go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`` (Go 1.21+, which fetches the Go 1.25
toolchain versitygw needs through the module proxy when it is older). Layout under ``state_dir``
(``<base>/s3``)::

    data/               the POSIX backend's root: one subfolder per bucket
    iam/                versitygw's internal IAM (users.json, written by the gateway, mode 0600)
    credentials.json    the root account {"access_key", "secret_key"}: generated once, mode 0600
    s3.log              the gateway's output (never the credentials: they reach it by environment)
    pid, lock

Port: ``$ICEFIELD_S3_PORT`` (17070), 127.0.0.1 only. Ready when ``GET /`` answers (403 without a
signature is an answer).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import ProcessService, ServiceNotInstalled, StackError, file_lock
from .maven import cache_dir

logger = logging.getLogger(__name__)

VERSITYGW_VERSION = "v1.8.0"
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
S3_PORT_ENV = "ICEFIELD_S3_PORT"
S3_PORT_DEFAULT = 17070
S3_REGION = "us-east-1"
GO_MIN = (1, 21)
"""The oldest Go that can build versitygw: 1.21 is the first to fetch the newer toolchain its go.mod asks
for (``go 1.25.0``) by itself (GOTOOLCHAIN=auto, through the Go module proxy)."""
GO_INSTALL_HINT = (
    "install Go 1.21 or newer (Debian 13: `apt-get install golang-go`; Debian 12's golang-go is 1.19, too old: "
    "use bookworm-backports' golang-1.22-go or the tarball from go.dev/dl)"
)
ROLES = ("user", "userplus", "admin")
"""versitygw's account roles: ``user`` uses buckets it is granted, ``userplus`` may also create buckets,
``admin`` may do everything, the admin API included."""

_GO_VERSION = re.compile(r"go(\d+)\.(\d+)")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Account:
    """An account of the gateway: its access key id and secret (``repr`` hides the secret)."""

    access_key: str
    secret_key: str
    role: str = "user"

    def __repr__(self) -> str:
        return f"S3Account(access_key={self.access_key!r}, role={self.role!r}, secret_key='***')"


@dataclass(frozen=True)
class S3Settings:
    """One bucket of a running S3 server with a writer and a read-only reader, as plain strings for clients.

    ``endpoint`` is ``http://127.0.0.1:<port>``, path-style addressing, region ``region`` (us-east-1).
    ``writer_key``/``writer_secret`` own ``bucket``: list, get, put and delete. ``reader_key``/
    ``reader_secret`` list and get, and are refused put and delete (HTTP 403 AccessDenied). ``server`` is
    the launcher (root account, more accounts and buckets). ``repr`` hides the secrets.
    """

    endpoint: str
    region: str
    bucket: str
    writer_key: str
    writer_secret: str = field(repr=False)
    reader_key: str
    reader_secret: str = field(repr=False)
    server: S3Server = field(repr=False)

    def storage(self, *, reader: bool = False) -> dict[str, Any]:
        """icefield's ``storage:`` settings for the writer (or the reader): ``endpoint``, ``region``,
        ``path_style`` (True), ``access_key``, ``secret_key``."""
        key, secret = (self.reader_key, self.reader_secret) if reader else (self.writer_key, self.writer_secret)
        return {"endpoint": self.endpoint, "region": self.region, "path_style": True,
                "access_key": key, "secret_key": secret}


def versitygw_binary() -> Path:
    """Where the gateway binary lives: ``<cache>/bin/versitygw``."""
    return cache_dir() / "bin" / "versitygw"


def go_version(go: str) -> tuple[int, int] | None:
    """Return (major, minor) of the ``go`` command, or None if it cannot tell."""
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _GO_VERSION.match(out.stdout.strip())
    if m is None:  # Go older than 1.16 has no GOVERSION: its `go version` line still names it
        try:
            out = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = _GO_VERSION.search(out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def build_versitygw(version: str = VERSITYGW_VERSION, timeout: float = 1800.0) -> Path:
    """Return the gateway binary, building it with ``go install`` into ``<cache>/bin`` first if it is missing.

    Raises :class:`ServiceNotInstalled` naming how to install Go if ``go`` is missing or older than 1.21,
    :class:`StackError` with Go's output if the build fails. About 1.5 to 2.5 minutes on 2 cores with the
    module downloads cached; concurrent callers wait on a lock and build once.
    """
    binary = versitygw_binary()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise ServiceNotInstalled(f"the S3 server (versitygw {version}) is built with Go, and `go` is not on PATH: {GO_INSTALL_HINT}")
    found = go_version(go)
    if found is None or found < GO_MIN:
        shown = ".".join(map(str, found)) if found else "of an unknown version"
        raise ServiceNotInstalled(f"{go} is Go {shown}, versitygw {version} needs Go 1.21 or newer: {GO_INSTALL_HINT}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(binary.parent / ".versitygw.lock"):
        if binary.is_file():
            return binary  # built by a concurrent caller while we waited
        logger.info("building versitygw %s with %s into %s (a few minutes, once)", version, go, binary.parent)
        t0 = time.monotonic()
        env = dict(os.environ, GOBIN=str(binary.parent), GOFLAGS="-buildvcs=false")
        env.setdefault("GOTOOLCHAIN", "auto")  # fetch the Go versitygw's go.mod asks for when ours is older
        try:
            result = subprocess.run(
                [go, "install", f"{VERSITYGW_MODULE}@{version}"],
                env=env, cwd=binary.parent, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"building versitygw {version} took more than {timeout:.0f}s; rerun or build it by hand: "
                             f"GOBIN={binary.parent} go install {VERSITYGW_MODULE}@{version}") from e
        if result.returncode != 0 or not binary.is_file():
            output = (result.stderr.strip() or result.stdout.strip() or "(no output)")[-3000:]
            raise StackError(f"`go install {VERSITYGW_MODULE}@{version}` failed (exit {result.returncode}):\n{output}")
        logger.info("built versitygw %s in %.0fs", version, time.monotonic() - t0)
    return binary


class S3Server(ProcessService):
    """versitygw serving ``state_dir/data`` as S3 on 127.0.0.1:``port``, with its internal IAM.

    ``port`` comes from the argument, else ``$ICEFIELD_S3_PORT``, else 17070. The root account
    (:attr:`root`) is generated at the first start and kept in ``credentials.json`` (mode 0600); use it to
    administer, and :meth:`create_account` / :meth:`create_bucket` for the accounts services use. The
    endpoint (:meth:`url`) takes path-style addressing, region us-east-1.
    """

    name = "s3"
    region = S3_REGION
    port_env = S3_PORT_ENV
    port_default = S3_PORT_DEFAULT
    executable = "versitygw"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        version: str = VERSITYGW_VERSION,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, port=port, fast=fast)
        self.version = version

    # ------------------------------------------------------------------ locations

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (same as :meth:`url`)."""
        return self.url()

    @property
    def iam_dir(self) -> Path:
        """versitygw's internal IAM folder (``--iam-dir``)."""
        return self.state_dir / "iam"

    @property
    def credentials_file(self) -> Path:
        """The root account, ``{"access_key": ..., "secret_key": ...}``, mode 0600."""
        return self.state_dir / "credentials.json"

    # ------------------------------------------------------------------ credentials

    @property
    def root(self) -> S3Account:
        """The root account, generated (and written 0600) on first use, then read back from the state dir.

        Raises :class:`StackError` if the credentials file is unreadable or malformed.
        """
        path = self.credentials_file
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fresh = {"access_key": "root-" + secrets.token_hex(8), "secret_key": secrets.token_hex(24)}
            # O_EXCL: two launchers racing on a new state dir keep the first file, never a mix.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    json.dump(fresh, handle)
                    handle.write("\n")
        try:
            data = json.loads(path.read_text())
            return S3Account(str(data["access_key"]), str(data["secret_key"]), "admin")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StackError(f"cannot read the S3 root credentials from {path}: {e}; delete it while the "
                             f"server is stopped (its IAM accounts and buckets stay) to generate new ones") from e

    @property
    def root_access_key(self) -> str:
        return self.root.access_key

    @property
    def root_secret_key(self) -> str:
        return self.root.secret_key

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Find or build the versitygw binary; raise :class:`ServiceNotInstalled` naming how to get Go."""
        self._binary = build_versitygw(self.version)

    def arguments(self) -> list[str]:
        """The gateway's arguments: no secret in them (``ps`` shows argv), the root account goes by environment."""
        return ["--port", f"{self.host}:{self.port}", "--iam-dir", str(self.iam_dir),
                "--region", self.region, "--quiet", "posix", str(self.data_dir)]

    def environment(self) -> dict[str, str]:
        """Ours minus every variable versitygw reads (``VGW_*``, root and admin keys), plus the root account."""
        drop = ("ROOT_ACCESS_KEY", "ROOT_SECRET_KEY", "ROOT_ACCESS_KEY_ID", "ROOT_SECRET_ACCESS_KEY",
                "ADMIN_ACCESS_KEY", "ADMIN_SECRET_KEY", "ADMIN_ACCESS_KEY_ID", "ADMIN_SECRET_ACCESS_KEY",
                "ADMIN_ENDPOINT_URL", "ADMIN_REGION", "LOGFILE", "WEBHOOK")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("VGW_")}
        root = self.root
        env["ROOT_ACCESS_KEY_ID"] = root.access_key
        env["ROOT_SECRET_ACCESS_KEY"] = root.secret_key
        return env

    def prepare(self) -> None:
        """Make the IAM folder, private: versitygw keeps the accounts' secrets in it."""
        self.iam_dir.mkdir(mode=0o700, exist_ok=True)

    def ready(self, status: int, body: bytes) -> bool:
        """Ready once ``GET /`` gets any HTTP answer (403 without a signature counts)."""
        return True

    # ------------------------------------------------------------------ accounts and buckets

    def create_account(self, access_key: str | None = None, *, role: str = "user") -> S3Account:
        """Create an account in the gateway's IAM and return it (a fresh secret; a fresh key if none is given).

        ``role`` is one of :data:`ROLES`. An account of role ``user`` reaches only the buckets it owns or is
        granted (see :meth:`create_bucket`). Raises :class:`StackError` for a bad key or role, an existing
        account, or a server that is not running.
        """
        if role not in ROLES:
            raise StackError(f"S3 account role {role!r} is not one of {', '.join(ROLES)}")
        key = access_key or "acct-" + secrets.token_hex(6)
        if not _KEY.fullmatch(key):
            raise StackError(f"S3 access key {key!r} must match {_KEY.pattern}")
        account = S3Account(key, secrets.token_hex(20), role)
        self._admin(["create-user", "--access", key, "--secret", account.secret_key, "--role", role],
                    hide=(account.secret_key,))
        return account

    def create_bucket(self, bucket: str, owner: S3Account, readers: Sequence[S3Account] = ()) -> None:
        """Create ``bucket`` owned by ``owner`` (who may list, get, put and delete in it) and grant ``readers``
        bucket ``READ`` (list and get, refused put and delete: HTTP 403 AccessDenied).

        The grants are fixed here: versitygw's admin CLI sets ACLs only at creation. Raises
        :class:`StackError` for a bad name, an existing bucket, an unknown account or a stopped server.
        """
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise StackError(f"S3 bucket name {bucket!r} must be 3-63 of a-z 0-9 . - (starting and ending "
                             f"with a letter or digit)")
        args = ["create-bucket", "--bucket", bucket, "--owner", owner.access_key,
                # ACL grants are refused under the default BucketOwnerEnforced ownership.
                "--object-ownership", "BucketOwnerPreferred"]
        if readers:
            args += ["--grant-read", ",".join(r.access_key for r in readers)]
        self._admin(args)

    def provision(self, bucket: str, *, writer_key: str | None = None, reader_key: str | None = None) -> S3Settings:
        """Create a writer, a read-only reader and ``bucket`` owned by the writer; return the settings clients use.

        Raises :class:`StackError` like :meth:`create_account` and :meth:`create_bucket` (an existing
        account or bucket included).
        """
        writer = self.create_account(writer_key)
        reader = self.create_account(reader_key)
        self.create_bucket(bucket, writer, readers=[reader])
        return S3Settings(
            endpoint=self.url(), region=self.region, bucket=bucket,
            writer_key=writer.access_key, writer_secret=writer.secret_key,
            reader_key=reader.access_key, reader_secret=reader.secret_key, server=self,
        )

    def list_accounts(self) -> str:
        """Return ``versitygw admin list-users`` output (keys and roles, never secrets)."""
        return self._admin(["list-users"])

    def _admin(self, args: list[str], hide: Sequence[str] = ()) -> str:
        """Run ``versitygw admin <args>`` as root against this gateway; return its output.

        The root account goes by environment; ``hide`` lists values (secrets on the command line) masked in
        any error. Raises :class:`StackError` if the gateway does not run or refuses.
        """
        if self._running_pid() is None:
            raise StackError(f"the S3 server from {self.state_dir} is not running; start it: python -m stack up s3")
        if self._binary is None:
            self.install()
        assert self._binary is not None
        root = self.root
        env: Mapping[str, str] = dict(
            self.environment(), ADMIN_ACCESS_KEY_ID=root.access_key, ADMIN_SECRET_ACCESS_KEY=root.secret_key,
            ADMIN_ENDPOINT_URL=self.url(), ADMIN_REGION=self.region,
        )
        try:
            result = subprocess.run([str(self._binary), "admin", *args], env=dict(env), stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StackError(f"versitygw admin {args[0]} did not run: {e}") from e
        if result.returncode != 0:
            message = result.stderr.strip() or result.stdout.strip() or "(no output)"
            shown = " ".join(args)
            for value in (*hide, root.secret_key):
                message, shown = message.replace(value, "***"), shown.replace(value, "***")
            raise StackError(f"versitygw admin {shown} failed (exit {result.returncode}): {message}")
        return result.stdout


__all__ = [
    "GO_INSTALL_HINT",
    "ROLES",
    "S3Account",
    "S3Server",
    "S3Settings",
    "S3_PORT_DEFAULT",
    "S3_PORT_ENV",
    "S3_REGION",
    "VERSITYGW_VERSION",
    "build_versitygw",
    "go_version",
    "versitygw_binary",
]
