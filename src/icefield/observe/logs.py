"""Central logs (``docs/logs.md``): the run's ids on every line, Airflow's when Airflow runs it, and shipping
to VictoriaLogs.

- :class:`~icefield.observe.events.ContextFilter` sets ``run_id``, ``pipeline`` and ``batch_id`` on each
  record from the run it is emitted in (context variables the event stream sets: nothing is passed along);
  :class:`AirflowFilter` sets ``dag_id``, ``task_id``, ``dag_run_id`` and ``try_number`` from the
  ``AIRFLOW_CTX_*`` variables Airflow puts in a task's environment (inherited by an ``icefield`` command the
  task starts).
- :class:`VictoriaLogsHandler` posts the lines, as JSON lines, in batches to VictoriaLogs' ingestion
  endpoint from a background thread: a record is formatted and queued in the thread that logs it, and
  nothing else happens there, so a store that is down or slow never blocks or fails a run. A batch the store
  refuses is retried, then dropped with one warning on the ``icefield.logs`` logger (which the handler does
  not ship: it would only loop). :meth:`VictoriaLogsHandler.flush` (called by :func:`logging.shutdown` at
  exit) waits a bounded time for the queue to drain.
- :func:`install_handlers` is for the CLI: it replaces icefield's handlers on the root logger by the ones a
  :class:`LogSettings` asks for; :func:`project_handlers` adds a project's file and shipper for the time of
  an Airflow task, beside Airflow's own handlers.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from icefield.config.secrets import redact, resolve
from icefield.errors import ConfigError
from icefield.observe import JsonFormatter, RedactingFilter, RedactingFormatter
from icefield.observe.events import ContextFilter

if TYPE_CHECKING:
    # The models load pydantic: imported where a shipper is built, so a command without one stays light.
    from icefield.config.logs import LogsConfig, LogShipConfig

__all__ = [
    "AIRFLOW_FIELDS",
    "AirflowFilter",
    "LogSettings",
    "VictoriaLogsHandler",
    "ingest_url",
    "install_handlers",
    "project_handlers",
    "remove_handlers",
]

log = logging.getLogger("icefield.logs")
"""The shipping handler's own warnings (a dropped batch): written locally, never shipped."""

AIRFLOW_FIELDS: dict[str, str] = {
    "dag_id": "AIRFLOW_CTX_DAG_ID",
    "task_id": "AIRFLOW_CTX_TASK_ID",
    "dag_run_id": "AIRFLOW_CTX_DAG_RUN_ID",
    "try_number": "AIRFLOW_CTX_TRY_NUMBER",
}
"""Log field -> the environment variable Airflow sets in a task's process (Airflow 2 and 3)."""

MSG_FIELD = "message"
TIME_FIELD = "ts"
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TAG = "_icefield"
_NUDGE = "\x00nudge"
"""Put on the shipping queue to wake the shipper (never a JSON line)."""


