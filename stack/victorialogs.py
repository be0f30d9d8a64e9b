"""A central log store: VictoriaLogs (Apache-2.0), built from source with Go, the store icefield ships its JSON
log lines to (``logs.ship`` in ``icefield.yaml``, ``docs/logs.md``).

The binary is ``<cache>/bin/victoria-logs`` (see :func:`stack.maven.cache_dir`), built once on first use by
``go install github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v1.52.2`` (pure Go: ``CGO_ENABLED=0``;
Go 1.21+, which fetches a newer toolchain through the module proxy if the module's go.mod asks for one).
Layout under ``state_dir``::

    data/               the store (``-storageDataPath``)
    victorialogs.log    the server's output
    pid, lock

Port: ``$ICEFIELD_VICTORIALOGS_PORT`` (19428), 127.0.0.1 only. Ready when ``GET /health`` answers ``OK``.
Logs go in at ``/insert/jsonline``; :meth:`VictoriaLogs.query` reads them back through the LogsQL query API
(``/select/logsql/query``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .base import (
    Service,
    ServiceNotInstalled,
    ServiceStartError,
    ServiceStatus,
    StackError,
    file_lock,
    kill_pid,
    port_open,
    recorded_pid,
    tail,
)
from .jvm import read_port_env, spawn_detached
from .maven import cache_dir
from .s3 import GO_INSTALL_HINT, GO_MIN, go_version

logger = logging.getLogger(__name__)

VICTORIALOGS_VERSION = "v1.52.2"
VICTORIALOGS_MODULE = "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs"
VICTORIALOGS_PORT_ENV = "ICEFIELD_VICTORIALOGS_PORT"
VICTORIALOGS_PORT_DEFAULT = 19428
BINARY = "victoria-logs"


def victorialogs_binary() -> Path:
    """Where the server binary lives: ``<cache>/bin/victoria-logs``."""
    return cache_dir() / "bin" / BINARY


def build_victorialogs(version: str = VICTORIALOGS_VERSION, timeout: float = 1800.0) -> Path:
    """Return the VictoriaLogs binary, building it with ``go install`` into ``<cache>/bin`` first if it is
    missing (a few minutes on 2 cores, once; concurrent callers wait on a lock and build once).

    Raises :class:`ServiceNotInstalled` naming how to install Go if ``go`` is missing or older than 1.21,
    :class:`StackError` with Go's output if the build fails.
    """
    binary = victorialogs_binary()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise ServiceNotInstalled(f"VictoriaLogs {version} is built with Go, and `go` is not on PATH: {GO_INSTALL_HINT}")
    found = go_version(go)
    if found is None or found < GO_MIN:
        shown = ".".join(map(str, found)) if found else "of an unknown version"
        raise ServiceNotInstalled(f"{go} is Go {shown}, VictoriaLogs {version} needs Go 1.21 or newer: {GO_INSTALL_HINT}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(binary.parent / ".victoria-logs.lock"):
        if binary.is_file():
            return binary  # built by a concurrent caller while we waited
        logger.info("building VictoriaLogs %s with %s into %s (a few minutes, once)", version, go, binary.parent)
        t0 = time.monotonic()
        # Pure Go (VictoriaMetrics' zstd falls back to a Go implementation): no C compiler needed.
        env = dict(os.environ, GOBIN=str(binary.parent), GOFLAGS="-buildvcs=false", CGO_ENABLED="0")
        env.setdefault("GOTOOLCHAIN", "auto")  # fetch the Go the module's go.mod asks for when ours is older
        try:
            result = subprocess.run(
                [go, "install", f"{VICTORIALOGS_MODULE}@{version}"],
                env=env, cwd=binary.parent, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"building VictoriaLogs {version} took more than {timeout:.0f}s; rerun or build it by hand: "
                             f"CGO_ENABLED=0 GOBIN={binary.parent} go install {VICTORIALOGS_MODULE}@{version}") from e
        if result.returncode != 0 or not binary.is_file():
            output = (result.stderr.strip() or result.stdout.strip() or "(no output)")[-3000:]
            raise StackError(f"`go install {VICTORIALOGS_MODULE}@{version}` failed (exit {result.returncode}):\n{output}")
        logger.info("built VictoriaLogs %s in %.0fs", version, time.monotonic() - t0)
    return binary


class VictoriaLogs(Service):
    """VictoriaLogs storing ``state_dir/data`` on 127.0.0.1:``port`` (see the module docs).

    ``port`` comes from the argument, else ``$ICEFIELD_VICTORIALOGS_PORT``, else 19428; ``retention`` is
    VictoriaLogs' ``-retentionPeriod`` (``7d``: lines older are deleted, and refused at ingestion).
    """

    name = "victorialogs"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        version: str = VICTORIALOGS_VERSION,
        retention: str = "7d",
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(VICTORIALOGS_PORT_ENV, VICTORIALOGS_PORT_DEFAULT)
        if not 1 <= self._port <= 65535:
            raise StackError(f"VictoriaLogs port {self._port} is out of range 1-65535")
        self.version = version
        self.retention = retention
        self._binary: Path | None = None

    # ------------------------------------------------------------------ locations

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """The server, ``http://127.0.0.1:<port>``: icefield's ``logs.ship.url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "victorialogs.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pid"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Find or build the binary; raise :class:`ServiceNotInstalled` naming how to get Go."""
        self._binary = build_victorialogs(self.version)

    def command(self) -> list[str]:
        assert self._binary is not None, "install() first"
        return [
            str(self._binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=WARN",
        ]

    def start(self) -> bool:
        """Launch the server unless it already runs from this state dir; return True if this call launched it.

        Raises :class:`ServiceStartError` if the port is taken by another process.
        """
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is not None:
                logger.info("victorialogs already running (pid %d)", pid)
                return False
            if port_open(self.host, self.port):
                raise ServiceStartError(
                    f"port {self.port} on {self.host} is already in use by another process; "
                    f"choose another with {VICTORIALOGS_PORT_ENV}=<port> or VictoriaLogs(port=...)"
                )
            self.data_dir.mkdir(exist_ok=True)
            logger.info("starting victorialogs on %s:%d (log %s)", self.host, self.port, self.log_file)
            with open(self.log_file, "a") as log:
                log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting victorialogs\n")
            pid = spawn_detached(self.command(), self.log_file, cwd=self.state_dir)
            self.pid_file.write_text(f"{pid}\n")
            return True

    def probe(self) -> bool:
        """True once ``GET /health`` answers ``OK``."""
        try:
            with urllib.request.urlopen(f"{self.url()}/health", timeout=2) as resp:
                return bool(resp.status == 200 and resp.read().strip() == b"OK")
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll :meth:`probe`; raise :class:`ServiceStartError` with the log tail if the server exits or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self._running_pid()
            if pid is None:
                raise ServiceStartError(
                    f"victorialogs is not running (it exited or was never started); log {self.log_file}:\n{tail(self.log_file)}"
                )
            if self.probe():
                logger.info("victorialogs ready on %s:%d (pid %d)", self.host, self.port, pid)
                return
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"victorialogs (pid {pid}) not ready on {self.host}:{self.port} after {timeout:.0f}s; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server by pid (SIGTERM, SIGKILL if it hangs); True if it was running, raise if it survives."""
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            logger.info("stopping victorialogs (pid %d)", pid)
            if not kill_pid(pid, timeout, signals=(signal.SIGTERM, signal.SIGKILL)):
                raise StackError(f"victorialogs pid {pid} survived SIGKILL; see {self.log_file}")
            self.pid_file.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
        """Report running/pid from the pid file (a live ``victoria-logs`` process); changes nothing."""
        return ServiceStatus(
            name=self.name,
            running=(pid := self._running_pid()) is not None,
            host=self.host,
            port=self.port,
            pid=pid,
            url=self.url(),
            state_dir=self.state_dir,
            log_file=self.log_file,
        )

    def _running_pid(self) -> int | None:
        return recorded_pid(self.pid_file, BINARY)

    # ------------------------------------------------------------------ reading back

    def query(self, logsql: str, *, limit: int | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The log lines matching the LogsQL ``logsql`` (e.g. ``run_id:"r-1"``), as VictoriaLogs returns them
        from ``/select/logsql/query``: one dict per line with ``_msg``, ``_time``, ``_stream`` and every field.
        Raises :class:`StackError` with the server's answer if the query is refused."""
        params = {"query": logsql}
        if limit is not None:
            params["limit"] = str(limit)
        req = urllib.request.Request(
            f"{self.url()}/select/logsql/query", data=urllib.parse.urlencode(params).encode(), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            raise StackError(f"VictoriaLogs refused the query {logsql!r}: HTTP {e.code}: {e.read(500).decode('utf-8', 'replace')}") from e
        except OSError as e:
            raise StackError(f"VictoriaLogs at {self.url()} did not answer the query {logsql!r}: {e}") from e
        return [json.loads(line) for line in body.splitlines() if line.strip()]


__all__ = [
    "VICTORIALOGS_MODULE",
    "VICTORIALOGS_PORT_DEFAULT",
    "VICTORIALOGS_PORT_ENV",
    "VICTORIALOGS_VERSION",
    "VictoriaLogs",
    "build_victorialogs",
    "victorialogs_binary",
]
