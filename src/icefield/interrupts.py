"""Whether a SIGINT (Ctrl-C) arrived during a run, whatever a library made of it.

Python turns SIGINT into ``KeyboardInterrupt``, but a library inside whose call it arrives may turn it into an
error of its own: DuckDB ends the query with ``RuntimeError("Query interrupted")`` (no ``KeyboardInterrupt``
in its chain), pyarrow with ``ArrowCancelled``; the step that called it then reports a failure of its own.
:func:`watched` notes every SIGINT that arrives while a run is inside it (then raises ``KeyboardInterrupt``
as Python's own handler does), so that the run can tell such a failure from a real one with
:func:`received`. Only the standard library is imported (this module sits below every icefield package).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_received = threading.Event()


def _note(signum: int, frame: FrameType | None) -> None:
    _received.set()
    signal.default_int_handler(signum, frame)


@contextmanager
def watched() -> Iterator[None]:
    """Note the SIGINTs that arrive inside: in the main thread, while Python's own handler is the one
    installed (a command that installed its own handler, ``--follow``'s graceful stop say, keeps it)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _received.clear()
    signal.signal(signal.SIGINT, _note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _received.clear()


def received() -> bool:
    """A SIGINT arrived inside the :func:`watched` block the caller is in."""
    return _received.is_set()
