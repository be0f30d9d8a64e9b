"""docs/reliability.md A1 for the http source: SIGKILL ``icefield run`` at random moments of a paginated,
incremental load from the fake API (a thread of this test, so it outlives every killed run), then a clean
run to the end: the table holds every record of the API exactly once (0 lost, 0 duplicated), ties at the
cursor included (three records share each ``updated_at``, so batch ends fall inside ties). The
``for_each`` case loads the invoices of every customer (a cursor per customer; batches span customers)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from icefield.catalog import open_catalog
from icefield.config import load_project
from icefield.examples.api import ApiSettings, FakeApi
from icefield.iceberg.history import head_id

KILLS = int(os.environ.get("ICEFIELD_HTTP_KILLS", "6"))


def _run(root: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEFIELD")}
    return subprocess.Popen(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )


def _head(root: Path) -> int | None:
    catalog = open_catalog(load_project(root))
    if not catalog.table_exists("raw.records"):
        return None
    return head_id(catalog.load_table("raw.records"), "main")


def _source(api: FakeApi, case: str) -> dict[str, Any]:
    if case == "records":
        return {
            "type": "http",
            "base_url": api.url,
            "path": "/records",
            "pagination": {"type": "link", "size": 20},
            "columns": {"id": "long", "updated_at": "timestamptz"},
            "cursor": {"field": "updated_at", "param": "since"},
        }
    return {
        "type": "http",
        "base_url": api.url,
        "path": "/customers/{id}/invoices",
        "pagination": {"type": "link", "size": 10},
        "cursor": {"field": "updated_at", "param": "since"},
        "for_each": {"path": "/customers", "pagination": {"type": "link", "size": 20}, "fills": {"id": "id"}},
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", ["records", "for_each"])
def test_sigkill_during_a_paginated_load_loses_and_duplicates_nothing(tmp_path: Path, case: str) -> None:
    seed = int(os.environ.get("ICEFIELD_SEED", random.randrange(1 << 30)))
    print(f"seed={seed} kills={KILLS} case={case}")
    rng = random.Random(seed)
    # 30 ms a page, 20 records a page, batches of 60 records: a commit every ~0.1 s, over ~6 s in all
    # (for_each: 80 customers of 25 invoices, 3 pages each, batches of 50 spanning customers).
    settings = ApiSettings(records=4000, pagination="link", page_size=20, delay=0.03, ties=3, seed=seed, customers=80, invoices_per_customer=25)
    with FakeApi(settings) as api:
        root = tmp_path / "proj"
        (root / "pipelines").mkdir(parents=True)
        (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "httpkill"}))
        (root / "pipelines" / "records.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "records",
                    "source": _source(api, case),
                    "target": {"table": "raw.records"},
                    "batch_size": 60 if case == "records" else 50,
                }
            )
        )
        kills = 0
        for _ in range(KILLS):
            before = _head(root)
            proc = _run(root)
            # Wait for the run's first commit (its start-up is over), then kill somewhere in the next batches.
            deadline = time.monotonic() + 120
            while proc.poll() is None and _head(root) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            elif case == "records":
                api.add(200)  # it loaded everything: give the next run records to load
            else:
                for c in rng.sample(range(1, 100), 20):
                    api.add_invoice(c)
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        final = _run(root)
        _, err = final.communicate(timeout=300)
        assert final.returncode == 0, err.decode()
        assert kills >= KILLS // 2, "most kills landed inside a load"

        table = open_catalog(load_project(root)).load_table("raw.records")
        if case == "records":
            rows = table.scan(selected_fields=("id", "name")).to_arrow().to_pylist()
            counts = Counter(r["id"] for r in rows)
            want = api.expected()
            assert all(r["name"] == want[r["id"]]["name"] for r in rows), "divergent"
        else:
            rows = table.scan(selected_fields=("invoice_id", "parent_id")).to_arrow().to_pylist()
            counts = Counter(r["invoice_id"] for r in rows)
            want = {i["invoice_id"]: c for c, invoices in api.invoices.items() for i in invoices}
            assert all(r["parent_id"] == want[r["invoice_id"]] for r in rows), "divergent"
        assert sorted(k for k, n in counts.items() if n > 1) == [], "duplicated"
        assert sorted(set(want) - set(counts)) == [], "lost"
        assert sorted(set(counts) - set(want)) == [], "unexpected"
