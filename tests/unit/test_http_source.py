"""The http source through ``run_pipeline`` against a real HTTP server on 127.0.0.1 (the fake API of
``icefield.examples.api``, standard library, in a thread of the test): every pagination style, every auth
style (OAuth2 tokens expiring mid-run included), 429 and 503 answers, the incremental cursor with ties,
malformed pages quarantined with their coordinates, and no secret anywhere."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError
from icefield.errors import SourceError, TransientError
from icefield.examples.api import ApiSettings, FakeApi, stamp
from icefield.iceberg.history import read_position

STYLES: dict[str, tuple[dict[str, Any], str]] = {
    "page": ({"type": "page", "size": 10}, "data.items"),
    "offset": ({"type": "offset", "size": 10}, "data.items"),
    "cursor": ({"type": "cursor", "cursor_path": "meta.next_cursor", "size": 10}, "data.items"),
    "link": ({"type": "link", "size": 10}, ""),
    "next_url": ({"type": "next_url", "next_url_path": "next", "size": 10}, "results"),
}
FAST_RETRIES = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


def pipeline(api: FakeApi, target: dict[str, Any] | None = None, batch_size: int | None = 20, cursor: bool = True, **source: Any) -> dict[str, Any]:
    """A pipeline reading ``api``'s /records in its pagination style, incremental by updated_at."""
    pagination, records = STYLES[api.settings.pagination]
    body: dict[str, Any] = {
        "source": {
            "type": "http",
            "base_url": api.url,
            "path": "/records",
            "pagination": pagination,
            "records": records,
            "columns": {"id": "long", "amount": "double", "updated_at": "timestamptz"},
            "retries": FAST_RETRIES,
            **({"cursor": {"field": "updated_at", "param": "since"}} if cursor else {}),
            **source,
        },
        "target": target or {"table": "raw.records"},
    }
    if batch_size:
        body["batch_size"] = batch_size
    return body


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[FakeApi] = []

    def start(**settings: Any) -> FakeApi:
        api = FakeApi(ApiSettings(**settings)).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def assert_each_once(rows: list[dict[str, Any]], expected: list[int]) -> None:
    counts = Counter(r["id"] for r in rows)
    assert sorted(k for k, n in counts.items() if n > 1) == []
    assert sorted(counts) == sorted(expected)


# ------------------------------------------------------------------ pagination


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_pagination_style_lands_every_record_once(lake, serve, style):
    api = serve(records=47, pagination=style, page_size=10)
    lk = lake({"recs": pipeline(api)})
    res = lk.run("recs")
    assert res.conserved
    assert (res.rows_in, res.rows_committed) == (47, 47)
    assert [b.rows_in for b in res.batches] == [20, 20, 7]  # a batch closes at the page end past batch_size
    rows = lk.rows("raw.records", "id")
    assert_each_once(rows, list(range(1, 48)))
    want = api.expected()
    assert all(r["name"] == want[r["id"]]["name"] and r["amount"] == want[r["id"]]["amount"] for r in rows)
    # Nested objects and lists land as JSON text unless declared otherwise.
    assert json.loads(rows[0]["customer"]) == want[1]["customer"]
    assert read_position(lk.table("raw.records"), "recs")["cursor"] == want[47]["updated_at"]

    again = lk.run("recs")
    assert again.batches == []


def test_post_search_with_a_json_body_and_the_cursor_in_it(lake, serve):
    api = serve(records=23, pagination="page", page_size=10)
    body = pipeline(api, path="/search", method="POST", json={"kind": "all"}, cursor=False)
    body["source"]["cursor"] = {"field": "updated_at", "param": "since", "in": "json"}
    lk = lake({"recs": body})
    assert lk.run("recs").rows_committed == 23
    new = api.add(3)
    assert lk.run("recs").rows_committed == 3
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 24)) + new)


