"""The Grafana dashboards (issue 19, part 5; ``docs/dashboards.md``): the committed files are what the
generator writes, and every panel reads only metrics icefield declares, through the variables its dashboard
defines. Their queries run against a live Prometheus in ``tests/integration/test_dashboards_prometheus.py``."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
TOPICS = {"pipelines", "tables", "streams-and-cdc", "quality", "cost"}


def load_generator() -> ModuleType:
    """``deploy/grafana/generate.py`` as a module (it lives outside the icefield package)."""
    name = "icefield_grafana_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


def test_the_committed_files_are_what_the_generator_writes(gen: ModuleType) -> None:
    expected = gen.files()
    stale = sorted(
        rel for rel, text in expected.items()
        if not (GRAFANA / rel).is_file() or (GRAFANA / rel).read_text(encoding="utf-8") != text
    )
    extra = sorted(
        str(p.relative_to(GRAFANA)) for p in (GRAFANA / "dashboards").glob("*.json")
        if str(p.relative_to(GRAFANA)) not in expected
    )
    assert not stale and not extra, (
        f"deploy/grafana is out of date (differs: {stale}; not generated: {extra}): regenerate it with "
        "`python deploy/grafana/generate.py` and commit the result"
    )


def test_one_dashboard_per_topic_with_unique_uids_and_panel_ids(gen: ModuleType) -> None:
    docs = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(docs) == TOPICS
    assert len({d["uid"] for d in docs.values()}) == len(docs)
    for stem, doc in docs.items():
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), f"{stem}: duplicate panel ids"
        assert gen.queries(doc), f"{stem} has no query"


def test_every_panel_reads_declared_icefield_metrics_through_defined_variables(gen: ModuleType) -> None:
    declared = gen.declared_metrics()
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        defined = set(gen.variables(doc)) | {"datasource"}
        for query in gen.variables(doc).values():
            assert re.fullmatch(r"label_values\(icefield_\w+(\{[^}]*\})?, \w+\)", query), query
        for title, expr, _ in gen.queries(doc):
            names = gen.metric_names(expr)
            assert names, f"{path.name} / {title}: reads no icefield metric: {expr}"
            assert names <= declared, f"{path.name} / {title}: not a metric icefield declares: {sorted(names - declared)}"
            used = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval", "__range", "__interval", "1"}
            assert used <= defined, f"{path.name} / {title}: undefined variables {sorted(used - defined)}"


def test_the_checker_catches_a_misspelt_metric(gen: ModuleType) -> None:
    """The same names the test above checks: a metric icefield does not declare is not among them."""
    names = gen.metric_names('sum by (pipeline) (icefield_rows_comitted_total{pipeline=~"$pipeline"})')
    assert names == {"icefield_rows_comitted_total"}
    assert not names <= gen.declared_metrics()


def test_the_provisioning_files_point_at_the_dashboards_and_the_datasource(gen: ModuleType) -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "icefield.yaml").read_text(encoding="utf-8"))
    (ds,) = datasources["datasources"]
    assert (ds["type"], ds["uid"]) == ("prometheus", gen.DATASOURCE_UID)
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "icefield.yaml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    for path in (GRAFANA / "dashboards").glob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        (ds_var,) = [v for v in doc["templating"]["list"] if v["name"] == "datasource"]
        assert ds_var["current"]["value"] == gen.DATASOURCE_UID, path.name