class AirflowFilter(logging.Filter):
    """Sets ``dag_id``, ``task_id``, ``dag_run_id`` and ``try_number`` (an int) on each record when the
    process runs an Airflow task (``AIRFLOW_CTX_*`` set); attributes a record already has are kept. ``env``
    defaults to ``os.environ``, read at each record (Airflow sets it after the logging is configured)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.env = env

    def filter(self, record: logging.LogRecord) -> bool:
        env = os.environ if self.env is None else self.env
        for key, var in AIRFLOW_FIELDS.items():
            value = env.get(var)
            if value and not hasattr(record, key):
                setattr(record, key, int(value) if key == "try_number" and value.isdigit() else value)
        return True


def ingest_url(url: str, stream_fields: Sequence[str] = ("pipeline",)) -> str:
    """VictoriaLogs' JSON lines ingestion URL for the server at ``url`` (``http://host:9428``, or a URL that
    already ends with ``/insert/jsonline``): the message is the ``message`` field, the time ``ts``, the
    stream named by ``stream_fields``."""
    base = url.rstrip("/")
    from icefield.config.logs import INGEST_PATH

    if not base.endswith(INGEST_PATH):
        base += INGEST_PATH
    query = {"_msg_field": MSG_FIELD, "_time_field": TIME_FIELD}
    if stream_fields:
        query["_stream_fields"] = ",".join(stream_fields)
    return f"{base}?{urllib.parse.urlencode(query)}"


class VictoriaLogsHandler(logging.Handler):
    """Ships every record it handles, as one JSON line (:class:`~icefield.observe.JsonFormatter`), to
    VictoriaLogs at ``url`` in batches of up to ``batch_size`` lines, at least every ``flush_seconds``.

    :meth:`emit` never blocks and never raises: the line goes to a queue of ``queue_size`` lines (a full queue
    drops it, counted in a warning). A background thread posts the batches; a failed post (connection
    refused, timeout, HTTP 5xx or 429) is tried ``retries`` more times with a growing pause, then the batch
    is dropped with a warning on the ``icefield.logs`` logger; a post refused with another 4xx is dropped at
    once. :meth:`flush` waits up to ``flush_timeout`` seconds for the queue to drain; :meth:`close` flushes
    and stops the thread. Records of the ``icefield.logs`` logger are not shipped."""

    def __init__(
        self,
        url: str,
        *,
        stream_fields: Sequence[str] = ("pipeline",),
        headers: Mapping[str, str] | None = None,
        batch_size: int = 500,
        flush_seconds: float = 1.0,
        timeout_seconds: float = 5.0,
        retries: int = 3,
        queue_size: int = 10_000,
        flush_timeout: float = 10.0,
        backoff: float = 0.5,
    ) -> None:
        super().__init__()
        self.url = url
        self.endpoint = ingest_url(url, stream_fields)
        self.headers = {"Content-Type": "application/stream+json", **(headers or {})}
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.flush_timeout = flush_timeout
        self.backoff = backoff
        self.setFormatter(JsonFormatter())
        # A filter, not only a test in emit: filters run before the handler's lock is taken, and the shipper
        # warns while logging.shutdown holds that lock to flush.
        self.addFilter(lambda record: record.name != log.name)
        self._queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._pending = 0  # lines queued or in a batch being posted
        self._done = threading.Condition()
        self._hurry = 0  # flushes or a close in progress: the shipper takes what is queued without waiting
        self._closing = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.shipped = 0
        """Lines the store accepted."""
        self.dropped = 0
        """Lines dropped: a full queue, or a batch the store refused after the retries."""
        self._overflow = 0  # lines dropped by a full queue since the last warning

    @classmethod
    def from_config(cls, ship: LogShipConfig, base_dir: Path | None = None, *, url: str | None = None) -> VictoriaLogsHandler:
        """The handler ``logs.ship`` describes (``url`` overrides its URL); references in the URL and the
        headers are resolved now (:class:`~icefield.config.secrets.SecretError` when one cannot be)."""
        headers = {k: resolve(v, f"logs.ship.headers.{k}", base_dir) for k, v in ship.headers.items()}
        return cls(
            resolve(url or ship.url, "logs.ship.url", base_dir),
            stream_fields=ship.stream_fields,
            headers=headers,
            batch_size=ship.batch_size,
            flush_seconds=ship.flush_seconds,
            timeout_seconds=ship.timeout_seconds,
            retries=ship.retries,
            queue_size=ship.queue_size,
        )

    # ------------------------------------------------------------------ the logging thread's side

    def emit(self, record: logging.LogRecord) -> None:
        if self._closing:
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._ensure_thread()
        with self._done:
            try:
                self._queue.put_nowait(line)
            except queue.Full:
                self.dropped += 1
                self._overflow += 1
                return
            self._pending += 1

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                # Daemon: a process that forgets to close it still exits (logging.shutdown flushes it first).
                t = threading.Thread(target=self._loop, name="icefield-log-shipper", daemon=True)
                t.start()
                self._thread = t

    def flush(self) -> None:
        """Wait until every queued line is shipped or dropped, at most ``flush_timeout`` seconds."""
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + self.flush_timeout
        with self._done:
            self._hurry += 1
        try:
            self._nudge()
            with self._done:
                while self._pending > 0 and thread.is_alive():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._done.wait(min(left, 0.1))
        finally:
            with self._done:
                self._hurry -= 1

    def close(self) -> None:
        """Flush, then stop the background thread (lines still queued after ``flush_timeout`` are lost)."""
        try:
            self.flush()
            self._closing = True
            self._nudge()
            if self._thread is not None:
                self._thread.join(timeout=self.timeout_seconds + 1)
        finally:
            super().close()

    def _nudge(self) -> None:
        """Wake the shipper if it waits for lines (a full queue means it is not waiting)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_NUDGE)

    # ------------------------------------------------------------------ the shipper thread

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                self._ship(batch)
            with self._done:
                self._pending -= len(batch)
                self._done.notify_all()
            if not batch and not self._closing:
                time.sleep(0.01)  # a flush found the queue empty: let it see that before looking again
            if self._overflow:
                n, self._overflow = self._overflow, 0
                log.warning("the log shipping queue to %s was full: %d log lines dropped (the run goes on)", self.url, n)
            if self._closing and self._queue.empty():
                return

    def _collect(self) -> list[str]:
        """Up to ``batch_size`` lines: the first to come, then those queued within ``flush_seconds`` of it; only
        those queued already while a flush or close is in progress."""
        batch: list[str] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            hurry = self._hurry > 0 or self._closing
            wait = self.flush_seconds if not batch else deadline - time.monotonic()
            try:
                line = self._queue.get_nowait() if hurry else self._queue.get(timeout=wait) if wait > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                if batch or hurry:
                    break
                continue  # nothing for flush_seconds: wait again
            if line is _NUDGE:
                continue  # the loop looks at _hurry and _closing again
            if not batch:
                deadline = time.monotonic() + self.flush_seconds
            batch.append(line)
        return batch

    def _ship(self, batch: list[str]) -> None:
        body = ("\n".join(batch) + "\n").encode("utf-8")
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 5.0))
            try:
                req = urllib.request.Request(self.endpoint, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_seconds) as resp:  # noqa: S310 - the configured store
                    resp.read()
                self.shipped += len(batch)
                return
            except urllib.error.HTTPError as e:
                detail = e.read(300).decode("utf-8", "replace").strip() if e.fp is not None else ""
                error = f"HTTP {e.code} {e.reason}{': ' + detail if detail else ''}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the store refuses these lines: sending them again cannot help
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, DNS
                cause = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException) else e
                error = f"{type(cause).__name__}: {cause}"
        self.dropped += len(batch)
        log.warning(
            "could not ship %d log lines to %s after %d attempts (%s); they are dropped, the run goes on and the "
            "local log keeps them",
            len(batch), self.url, attempt + 1, redact(error),
        )

    def __repr__(self) -> str:
        return f"VictoriaLogsHandler({self.url!r})"


