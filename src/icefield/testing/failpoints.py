"""Failpoints for crash tests: ``ICEFIELD_FAILPOINT=<name>[:kill|:raise][@<n>]``.

At the named point the process dies at once (``kill``, the default: ``os._exit``, like SIGKILL: no
cleanup, no flush) or raises :class:`FailpointError` (``raise``). ``@n`` fires on the n-th hit only.
Points on the write path: ``after-data-files``, ``before-commit``, ``after-commit`` (the catalog swap
happened, the caller has not been told), ``before-quarantine``, ``after-quarantine``; in the runner, ``after-acknowledge``
(the source was told the batch is committed, e.g. Kafka consumer offsets committed); write-audit-publish adds
``before-publish`` (the batch is on its audit branch and passed its gates; ``main`` has not moved). Points of a
quarantine replay: ``replay-after-claim`` (rows claimed, not landed), ``replay-after-commit`` (landed in
the table, still in the quarantine).
"""

from __future__ import annotations

import os

from icefield.errors import FailpointError

ENV = "ICEFIELD_FAILPOINT"
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Fire the failpoint ``name`` if the environment asks for it; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    point, _, action = point.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if nth and _hits[name] != int(nth):
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name} fired")
    os._exit(137)
