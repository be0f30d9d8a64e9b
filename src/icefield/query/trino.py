"""One query sent to the project's Trino server (``icefield sql --engine trino``): a thin layer over Trino's
HTTP API (the ``trino`` client, extra ``icefield[trino]``) that returns the :class:`~icefield.query.run.Rows`
``icefield sql`` prints for DuckDB.

The server, its catalog for this project and the user come from ``trino:`` in ``icefield.yaml``
(:class:`~icefield.config.models.TrinoConfig`). Trino resolves ``namespace.table`` in that catalog, the
same names DuckDB answers to. By default only a read statement is sent (SELECT, WITH, VALUES, SHOW,
DESCRIBE, EXPLAIN without ANALYZE, TABLE); ``unrestricted`` sends any statement, which Trino's own
access control then governs.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from icefield.config.secrets import resolve
from icefield.errors import ConfigError, IcefieldError, QueryError, QueryRefusedError, TransientError
from icefield.query.policy import current_policy
from icefield.query.run import Rows

if TYPE_CHECKING:
    from icefield.config import Project

__all__ = ["trino_rows"]

NO_NODES_WAIT = 30.0
"""Seconds a query that Trino answers with ``NO_NODES_AVAILABLE`` is asked again for (a server that just
started has not yet seen its node's catalogs) before it is a transient error."""
_READ = re.compile(r"(?:select|with|values|show|describe|table|explain)\b", re.IGNORECASE)
_COMMENTS = re.compile(r"(?:--[^\n]*(?:\n|$)|/\*.*?\*/|\s)+", re.DOTALL)
INSTALL_HINT = "pip install 'icefield[trino]'"


def trino_rows(project: Project, sql: str, unrestricted: bool = False, limit: int | None = None) -> Rows:
    """Run ``sql`` on the Trino server ``trino:`` in the project's ``icefield.yaml`` names, in its catalog
    for this project; return at most ``limit`` rows (all without one) and the count of all.

    Raises :class:`ConfigError` when ``trino:`` is missing, the client is not installed or the login is
    refused; :class:`QueryRefusedError` for a statement other than a read (without ``unrestricted``) or
    while an access policy (:func:`~icefield.query.policy.view_policy`) is in force, which Trino would bypass;
    :class:`TransientError` (exit 75) naming the URI when the server cannot be reached or is out of
    resources; :class:`QueryError` (exit 2) with Trino's message when the query fails as written;
    :class:`IcefieldError` when Trino fails it otherwise.
    """
    cfg = project.config.trino
    where = f"{project.root / 'icefield.yaml'}: trino"
    if cfg is None:
        raise ConfigError(
            f"{project.root / 'icefield.yaml'} names no Trino server: add "
            "`trino: {uri: http://127.0.0.1:18080, catalog: <Trino catalog of this project>}` (see docs/trino.md)"
        )
    if current_policy() is not None:
        # The policy rewrites icefield's DuckDB views; Trino reads the tables itself and would bypass it.
        raise QueryRefusedError(
            "an access policy (view_policy) is in force and Trino does not apply it: run the query on DuckDB "
            "(icefield sql without --engine trino), or govern the Trino catalog with Trino's access control"
        )
    if not unrestricted and not _READ.match(_COMMENTS.sub(" ", sql).strip()):
        raise QueryRefusedError(
            "icefield sql --engine trino sends only a read statement (SELECT, WITH, VALUES, SHOW, DESCRIBE, EXPLAIN, TABLE); "
            "--unrestricted sends any statement, under Trino's own access control"
        )
    if not unrestricted and re.match(r"explain\s+analyze\b", _COMMENTS.sub(" ", sql).strip(), re.IGNORECASE):
        raise QueryRefusedError("EXPLAIN ANALYZE runs its statement: without --unrestricted, only EXPLAIN is sent")
    try:
        import trino.auth
        import trino.dbapi
        import trino.exceptions
    except ImportError as e:
        raise ConfigError(f"icefield sql --engine trino needs the Trino client: run `{INSTALL_HINT}`") from e

    uri = resolve(cfg.uri, where=f"{where}.uri", base_dir=project.root).rstrip("/")
    parsed = urlparse(uri)
    auth: Any = None
    if cfg.password is not None:
        auth = trino.auth.BasicAuthentication(cfg.user, resolve(cfg.password, where=f"{where}.password", base_dir=project.root))
    conn = trino.dbapi.connect(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (443 if parsed.scheme == "https" else 80),
        http_scheme=parsed.scheme,
        user=cfg.user,
        auth=auth,
        catalog=cfg.catalog or project.config.catalog.name,
        source="icefield",
        request_timeout=60.0,
        max_attempts=2,
    )
    try:
        waited_until = time.monotonic() + NO_NODES_WAIT
        while True:
            try:
                cur = conn.cursor()
                cur.execute(sql)
                rows = [tuple(r) for r in cur.fetchall()]
                columns = [d[0] for d in cur.description or []]
                break
            except trino.exceptions.TrinoQueryError as e:
                # A server that just started answers this until its node announces the catalog (seconds):
                # nothing ran, so asking again is safe.
                if e.error_name != "NO_NODES_AVAILABLE" or isinstance(e, trino.exceptions.TrinoUserError):
                    raise
                if time.monotonic() >= waited_until:
                    raise TransientError(
                        f"Trino at {uri} has no node for catalog {cfg.catalog or project.config.catalog.name!r} after "
                        f"{NO_NODES_WAIT:.0f}s ({e.message}); check its workers and rerun"
                    ) from None
                time.sleep(0.5)
    except trino.exceptions.TrinoUserError as e:
        raise QueryError(f"the query failed on Trino at {uri}: {e.message}") from None
    except trino.exceptions.TrinoQueryError as e:
        if e.error_type == "INSUFFICIENT_RESOURCES":
            raise TransientError(f"Trino at {uri} ran out of resources for the query: {e.message}; retry later") from None
        raise IcefieldError(f"the query failed on Trino at {uri}: {e.error_name}: {e.message}") from None
    except (trino.exceptions.HttpError, trino.exceptions.TrinoAuthError) as e:
        if isinstance(e, trino.exceptions.TrinoAuthError) or str(e).startswith("error 401"):
            raise ConfigError(f"Trino at {uri} refused the login of user {cfg.user!r}: check trino.user and trino.password") from None
        raise TransientError(f"Trino at {uri} answered with an HTTP error: {e}; check that the server is up") from None
    except (OSError, trino.exceptions.TrinoConnectionError) as e:
        # requests' ConnectionError and timeouts are OSErrors: the server is down or not reachable.
        raise TransientError(f"cannot reach Trino at {uri}: {e}; start it (`python -m stack up trino`) or fix trino.uri") from None
    finally:
        conn.close()
    shown = rows if limit is None else rows[: max(limit, 0)]
    return Rows(columns, shown, len(rows))
