"""Process tuning for a program that runs pipelines: entered explicitly, undone when left.

Nothing here runs at import: importing icefield (or calling :func:`icefield.run_pipeline` from a library)
leaves the garbage collector and the environment as they are. A program that owns its process and runs
pipelines in it (the ``icefield`` command, a worker, a service) enters :func:`tuned` around its work::

    from icefield.process import tuned

    with tuned():  # before pyarrow is imported, for the allocator setting to apply
        run_pipeline(project, "orders")

It is reentrant and counts who is inside, so two runs in two threads can each enter it: the process is
tuned while one of them is inside, and given back as it was when the last one leaves, whatever order
they leave in. This module imports only the standard library (it sits below every icefield package).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

YOUNG_COLLECTION_EVERY = 50_000
"""Allocations between two young garbage collections while tuned (Python's default is 700)."""

PURGE_DELAY = "MIMALLOC_PURGE_DELAY"
"""The variable mimalloc (Arrow's allocator in pyarrow's wheels) reads its purge delay from, once, when
pyarrow's library loads."""

KEEP_FREED_PAGES = "-1"
"""mimalloc keeps freed pages for reuse instead of handing them back to the system."""


@dataclass
class _Saved:
    """What the first entrant found, to give back when the last one leaves."""

    threshold: tuple[int, int, int]
    manages_freeze: bool
    set_purge_delay: bool


_lock = threading.Lock()
_inside = 0
_saved: _Saved | None = None


@contextmanager
def tuned() -> Iterator[None]:
    """Tune the process for running pipelines while inside; give everything back when the last one inside
    leaves (also on an error). Thread-safe and reentrant.

    - **Garbage collector.** Young collections run every :data:`YOUNG_COLLECTION_EVERY` allocations
      instead of 700, and the objects alive on entry (and at each :func:`freeze`, which a run calls once its
      catalog, source and writer exist: ~150k objects) are left out of full collections. A stream of
      messages allocates an object per message: with the defaults the collector's passes cost more CPU
      than receiving the messages (benchmarks W3, W6). If something else froze objects before
      (``gc.get_freeze_count() > 0``), nothing is frozen or unfrozen here: unfreezing would give back its
      objects too.
    - **Arrow's allocator.** If pyarrow is not loaded yet and the environment does not set
      ``MIMALLOC_PURGE_DELAY``, it is set to ``-1`` while inside, so that mimalloc, when pyarrow loads,
      keeps freed pages for reuse instead of returning them to the system after a short delay: a run
      allocates and frees batch-sized buffers all the time, and a CDC run spent ~12% of its CPU in the
      kernel zeroing the pages it got back. mimalloc reads the variable once: the setting then lasts as
      long as the process (the process keeps its peak memory), while the variable itself is removed when
      the last one leaves. Once pyarrow is loaded, entering changes nothing of the allocator.
    """
    _enter()
    try:
        yield
    finally:
        _leave()


def is_tuned() -> bool:
    """Whether some code of this process is inside :func:`tuned`."""
    return _inside > 0


def freeze() -> None:
    """Inside :func:`tuned`: leave every object alive now out of full garbage collections until the last one
    inside leaves (a run calls it once its catalog, source and writer exist). Outside: nothing, so that a
    library call leaves the collector as it is."""
    with _lock:
        if _inside and _saved is not None and _saved.manages_freeze:
            gc.freeze()


def _enter() -> None:
    global _inside, _saved
    with _lock:
        if _inside == 0:
            threshold = gc.get_threshold()
            set_purge_delay = PURGE_DELAY not in os.environ and "pyarrow" not in sys.modules
            _saved = _Saved(threshold, gc.get_freeze_count() == 0, set_purge_delay)
            gc.set_threshold(max(threshold[0], YOUNG_COLLECTION_EVERY), *threshold[1:])
            if set_purge_delay:
                os.environ[PURGE_DELAY] = KEEP_FREED_PAGES
            elif PURGE_DELAY not in os.environ:
                log.debug("pyarrow is loaded already: Arrow's allocator keeps its own purge delay")
        _inside += 1
        if _saved is not None and _saved.manages_freeze:
            gc.freeze()


def _leave() -> None:
    global _inside, _saved
    with _lock:
        _inside -= 1
        if _inside or _saved is None:
            return
        saved, _saved = _saved, None
        gc.set_threshold(*saved.threshold)
        if saved.manages_freeze:
            gc.unfreeze()
        if saved.set_purge_delay and os.environ.get(PURGE_DELAY) == KEEP_FREED_PAGES:
            del os.environ[PURGE_DELAY]
