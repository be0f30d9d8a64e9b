"""The seam every native service launcher implements, and the process helpers they share.

A launcher starts a real server natively (no Docker) on 127.0.0.1, keeps its state under one base
directory, and stops it by pid. A new service is one module with one :class:`Service` subclass,
registered by name in ``stack/__init__.py``. A server that is one process of one executable subclasses
:class:`ProcessService` (the lifecycle is done: it names its executable, arguments and readiness answer);
the JVM servers subclass ``stack.jvm.JavaService``.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

logger = logging.getLogger(__name__)

STACK_DIR_ENV = "ICEFIELD_STACK_DIR"
"""Environment variable that moves the state of every service (default ``<repo>/.stack``)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root: the parent of the ``stack`` package."""

LOCALHOST = "127.0.0.1"

# sh forks the server in the background (reparented to init once sh exits) and prints its pid.
_SPAWN = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'


class StackError(RuntimeError):
    """Root of the launcher errors; the message names the service, the value and the fix."""


class ServiceNotInstalled(StackError):
    """The service's software is missing; the message names the command that installs it."""


class ServiceStartError(StackError):
    """The service did not start or did not become ready; the message carries the log tail."""


@dataclass(frozen=True)
class ServiceStatus:
    """What a launcher knows about its service right now."""

    name: str
    running: bool
    host: str
    port: int
    pid: int | None
    url: str
    state_dir: Path
    log_file: Path | None = None

    def describe(self) -> str:
        """Return one human line, e.g. ``postgres: running on 127.0.0.1:55432 (pid 42)``."""
        if self.running:
            return f"{self.name}: running on {self.host}:{self.port} (pid {self.pid}) url={self.url}"
        return f"{self.name}: not running (port {self.port}, state {self.state_dir})"


