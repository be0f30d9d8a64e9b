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


@contextmanager
def watched() -> Iterator[None]:
    """Note the SIGINTs that arrive inside, in the main thread: the handler installed (Python's own, which
    raises ``KeyboardInterrupt``, or another a program installed) still runs; a SIGINT it turns into
    ``KeyboardInterrupt`` is noted. A handler that does not raise (``--follow``'s graceful stop, say) notes
    nothing: that run is not interrupted, it ends its batch. SIG_IGN and SIG_DFL are left alone."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def note(signum: int, frame: FrameType | None) -> None:
        try:
            previous(signum, frame)
        except KeyboardInterrupt:
            _received.set()
            raise

    _received.clear()
    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received.clear()


def received() -> bool:
    """A SIGINT arrived inside the :func:`watched` block the caller is in."""
    return _received.is_set()
