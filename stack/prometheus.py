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
from pathlib import Path
from typing import Any

import yaml

from .base import REPO_ROOT, ProcessService, ServiceNotInstalled, StackError

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


class _Binary(ProcessService):
    """A server that is one binary on the PATH (:attr:`executable`), from Debian's packages; ready when
    ``/-/ready`` answers 200."""

    ready_path = "/-/ready"

    def install(self) -> None:
        """Find the binary on the PATH; raise :class:`ServiceNotInstalled` naming the apt command if missing."""
        path = shutil.which(self.executable)
        if path is None:
            raise ServiceNotInstalled(f"{self.executable} is not on the PATH: run `{INSTALL_HINT}`")
        self._binary = Path(path)


class Pushgateway(_Binary):
    """The Prometheus Pushgateway (batch runs push their metrics to it), on 127.0.0.1 only."""

    name = "pushgateway"
    executable = "prometheus-pushgateway"
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
    executable = "prometheus-alertmanager"
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
    executable = "prometheus"
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
