"""A small fake REST API on 127.0.0.1, for tests and the demo: the shapes and faults of real SaaS APIs.

:class:`FakeApi` serves ``GET /records`` (and ``POST /search`` with a JSON body ``{"since": ...}``): a list
of records (``id``, ``updated_at``, ``name``, ``amount``, a nested ``customer`` object, ``tags``, a
``deleted`` flag), ordered by ``updated_at`` then ``id``, filtered by ``since=`` (inclusive) and paginated
in one of the styles real APIs use (:class:`ApiSettings.pagination`):

- ``page``: ``?page=N&per_page=K`` (pages from 1), body ``{"data": {"items": [...]}}``;
- ``offset``: ``?offset=N&limit=K``, same body;
- ``cursor``: ``?cursor=TOKEN&limit=K``, body ``{"data": {"items": [...]}, "meta": {"next_cursor": TOKEN|null}}``;
- ``link``: ``?page=N&per_page=K``, a bare JSON list, the next page in an RFC 8288 ``Link`` header (``rel="next"``);
- ``next_url``: body ``{"results": [...], "next": "http://.../records?...&page=N" | null}``.

``GET /customers`` lists the customers and ``GET /customers/{id}/invoices`` a customer's invoices (parent and
child resources). ``POST /oauth/token`` is an OAuth2 client-credentials token endpoint whose tokens expire
after ``token_ttl`` seconds. Auth (``auth``): ``bearer``, ``basic``, ``api_key`` (header ``X-API-Key`` or
query ``api_key``) or ``oauth2``; a wrong or expired credential answers 401.

Faults: a rate limit (``rate_limit`` requests per ``rate_window`` seconds, then 429 with ``Retry-After``),
and per-page faults keyed by the number of the page in its listing (``faults={3: "truncated"}``):
``"503"``/``"503xN"`` (the first N requests of that page answer 503, default 2), ``"truncated"`` (the
JSON cut in half, status 200), ``"html"`` (an HTML error page with status 200), ``"wrong_types"`` (the
page's first record has ``"id": "12abc"`` and ``"amount": "lots"``), ``"not_object"`` (its first record is a
JSON string), ``"error_json"`` (``{"error": ...}`` with status 200, no record list). Every fault but 503 is
permanent: that page answers it every time. The data is deterministic from ``seed``; tests change it
between runs with :meth:`FakeApi.add` and :meth:`FakeApi.update`.

Start with ``with FakeApi(ApiSettings(...)) as api: api.url``; it runs in a daemon thread of the caller.
"""

from __future__ import annotations

import base64
import bisect
import calendar
import json
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

PAGINATIONS = ("page", "offset", "cursor", "link", "next_url")
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z


