"""The ``http`` source: the records of a REST API endpoint (JSON), walked page by page.

Requests go through httpx, with the declared auth (bearer, basic, API key, OAuth2 client credentials whose
token is fetched again when it expires), at most ``rate_limit.requests_per_second``, and retried on 429
(waiting its ``Retry-After``), 5xx and connection errors with exponential backoff and jitter, bounded: then
a :class:`TransientError`. Any other 4xx is terminal; the error names the URL (secrets removed) and the
first lines of the answer.

Without a ``cursor`` it is a full load: every page is one batch, identified by a hash of its records, so a
rerun over unchanged data commits nothing. With a ``cursor`` (``field`` sent back as ``param``, inclusive)
it is incremental: the API must return records in ascending cursor order; every ``batch_size`` records (at a
page's end) make a batch whose position is the last cursor value and the fingerprints of the records
already loaded at that value, so records sharing it (ties) load exactly once across batches, runs and
kills. A rerun asks for ``since=<last value>`` and walks the pages from there: no page token is ever kept.

A record that cannot be typed (``columns:``, strict as for files) and a page that is not JSON or has no
record list (an HTML error page with status 200, truncated JSON), once ``retries.malformed_attempts`` asks
gave the same, go to the quarantine with their URL, page number and index.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield.config.models import HttpPaginationConfig, HttpSourceConfig
from icefield.config.secrets import redact, register_secret, resolve
from icefield.errors import ConfigError, SourceError, TransientError
from icefield.ingest import LazyStrings, Rejected, Source, SourceBatch, SourceCapabilities
from icefield.ingest.coerce import parse_type, records_to_table

if TYPE_CHECKING:
    import httpx

    from icefield.config import PipelineConfig, Project

log = logging.getLogger(__name__)

_BODY_LINES = 5
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def json_path(body: Any, path: str) -> Any:
    """The value at the dotted ``path`` of ``body`` (``""``: ``body`` itself; a number steps into a list);
    None when a step is missing."""
    value = body
    for step in [p for p in path.split(".") if p]:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def next_link(header: str | None) -> str | None:
    """The URL of the ``rel="next"`` link of an RFC 8288 ``Link`` header, or None."""
    for m in _LINK.finditer(header or ""):
        for param in m.group(2).split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return m.group(1).strip()
    return None


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def record_fingerprint(record: Any) -> str:
    """A record's fingerprint: its whole content (a record updated again within the cursor's resolution
    keeps the cursor value already loaded, and only its content tells the new version apart)."""
    return hashlib.sha1(_dumps(record, sort=True)).hexdigest()[:20]


def _dumps(value: Any, sort: bool = False) -> bytes:
    """``value`` as compact JSON (orjson; the standard library for what it refuses, an integer past 64 bits)."""
    import orjson

    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0)
    except TypeError:
        return json.dumps(value, sort_keys=sort, ensure_ascii=False, separators=(",", ":"), default=str).encode()


# Bytes as digits (b"0") and the rest (b" "): a run of 19 digits in a body is a number orjson may not keep exact.
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def _loads(data: bytes) -> Any:
    """Decoded JSON; NaN and Infinity are refused. orjson decodes (3x the standard library's speed) unless the
    body holds a run of 19 digits or more: orjson reads an integer past 64 bits as a float, silently losing
    its digits, so such a body, and one orjson refuses, is decoded by the standard library, whose answer
    (or error) is the one given."""
    import orjson

    if _LONG_RUN not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the standard library decides: it reads what orjson refuses (UTF-16, a lone surrogate, 1e400)
    return json.loads(data, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass
class Page:
    """One answer of the endpoint: its number (1 = first), the URL asked (secrets removed), and its
    records, or ``malformed`` (the reason) and ``text`` (the body) when it had no record list."""

    number: int
    url: str
    records: list[Any] = field(default_factory=list)
    malformed: str | None = None
    text: str = ""


@dataclass
class _Pending:
    """Records read since the last batch. Parallel lists over the JSON object records: each as it lands (a
    parent's columns included), as the API sent it (its fingerprint is of that), its cursor value (cursor
    sources only), its page and its index there (two lists: no tuple is made per record; the coordinates
    text is made only for a record looked at, a quarantined one). ``units``: the unit of the records from
    each index on (a unit's records are consecutive). Records that are not objects, and malformed pages,
    are in ``rejected``."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    units: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.rejected)


class HttpSource(Source):
    capabilities = SourceCapabilities(incremental=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, HttpSourceConfig)
        self.cfg = pipeline.source
        self.pipeline = pipeline.name
        self.keys = list(pipeline.target.keys)
        self.batch_size = batch_size
        self.where = f"{project.root / 'pipelines'}/{pipeline.name}.yaml: source"
        self.root = project.root
        self.declared: dict[str, pa.DataType] | None = None
        if self.cfg.columns:
            self.declared = {}
            for k, v in self.cfg.columns.items():
                try:
                    self.declared[k] = parse_type(v, allow_json=True)
                except ValueError as e:
                    raise ConfigError(f"{self.where}.columns.{k}: {e} (or json: the value as JSON text)") from e
        if self.cfg.cursor is None and pipeline.target.mode == "append":
            raise ConfigError(
                f"pipeline {pipeline.name!r}: an http source without 'cursor' is a full load, and mode 'append' "
                "would add every record again whenever one changes; set source.cursor (e.g. {field: updated_at, "
                "param: since}) for incremental loads, or use target.mode 'overwrite' or 'merge'"
            )
        self._client: httpx.Client | None = None
        self._token: str | None = None
        self._token_expiry = 0.0
        self._next_request = 0.0
        self._schema: pa.Schema | None = None
        self._learned: dict[str, pa.DataType] = {}
        self._rng = random.Random()

    # ------------------------------------------------------------------ requests

    def _resolve(self, value: str, key: str) -> str:
        return resolve(value, where=f"{self.where}.{key}", base_dir=self.root)

    def _secret(self, value: str, key: str) -> str:
        """An auth value, resolved and registered for redaction even when written as it is in the file."""
        resolved = self._resolve(value, key)
        register_secret(resolved)
        return resolved

    def client(self) -> httpx.Client:
        if self._client is None:
            import httpx

            _redact_httpx_logs()
            self._client = httpx.Client(
                timeout=self.cfg.retries.timeout_seconds, follow_redirects=True, event_hooks={"request": [self._off_origin]}
            )
            self._asked: tuple[str, str, int | None] | None = None  # the origin of the URL being asked for
            self._secret_headers: set[str] = set()
            self._base = self._resolve(self.cfg.base_url, "base_url").rstrip("/")
            self._headers = {k: self._resolve(v, f"headers.{k}") for k, v in self.cfg.headers.items()}
            self._params = {k: self._resolve(v, f"params.{k}") if isinstance(v, str) else v for k, v in self.cfg.params.items()}
            self._auth_query: dict[str, str] = {}
            auth = self.cfg.auth
            if auth is not None:
                if auth.type == "bearer":
                    self._headers["Authorization"] = "Bearer " + self._secret(auth.token or "", "auth.token")
                elif auth.type == "basic":
                    import base64

                    user = self._resolve(auth.username or "", "auth.username")
                    password = self._secret(auth.password or "", "auth.password")
                    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
                    register_secret(encoded)
                    self._headers["Authorization"] = f"Basic {encoded}"
                elif auth.type == "api_key":
                    key = self._secret(auth.key or "", "auth.key")
                    if auth.location == "query":
                        self._auth_query[auth.name or "api_key"] = key
                    else:
                        self._headers[auth.name or "X-API-Key"] = key
                        self._secret_headers.add(auth.name or "X-API-Key")
        return self._client

    def _off_origin(self, request: httpx.Request) -> None:
        """Drop an API key header from a request redirected to another origin (httpx drops only
        ``Authorization`` there): a redirect must not hand the key to another host."""
        origin = (request.url.scheme, request.url.host, request.url.port)
        if self._asked is not None and origin != self._asked:
            for name in self._secret_headers:
                request.headers.pop(name, None)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _oauth_token(self, force: bool = False) -> str:
        """The OAuth2 access token, fetched from ``auth.token_url`` when there is none, it expires within a
        tenth of its life (at most 30 s), or ``force`` (the API answered 401)."""
        now = time.monotonic()
        if self._token is not None and not force and now < self._token_expiry:
            return self._token
        import httpx

        auth = self.cfg.auth
        assert auth is not None
        url = self._resolve(auth.token_url or "", "auth.token_url")
        form = {
            "grant_type": "client_credentials",
            "client_id": self._resolve(auth.client_id or "", "auth.client_id"),
            "client_secret": self._secret(auth.client_secret or "", "auth.client_secret"),
        }
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        try:
            resp = self.client().post(url, data=form)
        except httpx.TransportError as e:
            raise TransientError(f"{self.where}.auth.token_url: cannot reach {redact(url)} ({type(e).__name__}: {redact(str(e))}); retry later") from e
        if resp.status_code != 200:
            raise ConfigError(
                f"{self.where}.auth: the token endpoint {redact(url)} answered {resp.status_code} to the client "
                f"credentials: {_first_lines(resp.text)}; fix auth.client_id / auth.client_secret (or the secrets they reference)"
            )
        try:
            answer = resp.json()
            token = str(answer["access_token"])
            life = float(answer.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{self.where}.auth.token_url: {redact(url)} answered no access_token: {_first_lines(resp.text)}") from e
        register_secret(token)
        self._token = token
        self._token_expiry = now + life - min(30.0, life / 10)
        log.info("%s: fetched an OAuth2 token (valid %.0f s)", self.pipeline, life)
        return token

    def _wait_turn(self) -> None:
        if self.cfg.rate_limit is None:
            return
        now = time.monotonic()
        if self._next_request > now:
            time.sleep(self._next_request - now)
        self._next_request = max(now, self._next_request) + 1.0 / self.cfg.rate_limit.requests_per_second

    def _backoff(self, attempt: int) -> float:
        r = self.cfg.retries
        return float(min(r.max_backoff_seconds, r.backoff_seconds * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0))

    def _send(self, full: httpx.URL, shown: str, body: dict[str, Any] | None) -> httpx.Response:
        """One answer of the API for the URL ``full`` (``shown``: it with secrets removed; both built once by the
        caller, :func:`_full_url`) with a status below 400, after the retries (see the module docs)."""
        import httpx

        client = self.client()
        r = self.cfg.retries
        refreshed = False
        attempt = 0
        last = ""
        while True:
            attempt += 1
            self._wait_turn()
            headers = dict(self._headers)
            if self.cfg.auth is not None and self.cfg.auth.type == "oauth2_client_credentials":
                headers["Authorization"] = "Bearer " + self._oauth_token()
            self._asked = (full.scheme, full.host, full.port)
            try:
                resp = client.request(self.cfg.method, full, headers=headers, json=body)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {redact(str(e))}"
                wait = self._backoff(attempt)
            else:
                status = resp.status_code
                if status < 400:
                    return resp
                if status == 401 and self.cfg.auth is not None and self.cfg.auth.type == "oauth2_client_credentials" and not refreshed:
                    refreshed = True  # the token expired early (or was revoked): one fresh token, then it is the credentials
                    self._oauth_token(force=True)
                    attempt -= 1
                    continue
                if status == 429:
                    asked = retry_after(resp.headers.get("Retry-After"))
                    wait = min(asked, r.max_retry_after_seconds) if asked is not None else self._backoff(attempt)
                    last = f"429 Too Many Requests (Retry-After: {resp.headers.get('Retry-After')})"
                elif status >= 500:
                    wait = self._backoff(attempt)
                    last = f"{status} {resp.reason_phrase}"
                else:
                    fix = (
                        "fix source.auth (or the secrets it references)"
                        if status in (401, 403)
                        else "fix source.base_url, path, params or json"
                    )
                    cls = ConfigError if status in (401, 403, 404) else SourceError
                    raise cls(f"{self.where}: {self.cfg.method} {shown} answered {status} {resp.reason_phrase}: {_first_lines(resp.text)}; {fix}")
            if attempt >= r.attempts:
                raise TransientError(
                    f"{self.where}: {self.cfg.method} {shown} failed {attempt} times (last: {last}); the API is "
                    "unavailable or limiting requests: rerun later, or raise source.retries.attempts / lower source.rate_limit"
                )
            log.warning("%s: %s %s: %s; retry %d of %d in %.1f s", self.pipeline, self.cfg.method, shown, last, attempt, r.attempts - 1, wait)
            time.sleep(wait)

    # ------------------------------------------------------------------ pages

    def pages(self, since: Any = None, fills: dict[str, str] | None = None) -> Iterator[Page]:
        """The endpoint's pages, from the first (``since``: the cursor value to ask from; ``fills``: the values
        of the ``{name}`` fields of ``path`` and ``params``, a ``for_each`` parent's), in order."""
        self.client()
        cfg = self.cfg
        fills = fills or {}
        from urllib.parse import quote

        in_path = {k: quote(v, safe="") for k, v in fills.items()}
        url = self._base + ("/" + _fill(cfg.path, in_path).lstrip("/") if cfg.path else "")
        params: dict[str, Any] = {k: _fill(v, fills) if isinstance(v, str) else v for k, v in self._params.items()}
        body = dict(cfg.json_body) if cfg.json_body is not None else None
        if since is not None and cfg.cursor is not None:
            if cfg.cursor.location == "json":
                body = {**(body or {}), cfg.cursor.param: since}
            else:
                params[cfg.cursor.param] = since
        yield from self._walk(url, params, body, cfg.pagination, cfg.records)

    def parents(self) -> Iterator[dict[str, Any]]:
        """The records of the ``for_each`` parent endpoint, every page of it, in order (a page that cannot be
        read is an error: its children would be skipped without a trace)."""
        each = self.cfg.for_each
        assert each is not None
        self.client()
        url = self._base + "/" + each.path.lstrip("/")
        params = {k: self._resolve(v, f"for_each.params.{k}") if isinstance(v, str) else v for k, v in each.params.items()}
        for page in self._walk(url, params, None, each.pagination, each.records):
            if page.malformed is not None:
                raise SourceError(
                    f"{self.where}.for_each: page {page.number} of the parent endpoint ({page.url}) is {page.malformed}; "
                    "its children cannot be listed: fix for_each.records, or rerun when the API answers it"
                )
            for i, rec in enumerate(page.records):
                if not isinstance(rec, dict):
                    raise SourceError(f"{self.where}.for_each: record {i} of page {page.number} of {page.url} is not a JSON object: {rec!r:.100}")
                yield rec

    def _walk(
        self, url: str, params: dict[str, Any], body: dict[str, Any] | None, pg: HttpPaginationConfig | None, records: str
    ) -> Iterator[Page]:
        """The pages of ``url`` walked as ``pg`` says (see :class:`HttpPaginationConfig`)."""
        params = {**params, **self._auth_query}
        if pg is not None:
            if pg.size is not None:
                params[pg.size_name] = pg.size
            if pg.type == "page":
                params[pg.page_param] = pg.start
            elif pg.type == "offset":
                params[pg.offset_param] = 0
        number = 0
        while True:
            number += 1
            page, resp, answer = self._page(number, url, params, body, records)
            yield page
            if pg is None:
                return
            n = len(page.records)
            if page.malformed is None and n == 0:
                return
            if pg.type in ("page", "offset"):
                if page.malformed is None and pg.stop_on_short_page and pg.size is not None and n < pg.size:
                    return
                if pg.type == "page":
                    params[pg.page_param] = pg.start + number
                else:
                    params[pg.offset_param] = int(params[pg.offset_param]) + (n if page.malformed is None else pg.size or 0)
                continue
            if pg.type == "link":
                nxt = next_link(resp.headers.get("Link"))
            elif page.malformed is not None:
                raise SourceError(
                    f"{self.where}: page {number} ({page.url}) is malformed ({page.malformed}) and holds the next "
                    f"page's {'token' if pg.type == 'cursor' else 'URL'}, so the pages after it cannot be read; the "
                    "batches before it are committed: rerun when the API answers it again"
                )
            else:
                nxt = json_path(answer, (pg.cursor_path if pg.type == "cursor" else pg.next_url_path) or "")
            if nxt in (None, ""):
                return
            if pg.type == "cursor":
                params[pg.cursor_param] = nxt
            else:
                url = str(nxt)
                params = dict(self._auth_query)  # the next URL carries the other parameters

    def _page(
        self, number: int, url: str, params: dict[str, Any], body: dict[str, Any] | None, records_path: str
    ) -> tuple[Page, httpx.Response, Any]:
        """Page ``number``: asked again while malformed, up to ``retries.malformed_attempts`` times."""
        full, shown = _full_url(url, params)
        for attempt in range(1, self.cfg.retries.malformed_attempts + 1):
            resp = self._send(full, shown, body)
            answer, problem = self._decode(resp)
            records = json_path(answer, records_path) if problem is None else None
            if problem is None and not isinstance(records, list):
                problem = f"no record list at {records_path or 'the top'} of the body"
            if problem is None:
                assert isinstance(records, list)
                return Page(number, shown, records), resp, answer
            log.warning("%s: page %d (%s) is malformed: %s (ask %d of %d)", self.pipeline, number, shown, problem, attempt, self.cfg.retries.malformed_attempts)
        text = redact(resp.content.decode("utf-8", errors="backslashreplace"))
        return Page(number, shown, malformed=problem, text=text), resp, None

    @staticmethod
    def _decode(resp: httpx.Response) -> tuple[Any, str | None]:
        kind = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind and "json" not in kind:
            return None, f"not JSON (Content-Type {kind}, status {resp.status_code})"
        try:
            return _loads(resp.content), None
        except ValueError as e:
            return None, f"not valid JSON: {e}"

    # ------------------------------------------------------------------ batches

    def units(self) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """The requests to walk, each ``(unit key, fills, parent columns)``: one with no fills, or one per
        ``for_each`` parent record (its key: the fill values as JSON)."""
        each = self.cfg.for_each
        if each is None:
            yield "", {}, {}
            return
        for parent in self.parents():
            fills = {}
            for name, path in each.fills.items():
                value = json_path(parent, path)
                if value is None or isinstance(value, (dict, list)):
                    raise SourceError(
                        f"{self.where}.for_each.fills.{name}: the parent record {json.dumps(parent, default=str)[:200]} has "
                        f"{'no' if value is None else 'a non-scalar'} value at {path!r}; fix the field path"
                    )
                fills[name] = str(value).lower() if isinstance(value, bool) else str(value)
            yield json.dumps(fills, sort_keys=True), fills, {col: json_path(parent, path) for col, path in each.columns.items()}

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        self._schema = schema
        if self.cfg.cursor is None:
            yield from self._full(position)
            return
        # One cursor per unit: the position of a plain source is its unit's, of a for_each source by parent.
        nested = self.cfg.for_each is not None
        states: dict[str, dict[str, Any]] = dict((position or {}).get("parents", {})) if nested else {"": dict(position or {})}
        first = self._position(states) if position else None
        pending = _Pending()
        field_name = self.cfg.cursor.field
        for unit, fills, extra in self.units():
            state = states.get(unit, {})
            last = state.get("cursor", self.cfg.cursor.initial)
            boundary = set(state.get("boundary", []))
            top = last
            for page in self.pages(since=last, fills=fills):
                begin = len(pending.rows)
                objects = [r for r in page.records if isinstance(r, dict)]
                if objects and not any(field_name in r for r in objects):
                    # A misspelt field would leave the cursor where it is and the position growing by every record.
                    raise ConfigError(
                        f"{self.where}.cursor.field: no record of page {page.number} ({page.url}) has a field {field_name!r} "
                        f"(its first has {', '.join(sorted(objects[0]))}); fix the name"
                    )
                self._take(page, pending, unit, extra)
                values = [v for v in pending.values[begin:] if v is not None]
                if values:
                    top = self._ascending(page, values, top)
                if boundary:
                    # Records already loaded at the unit's last committed value come back (the cursor is inclusive):
                    # only those at that value can be in the boundary, so only they are fingerprinted.
                    at = [i for i in range(begin, len(pending.rows)) if pending.values[i] == last]
                    drop = {i for i in at if record_fingerprint(pending.sent[i]) in boundary}
                    if drop:
                        self._drop(pending, drop)
                if pending.size >= self.batch_size:
                    batch = self._batch(pending, states, first)
                    first = batch.position
                    pending = _Pending()
                    state = states.get(unit, {})
                    last, boundary = state.get("cursor", last), set(state.get("boundary", []))
                    yield batch
        if pending.size:
            yield self._batch(pending, states, first)

    def _ascending(self, page: Page, values: list[Any], top: Any) -> Any:
        """The last of a page's cursor ``values`` (nulls left out), once checked that none sorts before the one
        read before it (``top``: the newest so far). Sorting is the quick check (linear on a sorted list); the
        loop after it names the first value out of order."""
        try:
            if (top is None or not values[0] < top) and values == sorted(values):
                return values[-1]
        except TypeError:
            pass  # values of different kinds: the loop names them
        assert self.cfg.cursor is not None
        field_name = self.cfg.cursor.field
        for value in values:
            if top is not None and _before(value, top, self.where, field_name):
                raise SourceError(
                    f"{self.where}.cursor: page {page.number} ({page.url}) has {field_name}={value!r} after "
                    f"{top!r}: the API does not return records in ascending {field_name} order, so a cursor "
                    "would lose records; ask the API to sort by it (often a sort param), or drop source.cursor for a full load"
                )
            top = value
        return top

    def _position(self, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if self.cfg.for_each is None:
            return dict(states.get("", {}))
        return {"parents": {k: dict(v) for k, v in sorted(states.items())}}

    def _take(self, page: Page, pending: _Pending, unit: str = "", extra: dict[str, Any] | None = None) -> None:
        """Add ``page``'s records (with the parent's columns ``extra``) to ``pending`` (a record that is not a
        JSON object, or a malformed page, to its rejected). Whole lists at a time: this runs for every record."""
        if page.malformed is not None:
            pending.rejected.append(Rejected(page.text, f"{page.url} page {page.number}", "decode", f"decode: the page is {page.malformed}"))
            return
        objects: list[dict[str, Any]] = page.records
        index: range | list[int] = range(len(objects))
        if not all(isinstance(rec, dict) for rec in objects):
            objects, index = [], []
            for i, rec in enumerate(page.records):
                if isinstance(rec, dict):
                    objects.append(rec)
                    index.append(i)
                else:
                    pending.rejected.append(
                        Rejected(_dumps(rec).decode(), _coords(page, i), "decode", f"decode: a JSON object is expected, got {type(rec).__name__}")
                    )
        if not pending.units or pending.units[-1][0] != unit:
            pending.units.append((unit, len(pending.rows)))
        # The rows as they land (a parent's columns included): a quarantined one is replayed from its JSON.
        rows = [{**rec, **extra} for rec in objects] if extra else objects
        pending.rows.extend(rows)
        pending.sent.extend(objects)
        pending.pages.extend(repeat(page, len(objects)))
        pending.index.extend(index)
        if self.cfg.cursor is not None:
            field_name = self.cfg.cursor.field
            pending.values.extend([rec.get(field_name) for rec in rows])

    @staticmethod
    def _drop(pending: _Pending, drop: set[int]) -> None:
        keep = [i for i in range(len(pending.rows)) if i not in drop]
        pending.rows = [pending.rows[i] for i in keep]
        pending.sent = [pending.sent[i] for i in keep]
        pending.values = [pending.values[i] for i in keep]
        pending.pages = [pending.pages[i] for i in keep]
        pending.index = [pending.index[i] for i in keep]
        # ``drop`` holds records of the last page only: the units' start indexes before them stand.

    def _batch(self, pending: _Pending, states: dict[str, dict[str, Any]], first: dict[str, Any] | None) -> SourceBatch:
        """The batch of ``pending``; moves ``states`` past it: each unit's newest cursor value and the
        fingerprints of its records loaded at that value (the only records fingerprinted)."""
        values, n = pending.values, len(pending.rows)
        spans: dict[str, list[range]] = {}
        for k, (unit, start) in enumerate(pending.units):
            end = pending.units[k + 1][1] if k + 1 < len(pending.units) else n
            if end > start:
                spans.setdefault(unit, []).append(range(start, end))
        for unit, ranges in spans.items():
            state = states.get(unit, {})
            last = state.get("cursor", self.cfg.cursor.initial if self.cfg.cursor is not None else None)
            boundary = set(state.get("boundary", []))
            new_last = next((values[i] for r in reversed(ranges) for i in reversed(r) if values[i] is not None), last)
            at = {record_fingerprint(pending.sent[i]) for r in ranges for i in r if values[i] == new_last}
            boundary = (boundary | at) if new_last == last else at
            states[unit] = {"cursor": new_last, "boundary": sorted(boundary)}
        position = self._position(states)
        key = f"http:{json.dumps(first, sort_keys=True, default=str)}->{json.dumps(position, sort_keys=True, default=str)}"
        return self._typed(pending, position, key)

    def _full(self, position: dict[str, Any] | None) -> Iterator[SourceBatch]:
        pending = _Pending()
        for unit, fills, extra in self.units():
            for page in self.pages(fills=fills):
                self._take(page, pending, unit, extra)
        raw = [_dumps(rec).decode() for rec in pending.rows]
        digest = hashlib.sha256("\n".join(raw + [r.raw for r in pending.rejected]).encode()).hexdigest()[:32]
        previous = (position or {}).get("content")
        if previous == digest:
            return
        yield self._typed(pending, {"content": digest, "records": pending.size}, f"http-full:{previous}->{digest}", raw)

    def _typed(self, pending: _Pending, position: dict[str, Any], key: str, raw: list[str] | None = None) -> SourceBatch:
        """The batch of ``pending``'s rows typed; a row's raw text (``raw``, or its JSON made when asked for) and
        coordinates are made only for the rows looked at (quarantined)."""
        types: dict[str, pa.DataType] = {}
        if self._schema is not None:
            types.update({f.name: f.type for f in self._schema})
        types.update(self._learned)
        types.update(self.declared or {})
        rows, pages, index = pending.rows, pending.pages, pending.index
        table, bad = records_to_table(rows, types, self.declared or ())
        for f in table.schema:
            self._learned.setdefault(f.name, f.type)

        def raw_of(i: int) -> str:
            return raw[i] if raw is not None else _dumps(rows[i]).decode()

        def coords_of(i: int) -> str:
            return _coords(pages[i], index[i])

        rejected = list(pending.rejected)
        keep: list[int] | None = None
        if bad:
            keep = [i for i in range(table.num_rows) if i not in bad]
            for i in sorted(bad):
                rejected.append(Rejected(raw_of(i), coords_of(i), "decode" if bad[i].startswith("decode:") else "type", bad[i]))
            table = table.take(pa.array(keep, pa.int64()))
        return SourceBatch(
            data=table,
            position=position,
            key=key,
            raw=LazyStrings(table.num_rows, raw_of, keep),
            coords=LazyStrings(table.num_rows, coords_of, keep),
            rejected=rejected,
            coord_label=redact(self._base),
            coord_keys=self.keys,
            open_schema=True,
        )


def _coords(page: Page, index: int) -> str:
    """The source coordinates of record ``index`` of ``page``."""
    return f"{page.url} page {page.number} record {index}"


def _full_url(url: str, params: dict[str, Any]) -> tuple[httpx.URL, str]:
    """``url`` with ``params`` merged into its query, and that URL as shown (secrets removed). httpx replaces a
    URL's query by a request's ``params``: merged here, so a next link keeps its own."""
    import httpx

    full = httpx.URL(url).copy_merge_params(params)
    return full, redact(str(full))


def _before(value: Any, top: Any, where: str, name: str) -> bool:
    """Whether cursor ``value`` sorts before ``top`` (values of one JSON kind: numbers or text)."""
    try:
        return bool(value < top)
    except TypeError:
        raise SourceError(
            f"{where}.cursor: {name} values {top!r} and {value!r} are of different kinds and cannot be ordered; "
            "pick a field that is always a number or always text"
        ) from None


class _Redacting(logging.Filter):
    """Removes secrets from the records of a foreign logger: httpx logs every request's URL at INFO, and an
    API key may be one of its query parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def _redact_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _Redacting) for f in logger.filters):
        logger.addFilter(_Redacting())


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, fills: dict[str, str]) -> str:
    """``template`` with each ``{name}`` of ``fills`` replaced by its value (others left as written)."""
    return _FIELD.sub(lambda m: fills.get(m.group(1), m.group(0)), template)


def _first_lines(text: str) -> str:
    """The first lines of an answer's body (secrets removed), for an error message."""
    lines = [ln.strip()[:200] for ln in redact(text).splitlines() if ln.strip()][:_BODY_LINES]
    return " | ".join(lines) or "(empty body)"
