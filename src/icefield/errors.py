"""The one exception tree of icefield.

Every error icefield raises is an :class:`IcefieldError`. Whether a retry can help is in the type:
:class:`TransientError` (a retry may succeed: a commit conflict, a server that timed out) or
:class:`TerminalError` (fix the input, the config or the code first). Foreign exceptions are wrapped
with ``raise ... from e`` so the cause is kept.
"""

from __future__ import annotations

from collections.abc import Sequence


class IcefieldError(Exception):
    """Root of every error icefield raises."""


class TransientError(IcefieldError):
    """A retry may succeed (commit conflict, timeout, unreachable server)."""


class TerminalError(IcefieldError):
    """A retry cannot succeed until the input, the configuration or the code changes."""


class ConfigError(TerminalError):
    """A project or pipeline file is invalid. The message names the file, the key, the value and the fix."""


class SecretError(ConfigError):
    """A ``${env:NAME}`` or ``${file:PATH}`` reference cannot be resolved."""


class SourceError(TerminalError):
    """A source cannot be read (missing file, unreachable database, unsupported format)."""


class SchemaError(TerminalError):
    """An incoming schema cannot be written to the table under its contract."""


class CommitConflictError(TransientError):
    """Another writer committed first and the retries ran out."""


class MissingDependencyError(TerminalError):
    """An optional dependency is not installed; the message names the ``pip install`` to run."""


class FailpointError(IcefieldError):
    """Raised by a failpoint set in the ``ICEFIELD_FAILPOINT`` environment variable (tests only)."""


class GateFailedError(TerminalError):
    """Error-severity gates failed: the batch stays on its audit branch and ``main`` is untouched.
    ``checks`` holds the results (a list of :class:`~icefield.pipeline.results.CheckResult`)."""

    def __init__(self, message: str, checks: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.checks = list(checks)


class PublishConflictError(TerminalError):
    """A branch cannot be fast-forwarded onto ``main``: ``main`` has commits the branch lacks."""


class BranchMovedError(TransientError):
    """An audit branch is not at ``main``'s head when a batch is written on it (``main`` moved): cut it again."""


class QueryRefusedError(ConfigError):
    """SQL a user wrote (``icefield sql``, a model, a gate, a filter) is not one read-only query, or it
    reached for a file, URL or extension the locked DuckDB connection does not allow."""
