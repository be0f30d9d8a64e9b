"""The http pipelines the documentation shows are real: every full example in ``docs/http.md`` (and the
README, once it has one) loads with ``load_project``, and the GitHub-style example (``Link`` pagination,
``since=`` on ``updated_at``, a bearer token from ``${env:GITHUB_TOKEN}``) lands a GitHub-shaped API served
on 127.0.0.1 incrementally: every issue once, then only the issues updated since. No network beyond
127.0.0.1."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from icefield.config import load_project
from icefield.examples.api import ApiSettings, FakeApi, stamp

REPO = Path(__file__).resolve().parents[2]

# The README's example (keep the two identical).
GITHUB_ISSUES = """\
# pipelines/github_issues.yaml
name: github_issues
source:
  type: http
  base_url: https://api.github.com
  path: /repos/OWNER/REPO/issues
  params: {state: all, sort: updated, direction: asc}
  headers: {Accept: application/vnd.github+json, X-GitHub-Api-Version: "2022-11-28"}
  auth: {type: bearer, token: "${env:GITHUB_TOKEN}"}
  pagination: {type: link, size: 100}       # ?per_page=100, then the Link header's rel="next" URL
  cursor: {field: updated_at, param: since} # later runs ask for ?since=<newest updated_at loaded>
  columns: {id: long, number: long, created_at: timestamptz, updated_at: timestamptz, closed_at: timestamptz, user: json, labels: json}
  rate_limit: {requests_per_second: 1}      # GitHub allows 5,000 requests an hour with a token
target:
  table: github.issues
  mode: merge
  keys: [id]
batch_size: 5000
"""


def _project(root: Path, pipeline_text: str) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "icefield.yaml").write_text("name: examples\n", encoding="utf-8")
    name = yaml.safe_load(pipeline_text)["name"]
    (root / "pipelines" / f"{name}.yaml").write_text(pipeline_text, encoding="utf-8")
    return root


def _http_pipeline_blocks(text: str) -> list[str]:
    """The YAML blocks of a markdown text that are whole http pipeline files (they start with a
    ``# pipelines/<name>.yaml`` comment)."""
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return [b for b in blocks if b.startswith("# pipelines/") and "type: http" in b]


def test_the_github_example_loads_with_the_spec_it_promises(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path / "gh", GITHUB_ISSUES), env={})
    source = project.pipelines["github_issues"].source
    assert source.type == "http"
    assert source.pagination is not None and source.pagination.type == "link" and source.pagination.size == 100
    assert source.cursor is not None and (source.cursor.field, source.cursor.param, source.cursor.location) == ("updated_at", "since", "query")
    # The token stays a reference in the loaded config: it is resolved only when the source opens.
    assert source.auth is not None and source.auth.type == "bearer" and source.auth.token == "${env:GITHUB_TOKEN}"
    assert source.params == {"state": "all", "sort": "updated", "direction": "asc"}
    assert source.records == ""  # GitHub answers a bare list
    target = project.pipelines["github_issues"].target
    assert (target.table, target.mode, target.keys) == ("github.issues", "merge", ["id"])


@pytest.mark.parametrize("doc", ["docs/http.md", "README.md"])
def test_every_http_pipeline_the_docs_show_loads(tmp_path: Path, doc: str) -> None:
    blocks = _http_pipeline_blocks((REPO / doc).read_text(encoding="utf-8"))
    if doc == "docs/http.md":
        assert len(blocks) >= 2, "docs/http.md lost its full examples"
    elif not blocks:
        pytest.skip(f"{doc} shows no http pipeline yet")
    for i, block in enumerate(blocks):
        project = load_project(_project(tmp_path / f"p{i}", block), env={})
        (pipe,) = project.pipelines.values()
        assert pipe.source.type == "http", block


class GitHubIssues(FakeApi):
    """Issues shaped like GitHub's (``id``, ``number``, ``title``, ``state``, ``user`` and ``labels`` objects,
    ``created_at``/``updated_at``/``closed_at``), a bare list a page with a ``Link`` header, ``since=``
    inclusive on ``updated_at``, behind a bearer token. The path is the fake API's ``/records``."""

    def __init__(self, issues: int, token: str) -> None:
        super().__init__(ApiSettings(records=0, pagination="link", page_size=30, auth="bearer", token=token, customers=0))
        self.records = [
            {
                "id": 900_000 + n,
                "number": n,
                "title": f"issue {n}",
                "state": "open",
                "user": {"login": f"user{n % 7}", "id": 1000 + n % 7},
                "labels": [{"name": "bug"}] if n % 3 == 0 else [],
                "created_at": stamp(n * 60 - 30),
                "updated_at": stamp(n // 2 * 60),  # two issues share each updated_at: the cursor meets ties
                "closed_at": None,
            }
            for n in range(1, issues + 1)
        ]


def test_the_github_example_lands_a_github_shaped_api_incrementally(lake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "ghp_canary0example0token"
    monkeypatch.setenv("GITHUB_TOKEN", token)
    with GitHubIssues(issues=75, token=token) as api:
        body = yaml.safe_load(GITHUB_ISSUES)
        # Only where the API is and how fast it may be asked change; the rest is the README's text.
        body["source"].update(base_url=api.url, path="/records", rate_limit={"requests_per_second": 50})
        body["source"]["pagination"]["size"] = 30
        lk = lake({"github_issues": body})

        first = lk.run("github_issues")
        assert first.rows_committed == 75 and first.rows_quarantined == 0
        assert any("page=3" in line for line in api.log), api.log  # followed the Link header to the last page
        assert all("per_page=30" in line and "state=all" in line for line in api.log), api.log

        seen = len(api.log)
        api.update([900_003, 900_040], state="closed", closed_at=stamp(10_000))
        second = lk.run("github_issues")
        assert second.rows_committed == 2
        assert all("since=" in line for line in api.log[seen:]), api.log[seen:]

        rows = {r["number"]: r for r in lk.rows("github.issues", "id")}
        assert sorted(rows) == list(range(1, 76))
        assert {n for n, r in rows.items() if r["state"] == "closed"} == {3, 40}
        assert rows[3]["closed_at"] is not None and rows[3]["closed_at"].tzinfo is not None
        assert '"login": "user3"' in rows[3]["user"] or '"login":"user3"' in rows[3]["user"]
        assert lk.run("github_issues").batches == []
        assert lk.snapshot_count("github.issues") == 2
