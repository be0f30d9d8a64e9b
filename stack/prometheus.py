"""Prometheus, the Pushgateway and Alertmanager, started natively from Debian's packages.

Three services (``prometheus``, ``pushgateway``, ``alertmanager``), each a single Go binary
(``apt-get install prometheus prometheus-pushgateway prometheus-alertmanager``; ``promtool`` comes with
``prometheus``), on 127.0.0.1 only, stopped by pid. Prometheus scrapes the Pushgateway (``honor_labels``:
the pushed ``job`` and ``pipeline`` labels are kept), evaluates the project's alert rules
(``deploy/prometheus/rules/icefield.rules.yml``) and sends its alerts to the Alertmanager. Alertmanager runs
the project's ``deploy/alertmanager/alertmanager.yml``, or, given a ``webhook`` URL, a configuration that
sends every alert to that webhook at once (tests receive alerts so). Layout under ``state_dir``
(``<base>/<name>``)::

    prometheus.yml | alertmanager.yml    the configuration (rewritten at every start)
    data/                                 the TSDB, the silences and notification log
    <name>.log, pid, lock

Ports: ``$ICEFIELD_PROMETHEUS_PORT`` (19090), ``$ICEFIELD_PUSHGATEWAY_PORT`` (19091),
``$ICEFIELD_ALERTMANAGER_PORT`` (19093): not the upstream defaults (9090, 9091, 9093), which a system
Prometheus may hold. Alertmanager's cluster port is off (a single instance). Ready when ``/-/ready``
answers 200.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .base import (
    REPO_ROOT,
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

logger = logging.getLogger(__name__)

PROMETHEUS_PORT_ENV = "ICEFIELD_PROMETHEUS_PORT"
PROMETHEUS_PORT_DEFAULT = 19090
PUSHGATEWAY_PORT_ENV = "ICEFIELD_PUSHGATEWAY_PORT"
PUSHGATEWAY_PORT_DEFAULT = 19091
ALERTMANAGER_PORT_ENV = "ICEFIELD_ALERTMANAGER_PORT"
ALERTMANAGER_PORT_DEFAULT = 19093
RULES_FILE = REPO_ROOT / "deploy" / "prometheus" / "rules" / "icefield.rules.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
INSTALL_HINT = "apt-get install -y prometheus prometheus-pushgateway prometheus-alertmanager"


class _Binary(Service):
    """A server that is one binary on the PATH (``binary``), started detached with :meth:`arguments`."""

    binary: str
    port_env: str
    port_default: int

    def __init__(self, base_dir: Path | str | None = None, *, port: int | None = None, fast: bool = False) -> None:
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(self.port_env, self.port_default)
        if not 1 <= self._port <= 65535:
            raise StackError(f"{self.name} port {self._port} is out of range 1-65535")
        self._path: str | None = None

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def install(self) -> None:
        """Find the binary on the PATH; raise :class:`ServiceNotInstalled` naming the apt command if missing."""
        path = shutil.which(self.binary)
        if path is None:
            raise ServiceNotInstalled(f"{self.binary} is not on the PATH: run `{INSTALL_HINT}`")
        self._path = path

    def prepare(self) -> None:
        """Write the configuration before a start (under the lock)."""

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> bool:
        self.install()
        assert self._path is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is not None:
                logger.info("%s already running (pid %d)", self.name, pid)
                return False
            if port_open(self.host, self.port):
                raise ServiceStartError(
                    f"{self.name}: port {self.port} on {self.host} is already in use by another process; "
                    f"choose another with {self.port_env}"
                )
            self.prepare()
            with open(self.log_file, "a") as log:
                log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting {self.name}\n")
            logger.info("starting %s on %s:%d (log %s)", self.name, self.host, self.port, self.log_file)
            pid = spawn_detached([self._path, *self.arguments()], self.log_file, cwd=self.state_dir)
            self.pid_file.write_text(f"{pid}\n")
            return True

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url()}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pid = self._running_pid()
            if pid is None:
                raise ServiceStartError(
                    f"{self.name} is not running (it exited or was never started); log {self.log_file}:\n{tail(self.log_file)}"
                )
            if self.probe():
                logger.info("%s ready on %s:%d (pid %d)", self.name, self.host, self.port, pid)
                return
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.name} (pid {pid}) not ready on {self.host}:{self.port} after {timeout:.0f}s; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> bool:
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            logger.info("stopping %s (pid %d)", self.name, pid)
            if not kill_pid(pid, timeout, signals=(signal.SIGTERM, signal.SIGKILL)):
                raise StackError(f"{self.name} pid {pid} survived SIGKILL; see {self.log_file}")
            self.pid_file.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
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
        # The kernel's command name is the binary's name cut to 15 characters.
        return recorded_pid(self.pid_file, Path(self.binary).name[:15])


class Pushgateway(_Binary):
    """The Prometheus Pushgateway (batch runs push their metrics to it), on 127.0.0.1 only."""

    name = "pushgateway"
    binary = "prometheus-pushgateway"
    port_env = PUSHGATEWAY_PORT_ENV
    port_default = PUSHGATEWAY_PORT_DEFAULT

    def arguments(self) -> list[str]:
        return [
            f"--web.listen-address={self.host}:{self.port}",
            f"--persistence.file={self.data_dir / 'metrics'}",
            "--persistence.interval=1m",
        ]


class Alertmanager(_Binary):
    """Alertmanager on 127.0.0.1 only, without clustering. ``config`` is its configuration file (default the
    project's ``deploy/alertmanager/alertmanager.yml``); with ``webhook`` a configuration is written instead
    that sends every alert, and its resolution, to that URL after ``group_wait`` (a test's receiver)."""

    name = "alertmanager"
    binary = "prometheus-alertmanager"
    port_env = ALERTMANAGER_PORT_ENV
    port_default = ALERTMANAGER_PORT_DEFAULT

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        config: Path | None = None,
        webhook: str | None = None,
        group_wait: str = "1s",
    ) -> None:
        super().__init__(base_dir, port=port, fast=fast)
        if config is not None and webhook is not None:
            raise StackError("Alertmanager takes a configuration file or a webhook URL, not both")
        self.config = config
        self.webhook = webhook
        self.group_wait = group_wait

    @property
    def config_file(self) -> Path:
        return self.state_dir / "alertmanager.yml"

    def prepare(self) -> None:
        if self.webhook is None:
            source = self.config or ALERTMANAGER_CONFIG
            self.config_file.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            return
        doc: dict[str, Any] = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "pipeline", "table"],
                "group_wait": self.group_wait,
                "group_interval": self.group_wait,
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": self.webhook, "send_resolved": True}]}],
        }
        self.config_file.write_text(
            "# Written by stack/prometheus.py at every start.\n" + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
        )

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_file}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",
        ]