def stamp(second: int) -> str:
    """The ISO 8601 UTC text of ``second`` seconds after 2026-01-01 (the form ``updated_at`` takes)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH + second))


def make_records(n: int, seed: int = 0, ties: int = 3) -> list[dict[str, Any]]:
    """``n`` records, ids 1..n; about ``ties`` records share each ``updated_at`` (so cursors meet ties)."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        cust = rng.randrange(1, 20)
        out.append(
            {
                "id": i,
                "updated_at": stamp((i - 1) // max(ties, 1)),
                "name": f"item-{rng.randrange(10**6):06d}",
                "amount": round(rng.uniform(1, 1000), 2),
                "customer": {"id": cust, "name": f"customer {cust}", "country": rng.choice(["FR", "DE", "NL", "US"])},
                "tags": rng.sample(["red", "green", "blue", "sale", "new"], k=rng.randrange(0, 3)),
                "deleted": False,
            }
        )
    return out


@dataclass
class ApiSettings:
    """How a :class:`FakeApi` answers (see the module docs)."""

    records: int = 100
    seed: int = 0
    ties: int = 3
    pagination: str = "page"
    page_size: int = 10
    auth: str | None = None  # bearer | basic | api_key | oauth2
    token: str = "t0ken-canary-5f1e"
    username: str = "reader"
    password: str = "pa55-canary-7c2b"
    api_key: str = "k3y-canary-9d4a"
    client_id: str = "icefield"
    client_secret: str = "s3cret-canary-1a8e"
    token_ttl: float = 3600.0
    token_valid: float | None = None  # seconds a token really works (default token_ttl): a revoked token
    rate_limit: int | None = None
    rate_window: float = 1.0
    retry_after: float = 1.0
    faults: dict[int, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds each data request takes
    customers: int = 5
    invoices_per_customer: int = 3


class FakeApi:
    """The server: start it as a context manager (or :meth:`start`/:meth:`stop`); ``url`` is its base URL.
    ``requests`` counts the requests by path, ``statuses`` the answers by status (tests read them)."""

    def __init__(self, settings: ApiSettings | None = None) -> None:
        self.settings = settings or ApiSettings()
        if self.settings.pagination not in PAGINATIONS:
            raise ValueError(f"pagination {self.settings.pagination!r}: use one of {PAGINATIONS}")
        self.lock = threading.Lock()
        self.records = make_records(self.settings.records, self.settings.seed, self.settings.ties)
        self._sorted: list[dict[str, Any]] | None = None
        self._keys: list[str] = []
        self.invoices: dict[int, list[dict[str, Any]]] = {c: [] for c in range(1, self.settings.customers + 1)}
        for c in self.invoices:
            for _ in range(self.settings.invoices_per_customer):
                self.add_invoice(c)
        self.tokens: dict[str, float] = {}  # OAuth2 access token -> expiry (monotonic)
        self.tokens_issued = 0
        self.requests: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.log: list[str] = []  # every request's path and query, in order
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status) of every answer, in order
        self._page_hits: dict[tuple[str, int], int] = {}
        self._window: list[float] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeApi:
        api = self

        class Handler(_Handler):
            owner = api

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the FakeApi first"
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ data changes between runs

    def add(self, n: int, at: int | None = None) -> list[int]:
        """Add ``n`` records after the last one (``updated_at`` at second ``at``, default just after the
        newest); returns their ids."""
        with self.lock:
            extra = make_records(len(self.records) + n, self.settings.seed + 1, self.settings.ties)[-n:]
            newest = max((r["updated_at"] for r in self.records), default=stamp(0))
            for r in extra:
                r["updated_at"] = stamp(at) if at is not None else _after(newest)
            self.records.extend(extra)
            self._sorted = None
            return [r["id"] for r in extra]

    def update(self, ids: list[int], at: int | None = None, **values: Any) -> None:
        """Give the records ``ids`` new ``values`` and a newer ``updated_at`` (second ``at``, default just after the newest)."""
        with self.lock:
            newest = max(r["updated_at"] for r in self.records)
            for r in self.records:
                if r["id"] in ids:
                    r.update(values)
                    r["updated_at"] = stamp(at) if at is not None else _after(newest)
            self._sorted = None

    def add_invoice(self, customer: int) -> int:
        """Add an invoice to ``customer`` (a new customer if it has none yet), ``updated_at`` one second after
        that customer's newest; returns its id."""
        with self.lock:
            mine = self.invoices.setdefault(customer, [])
            k = len(mine) + 1
            mine.append({"invoice_id": customer * 1000 + k, "total": 10.0 * k + customer, "updated_at": stamp(k)})
            return customer * 1000 + k

    def expected(self) -> dict[int, dict[str, Any]]:
        """The records by id, as the API holds them now."""
        with self.lock:
            return {r["id"]: dict(r) for r in self.records}

    # ------------------------------------------------------------------ answers

    def _listing(self, since: str | None) -> list[dict[str, Any]]:
        with self.lock:
            # Sorted once per change of the data (add/update clear it), not per request: a bench asks for 10k pages.
            if self._sorted is None:
                self._sorted = sorted(self.records, key=lambda r: (r["updated_at"], r["id"]))
                self._keys = [r["updated_at"] for r in self._sorted]
            rows, keys = self._sorted, self._keys
        return rows if since is None else rows[bisect.bisect_left(keys, since) :]

    def _rate_limited(self) -> bool:
        s = self.settings
        if s.rate_limit is None:
            return False
        now = time.monotonic()
        with self.lock:
            self._window = [t for t in self._window if now - t < s.rate_window]
            if len(self._window) >= s.rate_limit:
                return True
            self._window.append(now)
        return False

    def _fault(self, listing: str, page: int) -> str | None:
        fault = self.settings.faults.get(page)
        if fault is None:
            return None
        if fault.startswith("503"):
            burst = int(fault.split("x", 1)[1]) if "x" in fault else 2
            with self.lock:
                hits = self._page_hits.get((listing, page), 0)
                self._page_hits[(listing, page)] = hits + 1
            return "503" if hits < burst else None
        return fault

    def _authorized(self, headers: Any, query: dict[str, str]) -> bool:
        s = self.settings
        got = headers.get("Authorization", "")
        if s.auth is None:
            return True
        if s.auth == "bearer":
            return bool(got == f"Bearer {s.token}")
        if s.auth == "basic":
            want = base64.b64encode(f"{s.username}:{s.password}".encode()).decode()
            return bool(got == f"Basic {want}")
        if s.auth == "api_key":
            return headers.get("X-API-Key") == s.api_key or query.get("api_key") == s.api_key
        if s.auth == "oauth2":
            token = got.removeprefix("Bearer ")
            with self.lock:
                expiry = self.tokens.get(token)
            return expiry is not None and time.monotonic() < expiry
        return False

    def _issue_token(self, form: dict[str, str], headers: Any) -> tuple[int, dict[str, Any]]:
        s = self.settings
        cid, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials" or cid != s.client_id or secret != s.client_secret:
            return 401, {"error": "invalid_client"}
        token = "at-" + secrets.token_hex(12)
        with self.lock:
            self.tokens[token] = time.monotonic() + (s.token_valid if s.token_valid is not None else s.token_ttl)
            self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": s.token_ttl}

    def page(self, path: str, query: dict[str, str], since: str | None) -> tuple[int, dict[str, str], bytes]:
        """The answer to a data request: status, headers, body."""
        s = self.settings
        if path == "/customers":
            with self.lock:
                rows: list[dict[str, Any]] = [{"id": c, "name": f"customer {c}"} for c in sorted(self.invoices)]
        elif path.startswith("/customers/") and path.endswith("/invoices"):
            with self.lock:
                mine = list(self.invoices.get(_int(path.split("/")[2], 0), []))
            rows = sorted((r for r in mine if since is None or r["updated_at"] >= since), key=lambda r: (r["updated_at"], r["invoice_id"]))
        else:
            rows = self._listing(since)
        size = _int(query.get("per_page") or query.get("limit"), s.page_size)
        style = s.pagination
        if style in ("page", "link", "next_url"):
            number = _int(query.get("page"), 1)
            start = (number - 1) * size
        elif style == "offset":
            start = _int(query.get("offset"), 0)
            number = start // size + 1
        else:
            token = query.get("cursor")
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
            number = start // size + 1
        fault = self._fault(path, number)
        if fault == "503":
            return 503, {"Content-Type": "text/plain"}, b"service unavailable, try again"
        if fault == "html":
            return 200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html><body><h1>Maintenance</h1></body></html>"
        chunk = [dict(r) for r in rows[start : start + size]]
        if fault == "wrong_types" and chunk:
            chunk[0]["id"] = "12abc"
            chunk[0]["amount"] = "lots"
        if fault == "error_json":
            return 200, {"Content-Type": "application/json"}, b'{"error": "internal", "message": "try later"}'
        items: list[Any] = chunk
        if fault == "not_object" and chunk:
            items = ["just a string", *chunk[1:]]
        more = start + size < len(rows)
        headers = {"Content-Type": "application/json"}
        base = {k: v for k, v in query.items() if k not in ("page", "offset", "cursor")}
        body: Any
        if style in ("page", "offset"):
            body = {"data": {"items": items}, "total": len(rows)}
        elif style == "cursor":
            nxt = base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else None
            body = {"data": {"items": items}, "meta": {"next_cursor": nxt}}
        elif style == "link":
            body = items
            if more:
                headers["Link"] = f'<{self.url}{path}?{urlencode({**base, "page": number + 1})}>; rel="next"'
        else:
            body = {"results": items, "next": f"{self.url}{path}?{urlencode({**base, 'page': number + 1})}" if more else None}
        data = json.dumps(body).encode()
        if fault == "truncated":
            data = data[: len(data) // 2]
        return 200, headers, data


def _after(newest: str) -> str:
    return stamp(calendar.timegm(time.strptime(newest, "%Y-%m-%dT%H:%M:%SZ")) - EPOCH + 1)


def _int(v: str | None, default: int) -> int:
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client killed mid-request (the reliability tests SIGKILL runs) is no server error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeApi
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, a keep-alive client waits for the
    # delayed ACK (~40 ms) on every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the test's output stays clean; FakeApi.log keeps the requests

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        with self.owner.lock:
            self.owner.statuses[status] = self.owner.statuses.get(status, 0) + 1
            self.owner.answers.append((time.monotonic(), status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode())

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self, method: str) -> None:
        api = self.owner
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with api.lock:
            api.requests[parts.path] = api.requests.get(parts.path, 0) + 1
            api.log.append(self.path)
        body = self._body() if method == "POST" else b""
        if parts.path == "/oauth/token" and method == "POST":
            form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            status, answer = api._issue_token(form, self.headers)
            self._json(status, answer)
            return
        if api._rate_limited():
            self._json(429, {"error": "rate limited"}, {"Retry-After": f"{api.settings.retry_after:g}"})
            return
        if not api._authorized(self.headers, query):
            self._json(401, {"error": "unauthorized", "detail": "missing or invalid credentials"})
            return
        if api.settings.delay:
            time.sleep(api.settings.delay)
        if parts.path == "/moved":  # a redirect to ``?to=<url>`` (tests: what a redirect carries)
            self._send(302, {"Location": query.get("to", "/records")}, b"")
            return
        if parts.path == "/headers":  # the request's headers, as a one-record page
            self._json(200, {"data": {"items": [{"id": 1, "headers": dict(self.headers.items())}]}})
            return
        since = query.get("since")
        if method == "POST":
            if parts.path != "/search":
                self._json(404, {"error": f"no POST {parts.path}"})
                return
            try:
                since = json.loads(body or b"{}").get("since")
            except ValueError:
                self._json(400, {"error": "the body is not JSON"})
                return
        elif parts.path not in ("/records", "/customers") and not (
            parts.path.startswith("/customers/") and parts.path.endswith("/invoices")
        ):
            self._json(404, {"error": f"no resource {parts.path}"})
            return
        status, headers, data = api.page(parts.path, query, since)
        self._send(status, headers, data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._serve("POST")
