"""The demo ends with every table and model up to date (issue 15): `icefield run` right after `icefield
demo` commits no snapshot. Its last step published the held orders without rebuilding
``analytics.daily_revenue``, so the next run rebuilt the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from icefield.cli import EXIT_OK


def _icefield(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icefield.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_a_run_right_after_the_demo_commits_nothing(tmp_path: Path) -> None:
    demo = _icefield("--json", "demo", "--dir", "shop", cwd=tmp_path)
    assert demo.returncode == EXIT_OK, demo.stdout[-2000:] + demo.stderr[-2000:]
    report = json.loads(demo.stdout)
    assert report["ok"], report["checks"]

    rerun = _icefield("--json", "run", cwd=tmp_path / "shop")
    assert rerun.returncode == EXIT_OK, rerun.stdout + rerun.stderr
    doc = json.loads(rerun.stdout)
    results = {r["pipeline"]: r for r in doc["results"]}
    assert "model.daily_revenue" in results and len(results) == 7, sorted(results)
    committed = {name: r["snapshots"] for name, r in results.items() if r["snapshots"]}
    assert committed == {}, f"the demo left these out of date: {committed}"
    assert all(b["skipped"] or b["snapshot_id"] is None for r in doc["results"] for b in r["batches"])