class Prometheus(_Binary):
    """Prometheus on 127.0.0.1 only: scrapes ``pushgateway`` every ``scrape_interval``, evaluates ``rules``
    (default the project's rules file) every ``evaluation_interval`` and alerts ``alertmanager``. Both
    default to the stack's services (their ports from the environment). ``targets`` adds scrape jobs: job
    name to ``host:port`` list (a following run's ``/metrics``, ``icefield metrics serve``)."""

    name = "prometheus"
    binary = "prometheus"
    port_env = PROMETHEUS_PORT_ENV
    port_default = PROMETHEUS_PORT_DEFAULT

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        pushgateway: Pushgateway | None = None,
        alertmanager: Alertmanager | None = None,
        rules: list[Path] | None = None,
        scrape_interval: str = "15s",
        evaluation_interval: str = "15s",
        targets: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(base_dir, port=port, fast=fast)
        self.pushgateway = pushgateway or Pushgateway(self.base_dir)
        self.alertmanager = alertmanager or Alertmanager(self.base_dir)
        self.rules = rules if rules is not None else [RULES_FILE]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.targets = dict(targets or {})

    @property
    def config_file(self) -> Path:
        return self.state_dir / "prometheus.yml"

    def prepare(self) -> None:
        doc = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "rule_files": [str(p.absolute()) for p in self.rules],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"{self.alertmanager.host}:{self.alertmanager.port}"]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,  # keep the job and pipeline labels the runs pushed
                    "static_configs": [{"targets": [f"{self.pushgateway.host}:{self.pushgateway.port}"]}],
                },
                *({"job_name": job, "static_configs": [{"targets": list(hosts)}]} for job, hosts in self.targets.items()),
            ],
        }
        self.config_file.write_text(
            "# Written by stack/prometheus.py at every start.\n" + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
        )

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
        ]
