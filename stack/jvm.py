"""What the JVM services (Kafka, Kafka Connect) share: finding Java, launching a detached JVM, its pid.

A :class:`JavaService` runs one ``java -cp <classpath> <main class> <args>`` process, detached from
the caller (own session, reparented to init) so that ``python -m stack up`` can exit and leave it
running, with stdout and stderr appended to ``<state_dir>/<name>.log`` and its pid recorded in
``<state_dir>/pid``. Subclasses say what to fetch (:meth:`install`), what to write before a start
(:meth:`prepare`), which command to run and how to tell it is ready.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from .base import (
    Service,
    ServiceNotInstalled,
    ServiceStartError,
    ServiceStatus,
    StackError,
    file_lock,
    kill_pid,
    port_open,
    recorded_pid,
    run_command,
    tail,
)

# Re-exported: the launchers that predate stack.base import them from here.
from .base import read_port_env as read_port_env
from .base import spawn_detached as spawn_detached

logger = logging.getLogger(__name__)

JAVA_INSTALL_HINT = "apt-get install openjdk-17-jre-headless"
JAVA_MIN_MAJOR = 17
LOG4J2_CONFIG = Path(__file__).resolve().parent / "conf" / "log4j2.properties"
"""The log4j2 configuration of every JVM service: INFO to stdout, which the launcher appends to the log."""

_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major(java: str) -> int | None:
    """Return the major version of the ``java`` executable (8 for ``1.8.0``), or None if unknown."""
    try:
        out = run_command([java, "-version"], timeout=30, check=False)
    except StackError:
        return None
    m = _JAVA_VERSION.search(out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java(min_major: int = JAVA_MIN_MAJOR) -> str:
    """Return ``$JAVA_HOME/bin/java`` or ``java`` on the ``PATH`` if it is Java ``min_major`` or newer.

    Raises :class:`ServiceNotInstalled` naming the package to install otherwise.
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise ServiceNotInstalled(f"no Java found (JAVA_HOME={home!r}, no `java` on PATH): run `{JAVA_INSTALL_HINT}`")
    major = java_major(java)
    if major is None or major < min_major:
        raise ServiceNotInstalled(
            f"{java} is Java {major or 'of an unknown version'}, Java {min_major}+ is needed: "
            f"run `{JAVA_INSTALL_HINT}` or point JAVA_HOME at a newer JDK"
        )
    return java


class JavaService(Service):
    """A JVM server under ``state_dir``: ``pid``, ``<name>.log``, ``lock`` and what :meth:`prepare` writes.

    Subclasses implement :meth:`install`, :meth:`prepare`, :meth:`command`, :meth:`probe`, ``port``
    and ``url``. :meth:`start`, :meth:`wait_ready`, :meth:`stop` and :meth:`status` are shared.
    """

    heap: str = "512m"
    main_class: ClassVar[str]
    """The server's Java main class; :meth:`command` runs it with :attr:`config_file` as its argument."""
    # Set by install(): the java executable and the folder of the server's jars.
    _java: str | None = None
    _libs: Path | None = None

    @property
    def pid_file(self) -> Path:
        """Where the launcher records the JVM's pid."""
        return self.state_dir / "pid"

    @property
    def log_file(self) -> Path:
        """The JVM's stdout and stderr (log4j2 writes to stdout)."""
        return self.state_dir / f"{self.name}.log"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @abc.abstractmethod
    def prepare(self) -> None:
        """Write the configuration (and format storage) before a start; runs under the lock."""

    @property
    @abc.abstractmethod
    def config_file(self) -> Path:
        """The properties file :meth:`prepare` writes and the server reads."""

    def command(self) -> list[str]:
        """Return the full ``java ...`` argv of the server: its jars, :attr:`main_class` and config file."""
        assert self._java is not None and self._libs is not None, "install() first"
        return [self._java, *self.jvm_options(), "-cp", f"{self._libs}/*", self.main_class, str(self.config_file)]

    @abc.abstractmethod
    def probe(self) -> bool:
        """Return True once the server answers a real request (not just a TCP connect)."""

    def ports(self) -> tuple[int, ...]:
        """Every port the server binds (checked free before a start)."""
        return (self.port,)

    def jvm_options(self) -> list[str]:
        """Heap, GC and logging options common to the JVM services."""
        return [
            f"-Xms{min(self.heap, '256m', key=_megabytes)}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> bool:
        """Launch the JVM unless it already runs from this state dir; return True if this call launched it.

        Raises :class:`ServiceStartError` if one of its ports is taken by another process.
        """
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is not None:
                logger.info("%s already running (pid %d)", self.name, pid)
                return False
            busy = [p for p in self.ports() if port_open(self.host, p)]
            if busy:
                raise ServiceStartError(
                    f"{self.name}: port(s) {', '.join(map(str, busy))} on {self.host} already in use by another "
                    f"process; choose others (see `python -m stack` docs for the port variables)"
                )
            self.prepare()
            argv = self.command()
            logger.info("starting %s on %s:%d (log %s)", self.name, self.host, self.port, self.log_file)
            with open(self.log_file, "a") as log:
                log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting {self.name}\n")
            pid = spawn_detached(argv, self.log_file, env=self.environment(), cwd=self.state_dir)
            self.pid_file.write_text(f"{pid}\n")
            return True

    def environment(self) -> dict[str, str]:
        """The JVM's environment: ours, minus variables that would change the JVM's options behind our back."""
        drop = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH")
        return {k: v for k, v in os.environ.items() if k not in drop}

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll :meth:`probe` until it answers; raise :class:`ServiceStartError` with the log tail if the
        JVM exits or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self._running_pid()
            if pid is None:
                raise ServiceStartError(
                    f"{self.name} is not running (it exited or was never started); log {self.log_file}:\n{tail(self.log_file)}"
                )
            if port_open(self.host, self.port) and self.probe():
                logger.info("%s ready on %s:%d (pid %d)", self.name, self.host, self.port, pid)
                return
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.name} (pid {pid}) not ready on {self.host}:{self.port} after {timeout:.0f}s; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the JVM by pid (SIGTERM runs its shutdown hooks; SIGKILL if it hangs).

        Returns True if it was running, False if not; raises :class:`StackError` if it survives.
        """
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.lock_file):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            logger.info("stopping %s (pid %d)", self.name, pid)
            # SIGTERM: a JVM started in the background by sh ignores SIGINT and SIGQUIT (POSIX).
            if not kill_pid(pid, timeout, signals=(signal.SIGTERM, signal.SIGKILL)):
                raise StackError(f"{self.name} pid {pid} survived SIGKILL; see {self.log_file}")
            self.pid_file.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
        """Report running/pid from the pid file (a live ``java`` process); changes nothing."""
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
        """The recorded pid if that process is alive and is a JVM (a reused pid reads as not running)."""
        return recorded_pid(self.pid_file, "java")


def properties_text(settings: Mapping[str, str], written_by: str) -> str:
    """A Java properties file of ``settings``, headed by a note that ``written_by`` rewrites it at every start."""
    lines = [f"# Written by {written_by} at every start: change the launcher, not this file."]
    lines += [f"{k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _megabytes(size: str) -> float:
    """``"512m"`` -> 512, ``"1g"`` -> 1024 (JVM heap notation)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    if not m:
        raise StackError(f"heap size {size!r} is not JVM notation like 512m or 1g")
    factor = {"": 1 / (1 << 20), "k": 1 / 1024, "m": 1, "g": 1024}[m.group(2).lower()]
    return int(m.group(1)) * factor
