"""The Prometheus, Pushgateway and Alertmanager launchers without starting them: ports, the configuration
they write (Prometheus scrapes the Pushgateway with its labels kept, evaluates the project's rules, alerts
the Alertmanager; Alertmanager sends to a webhook when given one) and the fix named when a binary is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from stack import SERVICES, Alertmanager, Prometheus, Pushgateway, get_service
from stack.base import ServiceNotInstalled, StackError
from stack.prometheus import ALERTMANAGER_CONFIG, RULES_FILE


def test_the_three_services_are_registered_with_their_own_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(get_service("prometheus", base_dir=tmp_path), Prometheus)
    names = list(SERVICES)
    assert names.index("pushgateway") < names.index("alertmanager") < names.index("prometheus")  # Prometheus after what it talks to
    ports = (Prometheus(tmp_path).port, Pushgateway(tmp_path).port, Alertmanager(tmp_path).port)
    assert not {9090, 9091, 9093} & set(ports), "never the ports a system Prometheus holds"
    monkeypatch.setenv("ICEFIELD_PUSHGATEWAY_PORT", "29091")
    assert Pushgateway(tmp_path).port == 29091 and Prometheus(tmp_path).pushgateway.port == 29091
    with pytest.raises(StackError, match="config.*webhook"):
        Alertmanager(tmp_path, config=ALERTMANAGER_CONFIG, webhook="http://127.0.0.1:1/x")


def test_prometheus_scrapes_the_pushgateway_evaluates_the_rules_and_alerts_the_alertmanager(tmp_path: Path) -> None:
    pgw, am = Pushgateway(tmp_path, port=20001), Alertmanager(tmp_path, port=20002)
    prom = Prometheus(tmp_path, port=20003, pushgateway=pgw, alertmanager=am, scrape_interval="1s")
    prom.state_dir.mkdir(parents=True)
    prom.prepare()
    config = yaml.safe_load(prom.config_file.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    assert config["rule_files"] == [str(RULES_FILE)] and RULES_FILE.is_file()
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:20002"]
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True and job["static_configs"][0]["targets"] == ["127.0.0.1:20001"]
    assert "--web.listen-address=127.0.0.1:20003" in prom.arguments()
    assert "--cluster.listen-address=" in am.arguments()


def test_alertmanager_runs_the_project_configuration_or_a_webhook(tmp_path: Path) -> None:
    am = Alertmanager(tmp_path)
    am.state_dir.mkdir(parents=True)
    am.prepare()
    assert am.config_file.read_text() == ALERTMANAGER_CONFIG.read_text()
    hooked = Alertmanager(tmp_path / "b", webhook="http://127.0.0.1:5001/alerts")
    hooked.state_dir.mkdir(parents=True)
    hooked.prepare()
    config = yaml.safe_load(hooked.config_file.read_text())
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"] == [{"url": "http://127.0.0.1:5001/alerts", "send_resolved": True}]
    assert config["route"]["receiver"] == receiver["name"]


def test_a_missing_binary_names_the_apt_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceNotInstalled, match="apt-get install -y prometheus prometheus-pushgateway prometheus-alertmanager"):
        Pushgateway(tmp_path).install()