def test_a_full_load_without_cursor_commits_only_changed_content(lake, serve):
    api = serve(records=15, pagination="link", page_size=4)
    lk = lake({"recs": pipeline(api, {"table": "raw.records", "mode": "overwrite"}, cursor=False)})
    assert lk.run("recs").rows_committed == 15
    assert lk.run("recs").batches == []
    api.update([3], name="renamed")
    assert lk.run("recs").rows_committed == 15
    rows = lk.rows("raw.records", "id")
    assert_each_once(rows, list(range(1, 16)))
    assert rows[2]["name"] == "renamed"


def test_full_load_in_append_mode_is_refused(lake, serve):
    api = serve(records=3)
    lk = lake({"recs": pipeline(api, cursor=False)})
    with pytest.raises(ConfigError, match="source.cursor"):
        lk.run("recs")


# ------------------------------------------------------------------ auth


AUTHS = {
    "bearer": ({"type": "bearer", "token": "${env:API_TOKEN}"}, "t0ken-canary-5f1e"),
    "basic": ({"type": "basic", "username": "reader", "password": "${env:API_TOKEN}"}, "pa55-canary-7c2b"),
    "api_key": ({"type": "api_key", "key": "${env:API_TOKEN}"}, "k3y-canary-9d4a"),
    "api_key_query": ({"type": "api_key", "key": "${env:API_TOKEN}", "name": "api_key", "in": "query"}, "k3y-canary-9d4a"),
}


@pytest.mark.parametrize("style", sorted(AUTHS))
def test_auth_styles(lake, serve, monkeypatch, style):
    auth, secret = AUTHS[style]
    api = serve(records=12, pagination="page", page_size=5, auth=style.removesuffix("_query"))
    monkeypatch.setenv("API_TOKEN", secret)
    lk = lake({"recs": pipeline(api, auth=auth)})
    assert lk.run("recs").rows_committed == 12

    monkeypatch.setenv("API_TOKEN", secret + "-wrong")
    other = lake({"recs": pipeline(api, auth=auth)})
    with pytest.raises(ConfigError) as e:
        other.run("recs")
    assert "401" in str(e.value) and "source.auth" in str(e.value)
    assert secret not in str(e.value)


def test_oauth2_token_expiring_mid_run_is_fetched_again(lake, serve, monkeypatch):
    # Tokens live 0.6 s; 13 pages of 0.1 s each outlive several of them.
    api = serve(records=60, pagination="cursor", page_size=5, auth="oauth2", token_ttl=0.6, delay=0.1)
    monkeypatch.setenv("CLIENT_SECRET", api.settings.client_secret)
    auth = {"type": "oauth2_client_credentials", "token_url": f"{api.url}/oauth/token", "client_id": "icefield", "client_secret": "${env:CLIENT_SECRET}"}
    lk = lake({"recs": pipeline(api, auth=auth, pagination={"type": "cursor", "cursor_path": "meta.next_cursor", "size": 5})})
    res = lk.run("recs")
    assert res.rows_committed == 60
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 61)))
    assert api.tokens_issued >= 2


def test_oauth2_401_mid_run_fetches_a_fresh_token(lake, serve, monkeypatch):
    """A token the API stops honouring before its stated expiry (revoked, clocks apart): the 401 fetches a
    new one and the request is asked again."""
    api = serve(records=30, pagination="page", page_size=5, auth="oauth2", token_ttl=3600, token_valid=0.25, delay=0.1)
    monkeypatch.setenv("CLIENT_SECRET", api.settings.client_secret)
    auth = {"type": "oauth2_client_credentials", "token_url": f"{api.url}/oauth/token", "client_id": "icefield", "client_secret": "${env:CLIENT_SECRET}"}
    lk = lake({"recs": pipeline(api, auth=auth)})
    assert lk.run("recs").rows_committed == 30
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 31)))
    assert api.statuses.get(401, 0) >= 1 and api.tokens_issued >= 2


