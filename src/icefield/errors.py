"""The one exception tree of icefield.

Every error icefield raises is an :class:`IcefieldError`. Whether a retry can help is in the type:
:class:`TransientError` (a retry may succeed: a commit conflict, a server that timed out) or
:class:`TerminalError` (fix the input, the config or the code first). Foreign exceptions are wrapped
with ``raise ... from e`` so the cause is kept.

Each class carries the exit code of the ``icefield`` command it ends (``exit_code``)::

    IcefieldError                 1   a run failed
    ├── TransientError           75   a retry may succeed
    │   ├── CommitConflictError
    │   └── BranchMovedError
    ├── TerminalError             1   fix the input or the code first
    │   ├── ConfigError           2   fix the configuration or the command line
    │   │   ├── SecretError
    │   │   ├── QueryError            a database (a source, DuckDB) cannot run a query as written
    │   │   ├── QueryRefusedError     SQL a user wrote that the locked DuckDB refuses
    │   │   └── MissingDependencyError
    │   ├── SourceError
    │   ├── SchemaError
    │   ├── GateFailedError
    │   ├── PublishConflictError
    │   └── IntegrityError        a change would lose or gain rows: refused, nothing committed
    ├── InterruptedRunError     130   stopped by SIGINT (Ctrl-C)
    └── FailpointError                tests only
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
"""A run failed (data or write error), or an internal error (a bug: the message says to report it)."""
EXIT_USAGE = 2
"""Bad usage or configuration: retrying cannot help until the command or the project changes."""
EXIT_TRANSIENT = 75
"""A retry may succeed (``EX_TEMPFAIL``): an unreachable server, a commit conflict."""
EXIT_INTERRUPTED = 130
"""Stopped by SIGINT (128 + 2, what shells report for Ctrl-C)."""


class IcefieldError(Exception):
    """Root of every error icefield raises."""

    exit_code: ClassVar[int] = EXIT_FAILED


class TransientError(IcefieldError):
    """A retry may succeed (commit conflict, timeout, unreachable server)."""

    exit_code: ClassVar[int] = EXIT_TRANSIENT


class TerminalError(IcefieldError):
    """A retry cannot succeed until the input, the configuration or the code changes."""


class ConfigError(TerminalError):
    """A project or pipeline file (or a command's arguments) is invalid. The message names the file, the
    key, the value and the fix. A source's login refused or its database missing is one too: a retry
    cannot help until the settings change."""

    exit_code: ClassVar[int] = EXIT_USAGE


class QueryError(ConfigError):
    """A database cannot run a query as written: a source database or DuckDB refused it (syntax error,
    unknown table or column, missing privilege, a value it cannot convert)."""


class InterruptedRunError(IcefieldError):
    """The command was stopped by SIGINT (Ctrl-C). Committed batches stay; the batch in flight stays
    pending and the next run retries it."""

    exit_code: ClassVar[int] = EXIT_INTERRUPTED


class StorageRefusedError(ConfigError):
    """The object store refused a request with the configured credentials (access denied, an unknown key,
    a bad signature, no such bucket): a retry cannot help until the ``storage`` settings or the account's
    grants change. Nothing of the refused change landed."""


class SecretError(ConfigError):
    """A ``${env:NAME}`` or ``${file:PATH}`` reference cannot be resolved."""


class SourceError(TerminalError):
    """A source cannot be read (missing file, unreachable database, unsupported format)."""


class SchemaError(TerminalError):
    """An incoming schema cannot be written to the table under its contract."""


class CommitConflictError(TransientError):
    """Another writer committed first and the retries ran out."""


class MissingDependencyError(ConfigError):
    """An optional dependency is not installed; the message names the ``pip install`` to run."""


DRIVER_PACKAGES: dict[str, str] = {
    "psycopg2": "icefield[postgres]",
    "adbc_driver_postgresql": "icefield[postgres]",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
"""Top-level module of a database driver -> what to ``pip install`` for it."""


def driver_install_hint(module: str | None) -> str:
    """The ``pip install ...`` command that provides the database driver module ``module``."""
    top = (module or "").split(".")[0]
    return f"pip install {DRIVER_PACKAGES.get(top, top or 'the database driver')}"


class FailpointError(IcefieldError):
    """Raised by a failpoint a test armed (:mod:`icefield.testing.failpoints`; tests only)."""


class GateFailedError(TerminalError):
    """Error-severity gates failed: the batch stays on its audit branch and ``main`` is untouched.
    ``checks`` holds the results (a list of :class:`~icefield.quality.results.CheckResult`)."""

    def __init__(self, message: str, checks: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.checks = list(checks)


class PublishConflictError(TerminalError):
    """A branch cannot be fast-forwarded onto ``main``: ``main`` has commits the branch lacks."""


class IntegrityError(TerminalError):
    """A check that guards a table's content failed: the change would lose or gain rows (a compaction that
    wrote another number of rows than it read). Nothing of it was committed; the message names the table
    and the counts."""


class BranchMovedError(TransientError):
    """An audit branch is not at ``main``'s head when a batch is written on it (``main`` moved): cut it again."""


class QueryRefusedError(ConfigError):
    """SQL a user wrote (``icefield sql``, a model, a gate, a filter) is not one read-only query, or it
    reached for a file, URL or extension the locked DuckDB connection does not allow."""
