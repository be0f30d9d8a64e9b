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
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .base import ProcessService, ServiceNotInstalled, StackError, file_lock
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


class VictoriaLogs(ProcessService):
    """VictoriaLogs storing ``state_dir/data`` on 127.0.0.1:``port`` (see the module docs); its :meth:`url` is
    icefield's ``logs.ship.url``.

    ``port`` comes from the argument, else ``$ICEFIELD_VICTORIALOGS_PORT``, else 19428; ``retention`` is
    VictoriaLogs' ``-retentionPeriod`` (``7d``: lines older are deleted, and refused at ingestion).
    """

    name = "victorialogs"
    port_env = VICTORIALOGS_PORT_ENV
    port_default = VICTORIALOGS_PORT_DEFAULT
    executable = BINARY
    ready_path = "/health"

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
        super().__init__(base_dir, port=port, fast=fast)
        self.version = version
        self.retention = retention

    def install(self) -> None:
        """Find or build the binary; raise :class:`ServiceNotInstalled` naming how to get Go."""
        self._binary = build_victorialogs(self.version)

    def arguments(self) -> list[str]:
        return [
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=WARN",
        ]

    def ready(self, status: int, body: bytes) -> bool:
        """Ready once ``GET /health`` answers ``OK``."""
        return status == 200 and body.strip() == b"OK"

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