def test_wrong_client_secret_is_a_config_error_without_the_secret(lake, serve, monkeypatch):
    api = serve(records=5, auth="oauth2")
    monkeypatch.setenv("CLIENT_SECRET", "not-the-s3cret-canary")
    auth = {"type": "oauth2_client_credentials", "token_url": f"{api.url}/oauth/token", "client_id": "icefield", "client_secret": "${env:CLIENT_SECRET}"}
    lk = lake({"recs": pipeline(api, auth=auth)})
    with pytest.raises(ConfigError, match="client_secret") as e:
        lk.run("recs")
    assert "not-the-s3cret-canary" not in str(e.value)


# ------------------------------------------------------------------ faults


def test_429_with_retry_after_and_503_bursts_land_every_record_once(lake, serve):
    api = serve(records=80, pagination="offset", page_size=10, rate_limit=3, rate_window=0.5, retry_after=0.2, faults={2: "503x2", 5: "503x3"})
    # A 429 counts as an attempt too: enough attempts for the 503 burst and the waits for the limit.
    lk = lake({"recs": pipeline(api, batch_size=30, retries={**FAST_RETRIES, "attempts": 12})})
    res = lk.run("recs")
    assert res.conserved and res.rows_committed == 80
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 81)))
    assert api.statuses[429] >= 1 and api.statuses[503] == 5
    # Every 429 was followed by a wait of its Retry-After before the next request.
    after = [later[0] - t for (t, status), later in zip(api.answers, api.answers[1:], strict=False) if status == 429]
    assert after and min(after) >= 0.2 - 0.01


def test_the_rate_limit_spaces_requests(lake, serve):
    import time

    api = serve(records=30, pagination="page", page_size=5)
    lk = lake({"recs": pipeline(api, rate_limit={"requests_per_second": 20})})
    start = time.monotonic()
    assert lk.run("recs").rows_committed == 30
    # 6 full pages and an empty one, at most 20 a second
    assert time.monotonic() - start >= (api.requests["/records"] - 1) / 20
    assert api.statuses.get(429) is None


def test_a_server_that_stays_down_is_a_transient_error(lake, serve):
    api = serve(records=30, pagination="page", page_size=10, faults={2: "503x99"})
    lk = lake({"recs": pipeline(api, batch_size=10, retries={**FAST_RETRIES, "attempts": 3})})
    with pytest.raises(TransientError, match=r"page=2.*failed 3 times.*503") as e:
        lk.run("recs")
    assert e.value.exit_code == 75
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 11)))  # the batch before the outage is committed


def test_a_connection_refused_is_retried_then_transient(lake, serve):
    api = serve(records=3)
    lk = lake({"recs": pipeline(api, retries={**FAST_RETRIES, "attempts": 2})})
    api.stop()
    with pytest.raises(TransientError, match="ConnectError"):
        lk.run("recs")


def test_other_4xx_is_terminal_with_the_url_and_the_body(lake, serve):
    api = serve(records=3)
    lk = lake({"recs": pipeline(api, path="/nothing-here")})
    with pytest.raises(ConfigError) as e:
        lk.run("recs")
    text = str(e.value)
    assert "/nothing-here" in text and "404" in text and "no resource /nothing-here" in text
    assert api.requests["/nothing-here"] == 1  # never retried


def test_malformed_pages_and_records_are_quarantined_with_their_coordinates(lake, serve):
    api = serve(records=60, pagination="page", page_size=10, faults={2: "truncated", 4: "html", 5: "wrong_types"})
    lk = lake({"recs": pipeline(api, batch_size=25)})
    res = lk.run("recs")
    assert res.conserved
    # 4 good pages (one with a bad record) + 2 malformed pages, each one record in.
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (42, 39, 3)
    q = {row["source"].rsplit(" page ", 1)[1]: row for row in lk.rows("raw.records__quarantine", "source")}
    assert sorted(q) == ["2", "4", "5 record 0"]
    assert "page=2" in q["2"]["source"] and "not valid JSON" in q["2"]["reason"]
    assert q["4"]["raw"].startswith("<!DOCTYPE html>") and "text/html" in q["4"]["reason"]
    assert "'12abc'" in q["5 record 0"]["reason"] and json.loads(q["5 record 0"]["raw"])["id"] == "12abc"
    lost = set(range(11, 21)) | set(range(31, 42))  # pages 2 and 4, and page 5's first record
    assert_each_once(lk.rows("raw.records", "id"), sorted(set(range(1, 61)) - lost))
    assert api.requests["/records"] == 2 + 2 + 5  # each malformed page asked twice (malformed_attempts)
    assert lk.run("recs").batches == []  # nothing is quarantined twice