def default_base_dir() -> Path:
    """Return the base directory for service state: ``$ICEFIELD_STACK_DIR`` or ``<repo>/.stack``.

    Reads the environment when called, never at import. Creates nothing.
    """
    configured = os.environ.get(STACK_DIR_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return REPO_ROOT / ".stack"


def pid_alive(pid: int) -> bool:
    """Return True if process ``pid`` exists and is not a zombie.

    Zombies count as gone: in containers PID 1 does not always reap the daemons we orphan, and a
    zombie holds no port, no files and no shared memory.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (or it vanished between the calls): trust kill(0)
    # The state follows the parenthesised command name, which may itself contain ") ".
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def process_name(pid: int) -> str | None:
    """Return the kernel's command name for ``pid`` (``/proc/<pid>/comm``), or None if unknown."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def recorded_pid(pid_file: Path, command: str) -> int | None:
    """The pid recorded in ``pid_file`` if that process is alive and runs ``command`` (its kernel command
    name, e.g. ``java``); None otherwise: no file, no number, a process gone, or a reused pid."""
    try:
        text = pid_file.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    if not pid_alive(pid) or process_name(pid) not in (None, command):
        return None
    return pid


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is gone; return True if it went within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill_pid(
    pid: int,
    timeout: float = 10.0,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL),
) -> bool:
    """Stop ``pid`` with escalating ``signals`` (default INT, QUIT, KILL), waiting up to ``timeout`` per step.

    Returns True if the process is gone afterwards. Never raises for a process that already left.
    """
    for sig in signals:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_for_exit(pid, timeout):
            return True
        logger.warning("pid %d survived signal %s for %.0fs", pid, sig.name, timeout)
    return not pid_alive(pid)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion with captured text output.

    Returns the completed process. With ``check`` (the default) raises :class:`StackError` naming the
    command, its exit code and its stderr when it fails, times out or cannot be executed.
    """
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(f"command timed out after {timeout:.0f}s: {' '.join(argv)}") from e
    except OSError as e:
        raise StackError(f"cannot run {argv[0]!r}: {e}") from e
    if check and result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip() or "(no output)"
        raise StackError(f"command failed with exit code {result.returncode}: {' '.join(argv)}\n{output}")
    return result


def spawn_detached(argv: Sequence[str], log_file: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start ``argv`` in the background in a new session, output appended to ``log_file``; return its pid.

    The process outlives the caller and is never the caller's child (so no zombie and no
    ``subprocess`` object to reap). Raises :class:`StackError` if it cannot be started.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", _SPAWN, "sh", str(log_file), *argv],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StackError(f"cannot start {argv[0]!r}: {e}") from e
    pid = result.stdout.strip()
    if result.returncode != 0 or not pid.isdigit():
        raise StackError(f"cannot start {' '.join(argv[:3])} ...: {result.stderr.strip() or result.stdout.strip()}")
    return int(pid)


def read_port_env(var: str, default: int) -> int:
    """Return the port in environment variable ``var`` (else ``default``); raise :class:`StackError` if invalid."""
    raw = os.environ.get(var)
    try:
        port = int(raw) if raw else default
    except ValueError as e:
        raise StackError(f"{var}={raw!r} is not a port number; unset it or use e.g. {default}") from e
    if not 1 <= port <= 65535:
        raise StackError(f"{var}: port {port} is out of range 1-65535")
    return port


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Serialises concurrent launchers (two ``stack up`` calls, parallel test workers) on one state dir.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                break
            except OSError as e:  # pragma: no cover - EINTR only
                if e.errno != errno.EINTR:
                    raise
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Service(abc.ABC):
    """A real server started natively on 127.0.0.1 for tests and for users.

    Contract for subclasses:

    * ``install()`` makes the software available (or checks it is) and raises
      :class:`ServiceNotInstalled` naming the install command when it cannot;
    * ``start()`` launches the server and returns without waiting for it; it is idempotent and
      returns False when the server was already running, True when this call started it;
    * ``wait_ready(timeout)`` returns once the server answers real requests, and raises
      :class:`ServiceStartError` (with the log tail) if it died or the timeout passed;
    * ``stop()`` stops the server by pid, returns True if something was stopped, False if nothing
      was running, and raises :class:`StackError` if the process survives;
    * ``status()`` never changes anything;
    * all state (data, logs, pid) lives under ``state_dir`` = ``<base_dir>/<name>``.
    """

    name: ClassVar[str]
    host: ClassVar[str] = LOCALHOST

    def __init__(self, base_dir: Path | str | None = None, *, fast: bool = False) -> None:
        """Configure the launcher; touches nothing on disk.

        ``base_dir`` defaults to :func:`default_base_dir`. ``fast`` trades durability for speed
        (fsync off and the like): for throwaway test data only.
        """
        self.base_dir = Path(base_dir).absolute() if base_dir is not None else default_base_dir()
        self.fast = fast

    @property
    def state_dir(self) -> Path:
        """Directory holding this service's data, log and pid file."""
        return self.base_dir / self.name

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The TCP port the service listens on (on 127.0.0.1)."""

    @abc.abstractmethod
    def install(self) -> None:
        """Make the service runnable; raise :class:`ServiceNotInstalled` naming the fix if not."""

    @abc.abstractmethod
    def start(self) -> bool:
        """Launch the server if it is not running; return True if this call started it."""

    @abc.abstractmethod
    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server answers; raise :class:`ServiceStartError` after ``timeout`` s."""

    @abc.abstractmethod
    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server by pid; return True if it was running, raise if it survives."""

    @abc.abstractmethod
    def status(self) -> ServiceStatus:
        """Return whether the server runs, on which port, with which pid; changes nothing."""

    @abc.abstractmethod
    def url(self) -> str:
        """Return the URL clients use to reach the service."""

    def up(self, timeout: float = 60.0) -> bool:
        """Install, start and wait until ready; return True if this call started the server."""
        self.install()
        started = self.start()
        self.wait_ready(timeout)
        return started

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state_dir={str(self.state_dir)!r}, port={self.port})"


class ProcessService(Service):
    """A server that is one detached process of one executable, started and stopped by pid.

    Layout under ``state_dir``: ``data/`` (:attr:`data_dir`), ``<name>.log`` (its output), ``pid`` and
    ``lock`` (serialises start and stop). The port comes from the ``port`` argument, else
    ``$<port_env>``, else :attr:`port_default`. :meth:`start`, :meth:`wait_ready`, :meth:`stop` and
    :meth:`status` are shared; a subclass sets the class attributes below and implements:

    * :meth:`install`: find or build the executable and set ``self._binary`` to its path;
    * :meth:`arguments`: the argv after the executable (:meth:`command` is both);

    and may override :meth:`environment` (the process's environment), :meth:`prepare` (configuration files
    and folders, written under the lock before every start) and :meth:`ready` (what answer to ``GET
    <ready_path>`` means ready).
    """

    port_env: ClassVar[str]
    """The environment variable that moves the port."""
    port_default: ClassVar[int]
    executable: ClassVar[str]
    """The executable's file name: its first 15 characters are the kernel's command name of the process, by
    which a recorded pid is told from a reused one."""
    ready_path: ClassVar[str] = "/"
    """The URL path :meth:`probe` polls."""
    stop_signals: ClassVar[tuple[signal.Signals, ...]] = (signal.SIGTERM, signal.SIGKILL)
    """What :meth:`stop` sends, in order, each after the previous one was ignored for ``timeout`` seconds."""

    def __init__(self, base_dir: Path | str | None = None, *, port: int | None = None, fast: bool = False) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(self.port_env, self.port_default)
        if not 1 <= self._port <= 65535:
            raise StackError(f"{self.name} port {self._port} is out of range 1-65535: give {type(self).__name__}(port=...) "
                             f"a port from 1 to 65535")
        self._binary: Path | None = None  # set by install()

    # ------------------------------------------------------------------ locations

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The server's data: created at every start."""
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        """The server's stdout and stderr, appended to across starts."""
        return self.state_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pid"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    # ------------------------------------------------------------------ hooks

    @abc.abstractmethod
    def arguments(self) -> list[str]:
        """The server's argv after the executable."""

    def command(self) -> list[str]:
        """The server's full argv: the executable :meth:`install` found, then :meth:`arguments`."""
        assert self._binary is not None, "install() first"
        return [str(self._binary), *self.arguments()]

    def environment(self) -> dict[str, str]:
        """The server's environment: ours."""
        return dict(os.environ)

    def prepare(self) -> None:
        """Write configuration files and make folders before a start (under the lock; ``data_dir`` exists)."""

    def ready(self, status: int, body: bytes) -> bool:
        """Whether the HTTP answer ``status`` with ``body`` to ``GET <ready_path>`` means ready: a 200."""
        return status == 200

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> bool:
        """Launch the server unless it already runs from this state dir; return True if this call launched it.

        Raises :class:`ServiceStartError` naming :attr:`port_env` if the port is taken by another process.
        """
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is not None:
                logger.info("%s already running (pid %d)", self.name, pid)
                return False
            if port_open(self.host, self.port):
                raise ServiceStartError(
                    f"{self.name}: port {self.port} on {self.host} is already in use by another process; "
                    f"choose another with {self.port_env}=<port> or {type(self).__name__}(port=...)"
                )
            self.data_dir.mkdir(exist_ok=True)
            self.prepare()
            argv = self.command()
            logger.info("starting %s on %s:%d (log %s)", self.name, self.host, self.port, self.log_file)
            with open(self.log_file, "a") as log:
                log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting {self.name}\n")
            pid = spawn_detached(argv, self.log_file, env=self.environment(), cwd=self.state_dir)
            self.pid_file.write_text(f"{pid}\n")
            return True

    def probe(self) -> bool:
        """True once ``GET <ready_path>`` gets an answer that :meth:`ready` accepts."""
        try:
            with urllib.request.urlopen(f"{self.url()}{self.ready_path}", timeout=2) as resp:
                return self.ready(resp.status, resp.read())
        except urllib.error.HTTPError as e:
            return self.ready(e.code, b"")
        except OSError:  # URLError included: refused, reset, timed out
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll :meth:`probe`; raise :class:`ServiceStartError` with the log tail if the server exits or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self._running_pid()
            if pid is None:
                raise ServiceStartError(
                    f"{self.name} is not running (it exited or was never started); log {self.log_file}:\n{tail(self.log_file)}"
                )
            if self.probe():
                logger.info("%s ready on %s:%d (pid %d)", self.name, self.host, self.port, pid)
                return
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.name} (pid {pid}) not ready on {self.host}:{self.port} after {timeout:.0f}s; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server by pid with :attr:`stop_signals`; True if it was running, False if not; raises
        :class:`StackError` if it survives them all."""
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            logger.info("stopping %s (pid %d)", self.name, pid)
            if not kill_pid(pid, timeout, signals=self.stop_signals):
                raise StackError(f"{self.name} pid {pid} survived {self.stop_signals[-1].name}; see {self.log_file}")
            self.pid_file.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
        """Report running/pid from the pid file; changes nothing."""
        return ServiceStatus(
            name=self.name,
            running=(pid := self._running_pid()) is not None,
            host=self.host,
            port=self.port,
            pid=pid,
            url=self.url(),
            state_dir=self.state_dir,
            log_file=self.log_file,
        )

    def _running_pid(self) -> int | None:
        """The recorded pid if that process is alive and runs :attr:`executable` (a reused pid reads as not running)."""
        return recorded_pid(self.pid_file, self.executable[:15])
