"""Failpoints for crash tests: ``ICEFIELD_FAILPOINT=<name>[:kill|:raise][@<n>]``, once a test armed them.

The points are marked in production code with :func:`icefield.failpoints.hit`, which does nothing until a
test installs an injector. :func:`armed` (a context manager) and :func:`arm` install this module's: at the
point the variable names, the process dies at once (``kill``, the default: ``os._exit``, like SIGKILL: no
cleanup, no flush) or raises :class:`~icefield.errors.FailpointError` (``raise``); ``@n`` fires on the n-th
hit only. The variable is read at each point, so a test may set it after arming. The injector looks
:func:`hit` up at each point: a test may replace it (``monkeypatch.setattr(failpoints, "hit", ...)``) to
act at a point itself.

A test that runs icefield in another process arms it there: ``python -m icefield.testing.failpoints
<icefield arguments>`` runs the command line armed, and a script calls :func:`arm` first. The points are
listed in :mod:`icefield.failpoints`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from icefield import failpoints as _seam
from icefield.errors import FailpointError

ENV = "ICEFIELD_FAILPOINT"
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Fire the failpoint ``name`` if ``ICEFIELD_FAILPOINT`` names it; otherwise do nothing."""
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


def _inject(name: str) -> None:
    hit(name)  # looked up at each point, so that a test may replace it


def arm() -> None:
    """Install this module's injector for the rest of the process, with no hit counted yet."""
    _hits.clear()
    _seam.install(_inject)


@contextmanager
def armed() -> Iterator[None]:
    """Failpoints armed inside the block (no hit counted yet); the injector before it is put back after."""
    _hits.clear()
    previous = _seam.install(_inject)
    try:
        yield
    finally:
        _seam.install(previous)


def main(argv: list[str] | None = None) -> None:
    """``python -m icefield.testing.failpoints <arguments>``: the ``icefield`` command line, armed."""
    from icefield.cli import main as cli

    arm()
    cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