def test_an_error_object_and_a_record_that_is_not_an_object_are_quarantined(lake, serve):
    api = serve(records=30, pagination="offset", page_size=10, faults={1: "not_object", 2: "error_json"})
    lk = lake({"recs": pipeline(api, batch_size=100)})
    res = lk.run("recs")
    assert res.conserved and (res.rows_in, res.rows_committed, res.rows_quarantined) == (21, 19, 2)
    q = {row["source"].rsplit(" page ", 1)[1]: row for row in lk.rows("raw.records__quarantine", "source")}
    assert sorted(q) == ["1 record 0", "2"]
    assert q["1 record 0"]["raw"] == '"just a string"' and "JSON object is expected" in q["1 record 0"]["reason"]
    assert "no record list at data.items" in q["2"]["reason"] and json.loads(q["2"]["raw"])["error"] == "internal"
    assert_each_once(lk.rows("raw.records", "id"), [*range(2, 11), *range(21, 31)])


def test_a_malformed_page_that_holds_the_next_cursor_stops_the_run(lake, serve):
    api = serve(records=40, pagination="cursor", page_size=10, faults={3: "html"})
    lk = lake({"recs": pipeline(api, batch_size=10)})
    with pytest.raises(SourceError, match="page 3 .* cannot be read"):
        lk.run("recs")
    assert_each_once(lk.rows("raw.records", "id"), list(range(1, 21)))


# ------------------------------------------------------------------ incremental cursor


def test_incremental_cursor_with_ties_loads_new_and_updated_records_once(lake, serve):
    # Four records share each updated_at; batches of 7 end inside runs of ties.
    api = serve(records=30, pagination="page", page_size=7, ties=4)
    lk = lake({"recs": pipeline(api, batch_size=7, pagination={"type": "page", "size": 7})})
    first = lk.run("recs", max_batches=2)
    assert first.rows_committed == 14
    position = read_position(lk.table("raw.records"), "recs")
    last = position["cursor"]
    assert len(position["boundary"]) == 2  # records 13 and 14 of the tie 13..16
    # A late record at the last committed value, two updated records, two new ones.
    late = api.add(1, at=3)
    assert api.expected()[late[0]]["updated_at"] == last == stamp(3)
    api.update([2, 20], name="changed")
    new = api.add(2)
    res = lk.run("recs")
    assert res.rows_committed == (30 - 14) + 1 + 2 + 1  # 15..30, the late one, the new ones, and 2 again (20 was not loaded yet)
    rows = lk.rows("raw.records", "id", "updated_at")
    versions = Counter((r["id"], r["updated_at"]) for r in rows)
    assert max(versions.values()) == 1
    assert Counter(r["id"] for r in rows)[2] == 2  # the old version and the updated one (append mode)
    assert {r["id"] for r in rows} == set(range(1, 31)) | set(late) | set(new)
    assert lk.run("recs").batches == []


def test_initial_cursor_skips_older_records(lake, serve):
    api = serve(records=30, pagination="page", page_size=10, ties=3)
    body = pipeline(api)
    body["source"]["cursor"]["initial"] = stamp(5)
    lk = lake({"recs": body})
    assert lk.run("recs").rows_committed == 15
    assert_each_once(lk.rows("raw.records", "id"), list(range(16, 31)))


def test_a_misspelt_cursor_field_is_refused(lake, serve):
    api = serve(records=10, pagination="page", page_size=10)
    body = pipeline(api)
    body["source"]["cursor"]["field"] = "updated"
    lk = lake({"recs": body})
    with pytest.raises(ConfigError, match=r"cursor.field: no record of page 1 .* has a field 'updated' \(its first has amount, customer"):
        lk.run("recs")


