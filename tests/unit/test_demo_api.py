"""The demo's support API: up only inside the demo (stopped and its address unset whatever happens), behind its
bearer token, the same tickets for the same seed; its pipeline is the demo's only, so `icefield run` of the
demo's folder needs no API. The demo's own checks (tests/unit/test_events.py and others run it) cover what
lands."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from icefield.config import load_project
from icefield.demo import _support_api, _with_api_pipeline, copy_example
from icefield.examples.shop.support import ADDRESS_ENV, PIPELINE_FILE, TOKEN_FILE, SupportApi


def test_the_api_is_stopped_and_its_address_unset_when_the_demo_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    copy_example(tmp_path / "demo", fresh=False)
    with pytest.raises(RuntimeError, match="a step of the demo failed"), _support_api(tmp_path / "demo", customers=200) as api:
        url = "http://" + os.environ[ADDRESS_ENV]
        assert url == api.url and url.startswith("http://127.0.0.1:")
        token = (tmp_path / "demo" / TOKEN_FILE).read_text(encoding="utf-8").strip()
        page = httpx.get(f"{url}/records", params={"per_page": 50}, headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200 and len(page.json()["data"]["items"]) == 50
        assert httpx.get(f"{url}/records").status_code == 401
        raise RuntimeError("a step of the demo failed")
    assert ADDRESS_ENV not in os.environ
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/records", timeout=2)


def test_the_tickets_are_a_function_of_the_seed_and_belong_to_the_shops_customers() -> None:
    one, two = SupportApi(customers=200, token="a"), SupportApi(customers=200, token="b")
    assert one.expected() == two.expected() != SupportApi(customers=200, token="a", seed=8).expected()
    tickets = list(one.expected().values())
    assert len(tickets) == 240 and {t["id"] for t in tickets} == set(range(1, 241))
    assert all(1 <= t["customer_id"] <= 200 for t in tickets)
    newest = max(t["updated_at"] for t in tickets)
    added = one.add(3)
    assert added == [241, 242, 243] and all(one.expected()[i]["updated_at"] > newest for i in added)


def test_the_demo_folder_leaves_the_api_pipeline_out_and_the_demo_adds_it(tmp_path: Path) -> None:
    copy_example(tmp_path / "demo", fresh=False)
    project = load_project(tmp_path / "demo", env={})
    assert (tmp_path / "demo" / PIPELINE_FILE).is_file()
    assert "support_tickets" not in project.pipelines
    assert all(p.source.type != "http" for p in project.pipelines.values())
    with_api = _with_api_pipeline(project, tmp_path / "demo")
    pipe = with_api.pipelines["support_tickets"]
    assert pipe.source.type == "http" and pipe.source.base_url == f"http://${{env:{ADDRESS_ENV}}}"
    assert pipe.source.auth is not None and pipe.source.auth.token == f"${{file:{TOKEN_FILE}}}"
    assert set(with_api.pipelines) == {*project.pipelines, "support_tickets"}
