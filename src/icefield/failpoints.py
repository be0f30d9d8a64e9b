"""Failpoints: named points on the write path where a crash test injects a fault.

Production code marks a point with :func:`hit`; it does nothing (one global read) until a test installs an
injector with :func:`install`. Nothing else switches it on: no environment variable, no setting. The crash
tests install :mod:`icefield.testing.failpoints`, which reads the point to fire from ``ICEFIELD_FAILPOINT``.

Points on the write path: ``after-data-files`` (a batch's data files are written, nothing committed),
``before-commit``, ``after-commit`` (the catalog swap happened, the caller has not been told),
``before-quarantine``, ``after-quarantine``; in the runner, ``after-acknowledge`` (the source was told the
batch is committed, e.g. Kafka consumer offsets committed); write-audit-publish adds ``before-publish`` (the
batch is on its audit branch and passed its gates; ``main`` has not moved). Points of a quarantine replay:
``replay-after-claim`` (rows claimed, not landed), ``replay-after-commit`` (landed in the table, still in the
quarantine). The rewrites of maintenance (compaction, archiving) have ``rewrite-before-commit`` (the new files are
written, nothing committed); compaction has ``rewrite-before-group`` (a group of files is about to be rewritten,
others may be under way).
"""

from __future__ import annotations

from collections.abc import Callable

Injector = Callable[[str], None]
"""Called with the name of each point reached; it may raise, or end the process."""

_injector: Injector | None = None


def hit(name: str) -> None:
    """The point ``name`` is reached: hand it to the installed injector, if any."""
    injector = _injector
    if injector is not None:
        injector(name)


def install(injector: Injector | None) -> Injector | None:
    """Make ``injector`` see every point reached from now on (None: none does). Returns the injector it
    replaces, for the caller to put back."""
    global _injector
    previous, _injector = _injector, injector
    return previous