def test_records_out_of_cursor_order_are_refused_naming_the_page_and_value(lake, serve):
    # The cursor on id while the API sorts by updated_at: record 2, updated, comes last, alone on page 4.
    api = serve(records=31, pagination="page", page_size=10)
    api.update([2], name="changed")
    body = pipeline(api, batch_size=10)
    body["source"]["cursor"] = {"field": "id", "param": "since"}
    lk = lake({"recs": body})
    with pytest.raises(SourceError, match=r"page 4 .* has id=2 after 31: the API does not return records in ascending id order"):
        lk.run("recs")
    assert_each_once(lk.rows("raw.records", "id"), [1, *range(3, 32)])  # the batches before page 4
    # Within a page: names are random text.
    body["source"]["cursor"] = {"field": "name", "param": "since"}
    body["target"] = {"table": "raw.by_name"}
    lk = lake({"names": body})
    with pytest.raises(SourceError, match=r"page 1 .* has name='item-\d+' after 'item-\d+'"):
        lk.run("names")


def test_merge_with_deleted_flags(lake, serve):
    api = serve(records=20, pagination="page", page_size=5)
    target = {"table": "raw.records", "mode": "merge", "keys": ["id"], "delete_column": "deleted"}
    lk = lake({"recs": pipeline(api, target)})
    lk.run("recs")
    api.update([3, 4], deleted=True)
    api.update([5], name="renamed")
    lk.run("recs")
    rows = lk.rows("raw.records", "id")
    assert [r["id"] for r in rows] == [i for i in range(1, 21) if i not in (3, 4)]
    assert next(r for r in rows if r["id"] == 5)["name"] == "renamed"


# ------------------------------------------------------------------ secrets


def test_no_secret_in_logs_errors_quarantine_or_table_metadata(lake, serve, monkeypatch, caplog, tmp_path):
    canary = "k3y-canary-9d4a"
    api = serve(records=30, pagination="page", page_size=10, auth="api_key", faults={2: "wrong_types", 3: "503x1"}, api_key=canary)
    monkeypatch.setenv("API_TOKEN", canary)
    auth = {"type": "api_key", "key": "${env:API_TOKEN}", "name": "api_key", "in": "query"}
    lk = lake({"recs": pipeline(api, auth=auth, batch_size=10)})
    caplog.set_level(logging.DEBUG)
    res = lk.run("recs")
    assert res.rows_quarantined == 1
    q = lk.rows("raw.records__quarantine")
    assert "api_key=***" in q[0]["source"]
    monkeypatch.setenv("API_TOKEN", canary + "x")  # a key the server refuses: an error naming the URL
    bad = lake({"recs": pipeline(api, auth=auth, batch_size=10)})
    with pytest.raises(ConfigError) as e:
        bad.run("recs")
    places = {
        "logs": caplog.text,
        "error": str(e.value),
        "result": repr(res),
        "quarantine": json.dumps(q, default=str),
    }
    for f in (lk.root).rglob("*"):
        if f.is_file() and f.suffix in (".json", ".avro", ".parquet", ".db", ".yaml", ".jsonl"):
            places[str(f)] = f.read_bytes().decode("latin-1")
    leaks = [where for where, text in places.items() if canary in text]
    assert leaks == []
    assert "api_key=***" in str(e.value)


def test_a_redirect_to_another_host_does_not_carry_the_api_key(lake, serve, monkeypatch):
    api = serve(auth="api_key")
    other = serve()  # another origin (another port)
    monkeypatch.setenv("API_TOKEN", api.settings.api_key)
    # /moved on the API redirects to /headers on the other server, which answers the headers it got.
    body = pipeline(api, cursor=False, path="/moved", params={"to": f"{other.url}/headers"}, pagination=None, records="data.items")
    body["source"]["auth"] = {"type": "api_key", "key": "${env:API_TOKEN}", "name": "X-API-Key"}
    body["source"]["columns"] = {"id": "long"}
    body["target"] = {"table": "raw.records", "mode": "overwrite"}
    lk = lake({"recs": body})
    assert lk.run("recs").rows_committed == 1
    (row,) = lk.rows("raw.records")
    got = {k.lower() for k in json.loads(row["headers"])}
    assert "x-api-key" not in got and "authorization" not in got
    # The same redirect within the API's own origin keeps the key (it reaches /headers there).
    body["source"]["params"] = {"to": f"{api.url}/headers"}
    same = lake({"recs": body})
    same.run("recs")
    (row,) = same.rows("raw.records")
    assert "x-api-key" in {k.lower() for k in json.loads(row["headers"])}


