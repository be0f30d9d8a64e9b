"""Reading ahead: a producer (a source's reads and decoding) in its own thread, handing items over in order."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def read_ahead(
    items: Iterator[T], stop: Callable[[], None], depth: int, name: str
) -> Generator[T, None, None]:
    """``items`` produced up to ``depth`` ahead by a thread named ``name`` while the caller works on the
    one before: Kafka polls, JSON parsing and Parquet writes release the GIL, so two cores overlap them.

    Order and failures are as without it: an item is handed over only after every item before it, and
    an error of the producer is raised where the caller asks for the item it concerns. When the caller
    stops early (break, error), ``stop`` is called so the producer returns after the item in progress,
    and the thread is joined (and ``items`` closed in it) before this generator returns, so the caller
    may then close what the producer used.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = threading.Event()

    def put(item: Any) -> bool:
        while not done.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the caller, raised there
            put(_Raised(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        done.set()
        if worker.is_alive():
            stop()
        worker.join()
