"""The query seam: DuckDB views over Iceberg snapshots for every query icefield runs over its tables
(``icefield sql``, models, ``sql`` gates and the gates icefield compiles), on a locked read-only
connection.

- :func:`connect`: a locked read-only connection with a view for each table a query names (and no
  other), at the snapshots given (by default the current ones); :func:`open_views` binds given tables
  at given snapshots (a branch head under audit); :func:`run_query` runs one query over a project's
  tables (as Arrow; :func:`query_rows` as the Python rows ``icefield sql`` prints).
- :mod:`icefield.query.readonly`: the lock (:func:`statement`, :func:`query`, :func:`lock`).
- :mod:`icefield.query.policy`: where an access policy (column masks, row filters) rewrites each view
  as it is built (:class:`ViewPolicy`, entered with :func:`view_policy`; none by default), so that
  every caller sees the same governed views.

Importing this package loads neither DuckDB, Arrow nor pyiceberg: each is imported when it is used.
"""

from __future__ import annotations

from icefield.query.policy import ViewPolicy, ViewRule, current_policy, view_policy
from icefield.query.readonly import NO_ACCESS, distinct_names, lock, open_connection, query, statement
from icefield.query.run import Rows, query_rows, run_query
from icefield.query.views import (
    View,
    Views,
    connect,
    named_tables,
    open_views,
    register_table,
    tables_named,
    view_name,
    view_sql,
)

__all__ = [
    "NO_ACCESS",
    "Rows",
    "View",
    "ViewPolicy",
    "ViewRule",
    "Views",
    "connect",
    "current_policy",
    "distinct_names",
    "lock",
    "named_tables",
    "open_connection",
    "open_views",
    "query",
    "query_rows",
    "register_table",
    "run_query",
    "statement",
    "tables_named",
    "view_name",
    "view_sql",
    "view_policy",
]