def test_an_api_key_written_in_the_file_is_redacted_too(lake, serve):
    api = serve(records=12, pagination="page", page_size=10, auth="api_key", api_key="literal-canary-3e7f", faults={1: "wrong_types"})
    auth = {"type": "api_key", "key": "literal-canary-3e7f", "name": "api_key", "in": "query"}
    lk = lake({"recs": pipeline(api, auth=auth)})
    assert lk.run("recs").rows_quarantined == 1
    (q,) = lk.rows("raw.records__quarantine")
    assert "api_key=***" in q["source"] and "literal-canary" not in q["source"]


def test_no_oauth2_secret_or_token_in_logs_or_table_metadata(lake, serve, monkeypatch, caplog):
    api = serve(records=20, pagination="page", page_size=5, auth="oauth2", token_ttl=0.3, delay=0.1, faults={2: "wrong_types"})
    monkeypatch.setenv("CLIENT_SECRET", api.settings.client_secret)
    auth = {"type": "oauth2_client_credentials", "token_url": f"{api.url}/oauth/token", "client_id": "icefield", "client_secret": "${env:CLIENT_SECRET}"}
    lk = lake({"recs": pipeline(api, auth=auth, batch_size=5, pagination={"type": "page", "size": 5})})
    caplog.set_level(logging.DEBUG)
    res = lk.run("recs")
    assert res.rows_committed == 19 and api.tokens_issued >= 2
    secrets = [api.settings.client_secret, *api.tokens]
    places = {"logs": caplog.text, "result": repr(res), "quarantine": json.dumps(lk.rows("raw.records__quarantine"), default=str)}
    for f in lk.root.rglob("*"):
        if f.is_file():
            places[str(f)] = f.read_bytes().decode("latin-1")
    assert [(where, s) for where, text in places.items() for s in secrets if s in text] == []


# ------------------------------------------------------------------ parsing


def test_link_headers_retry_after_and_json_paths():
    from icefield.ingest.http import json_path, next_link, retry_after

    header = '<https://api.x/items?page=1>; rel="prev", <https://api.x/items?page=3>; rel="next last", <https://api.x/items?page=9>; rel=last'
    assert next_link(header) == "https://api.x/items?page=3"
    assert next_link('<https://api.x/items?page=9>; rel="last"') is None
    assert next_link(None) is None
    assert retry_after("2") == 2.0 and retry_after("0.5") == 0.5 and retry_after("soon") is None
    assert (retry_after("Wed, 21 Oct 2099 07:28:00 GMT") or 0) > 50
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    body = {"data": {"items": [{"id": 1}], "meta": [{"next": "t"}]}}
    assert json_path(body, "data.items") == [{"id": 1}]
    assert json_path(body, "data.meta.0.next") == "t"
    assert json_path(body, "data.missing.x") is None
    assert json_path(body, "") is body