# ---------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class LogSettings:
    """Where the log lines go, resolved from the CLI's flags over ``icefield.yaml``'s ``logs:``.

    ``format`` of the local lines (``text``/``json``; the shipped ones are always JSON), ``level`` (a
    :mod:`logging` level) of icefield's loggers, ``file`` (appended to, instead of stderr), ``ship`` the
    store's settings, ``ship_url`` a URL overriding theirs (or shipping with the defaults when ``ship`` is
    None), ``base_dir`` where secret files of references are read from."""

    format: str = "text"
    level: int = logging.WARNING
    file: Path | None = None
    ship: LogShipConfig | None = None
    ship_url: str | None = None
    base_dir: Path | None = None

    def handlers(self, stderr: logging.Handler | None) -> list[logging.Handler]:
        """The handlers these settings ask for, each with the redacting, run and Airflow filters: the file's
        (else ``stderr``, unless None), then the shipper's. Raises :class:`ConfigError` when the file cannot be
        opened."""
        local: logging.Handler | None
        if self.file is not None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                local = logging.FileHandler(self.file, mode="a", encoding="utf-8")
            except OSError as e:
                raise ConfigError(
                    f"logs.file {str(self.file)!r} cannot be opened for appending: {e.strerror or e}; give a path in a "
                    "writable folder, or remove logs.file (and --log-file) to log to stderr"
                ) from e
            local.setFormatter(JsonFormatter() if self.format == "json" else RedactingFormatter(FILE_TEXT_FORMAT))
        else:
            local = stderr
            if local is not None:
                local.setFormatter(JsonFormatter() if self.format == "json" else RedactingFormatter(TEXT_FORMAT))
        out = [local] if local is not None else []
        if self.ship is not None or self.ship_url is not None:
            from icefield.config.logs import LogShipConfig

            ship = self.ship or LogShipConfig(url=self.ship_url or "")
            out.append(VictoriaLogsHandler.from_config(ship, self.base_dir, url=self.ship_url))
        for h in out:
            h.addFilter(RedactingFilter())
            h.addFilter(ContextFilter())  # run_id, pipeline, batch_id on every record of a run
            h.addFilter(AirflowFilter())  # dag_id, task_id, dag_run_id, try_number under Airflow
            setattr(h, _TAG, True)
        return out


def install_handlers(handlers: Sequence[logging.Handler], logger: logging.Logger | None = None) -> None:
    """Replace icefield's handlers on ``logger`` (the root) by ``handlers``; the replaced ones are closed
    (a shipper flushes first). For entry points only: library code never configures logging."""
    target = logger or logging.getLogger()
    old = [h for h in target.handlers if getattr(h, _TAG, False)]
    target.handlers[:] = [h for h in target.handlers if not getattr(h, _TAG, False)] + list(handlers)
    for h in old:
        if h not in handlers:
            h.close()


def remove_handlers(handlers: Sequence[logging.Handler], logger: logging.Logger | None = None) -> None:
    """Take ``handlers`` off ``logger`` (the root) and close them (a shipper flushes first)."""
    target = logger or logging.getLogger()
    for h in handlers:
        target.removeHandler(h)
        h.close()


@contextlib.contextmanager
def project_handlers(config: LogsConfig, root: Path) -> Iterator[list[logging.Handler]]:
    """For a program that runs a project inside a process whose logging it does not own (an Airflow task):
    the ``logs.file`` and ``logs.ship`` handlers of ``config`` (``root`` the project folder) added to the
    root logger for the block, at ``logs.level``, then removed, flushed and closed. The process's own
    handlers (Airflow's task log) stay; nothing is added without ``file`` or ``ship``."""
    file = None
    if config.file is not None:
        file = Path(config.file).expanduser()
        file = file if file.is_absolute() else root / file
    level = getattr(logging, config.level.upper())
    settings = LogSettings(format=config.format, level=level, file=file, ship=config.ship, base_dir=root)
    made = settings.handlers(None)
    target = logging.getLogger()
    for h in made:
        h.setLevel(level)
        target.addHandler(h)
    try:
        yield made
    finally:
        remove_handlers(made, target)
