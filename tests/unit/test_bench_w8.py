"""The W8 harness itself (bench/w8_http.py): its result check, and its icefield and limit peers against a
small real FakeApi on 127.0.0.1. No dlt venv, a few seconds."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pyarrow as pa
from bench import w8_http
from bench.common import table_digest

from icefield.examples.api import ApiSettings, FakeApi, make_records

N = 250  # 3 pages of 100: the last one short


def _dlt_shaped(records: list[dict]) -> pa.Table:
    """The records as dlt stores them: parsed timestamps, nested values as JSON text in the API's key
    order, its own columns beside them."""
    return pa.table(
        {
            "id": pa.array([r["id"] for r in records], pa.int64()),
            "updated_at": pa.array(
                [dt.datetime.strptime(r["updated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) for r in records],
                pa.timestamp("us", "UTC"),
            ),
            "name": [r["name"] for r in records],
            "amount": pa.array([r["amount"] for r in records], pa.float64()),
            "customer": [json.dumps(r["customer"]) for r in records],
            "tags": [json.dumps(r["tags"]) for r in records],
            "deleted": [r["deleted"] for r in records],
            "_dlt_load_id": ["1"] * len(records),
            "_dlt_id": [str(i) for i in range(len(records))],
        }
    )


def test_dlt_shaped_table_has_the_reference_digest_and_a_changed_value_does_not() -> None:
    records = make_records(N, w8_http.SEED)
    assert table_digest(w8_http.canonical(_dlt_shaped(records)), "id") == w8_http.reference(N)
    changed = [dict(r) for r in records]
    changed[7]["customer"] = {**changed[7]["customer"], "country": "XX"}
    assert table_digest(w8_http.canonical(_dlt_shaped(changed)), "id") != w8_http.reference(N)


def test_icefield_and_limit_peers_read_every_record_of_the_api(tmp_path: Path) -> None:
    with FakeApi(ApiSettings(records=N, seed=w8_http.SEED, pagination="page", page_size=w8_http.PAGE_SIZE)) as api:
        res = w8_http._peer_icefield({"url": api.url}, tmp_path / "icefield")
        limit = w8_http._peer_limit({"url": api.url}, tmp_path / "limit")
        # icefield stops at the short third page; the limit loop (as dlt's paginator) at the empty fourth
        assert api.requests["/records"] == 3 + 4
    assert res["info"]["rows_committed"] == N and res["info"]["quarantined"] == 0
    check = w8_http.digest(res["locator"])
    ref = w8_http.reference(N)
    assert (check["rows"], check["hash"]) == (ref["rows"], ref["hash"])
    assert limit["info"]["records"] == N


def test_server_cpu_seconds_grow_with_work() -> None:
    before = w8_http.process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert w8_http.process_cpu_seconds(os.getpid()) > before