def test_pages_decode_exactly_and_refuse_what_is_not_json():
    from icefield.ingest.http import _loads

    big = 2**64 * 12345 + 1  # past 64 bits: a float would lose its last digits
    assert _loads(b'{"a": %d, "b": -%d, "c": [1.5, "x"]}' % (big, big)) == {"a": big, "b": -big, "c": [1.5, "x"]}
    assert _loads(b'{"id": 18446744073709551615, "s": "\\ud800"}') == {"id": 2**64 - 1, "s": "\ud800"}
    assert _loads('{"t": "caf\u00e9"}'.encode("utf-16")) == {"t": "caf\u00e9"}
    for text in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1', b"<html>"):
        with pytest.raises(ValueError):
            _loads(text)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"pagination": {"type": "cursor"}}, "cursor_path"),
        ({"pagination": {"type": "page"}}, "'size'"),
        ({"auth": {"type": "bearer"}}, "'token'"),
        ({"base_url": "ftp://x"}, "http:// or https://"),
        ({"json": {"a": 1}}, "method: POST"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_spec_errors_name_the_key_and_the_fix(make_project, source, message):
    from icefield.config import load_project

    body = {"source": {"type": "http", "base_url": "http://127.0.0.1:1", **source}, "target": {"table": "raw.r", "mode": "overwrite"}}
    root: Path = make_project({"p": body})
    with pytest.raises(ConfigError, match=message):
        load_project(root, env={})


# ------------------------------------------------------------------ parent-child


def invoices_pipeline(api: FakeApi, **source: Any) -> dict[str, Any]:
    return {
        "source": {
            "type": "http",
            "base_url": api.url,
            "path": "/customers/{id}/invoices",
            "pagination": {"type": "page", "size": 2},
            "records": "data.items",
            "cursor": {"field": "updated_at", "param": "since"},
            "for_each": {"path": "/customers", "records": "data.items", "pagination": {"type": "page", "size": 2}, "fills": {"id": "id"}},
            "retries": FAST_RETRIES,
            **source,
        },
        "target": {"table": "raw.invoices"},
        "batch_size": 4,
    }


def test_for_each_parent_fills_the_child_path_and_keeps_its_key(lake, serve):
    api = serve(customers=5, invoices_per_customer=3, pagination="page")
    lk = lake({"inv": invoices_pipeline(api)})
    res = lk.run("inv")
    assert res.conserved and res.rows_committed == 15
    rows = lk.rows("raw.invoices", "invoice_id")
    assert [(r["parent_id"], r["invoice_id"]) for r in rows] == [(c, c * 1000 + k) for c in range(1, 6) for k in range(1, 4)]
    position = read_position(lk.table("raw.invoices"), "inv")
    assert sorted(position["parents"]) == [json.dumps({"id": str(c)}) for c in range(1, 6)]

    # Each parent's children are incremental by their own cursor: a new invoice of an old customer and the
    # invoices of a new customer load, nothing else does.
    added = [api.add_invoice(2), api.add_invoice(6), api.add_invoice(6)]
    again = lk.run("inv")
    assert again.rows_committed == 3
    rows = lk.rows("raw.invoices", "invoice_id")
    assert sorted(r["invoice_id"] for r in rows) == sorted([c * 1000 + k for c in range(1, 6) for k in range(1, 4)] + added)
    assert lk.run("inv").batches == []


def test_for_each_parent_columns_are_declared(lake, serve):
    api = serve(customers=2, invoices_per_customer=2, pagination="page")
    body = invoices_pipeline(api)
    body["source"]["for_each"]["parent_columns"] = {"customer_id": "id", "customer_name": "name"}
    lk = lake({"inv": body})
    lk.run("inv")
    rows = lk.rows("raw.invoices", "invoice_id")
    assert [(r["customer_id"], r["customer_name"]) for r in rows] == [(1, "customer 1")] * 2 + [(2, "customer 2")] * 2
    assert "parent_id" not in rows[0]


def test_for_each_fields_must_match_the_path(make_project):
    from icefield.config import load_project

    src = {"type": "http", "base_url": "http://127.0.0.1:1", "path": "/customers/{id}/invoices"}
    root = make_project({"p": {"source": src, "target": {"table": "raw.r", "mode": "overwrite"}}})
    with pytest.raises(ConfigError, match=r"\{id\}.*for_each"):
        load_project(root, env={})
    src2 = {**src, "for_each": {"path": "/customers", "fills": {"customer": "id"}}}
    root = make_project({"p": {"source": src2, "target": {"table": "raw.r", "mode": "overwrite"}}})
    with pytest.raises(ConfigError, match="fills"):
        load_project(root, env={})
