"""A Spark standalone cluster: one master and two workers, started natively from the pyspark package.

The daemons are the pyspark wheel's own classes (``org.apache.spark.deploy.master.Master`` and
``org.apache.spark.deploy.worker.Worker``) run with ``java -cp <pyspark>/jars/*``: the Spark the
driver runs is the Spark the cluster runs (4.1, see :mod:`stack.spark`), nothing else is fetched. Each
daemon is a detached JVM on 127.0.0.1 with its own log and pid file; a worker launches its
executors as child JVMs, so its ``SPARK_HOME`` is the pyspark package (the executors' classpath is
``SPARK_HOME/jars``) and ``SPARK_SCALA_VERSION`` is set (what ``bin/load-spark-env.sh`` would set;
without it a worker looks for a source build and every executor fails). Layout under
``state_dir`` (``<base>/spark``)::

    master.log, master.pid          the master
    worker-1.log, worker-1.pid      the first worker (worker-2.* the second)
    work/worker-1/                  a worker's work dir: one folder per application and executor,
                                    holding the executor's stdout and stderr
    local/                          scratch space of the daemons and executors (SPARK_LOCAL_DIRS)
    lock

Ports (127.0.0.1 only): the master on ``$ICEFIELD_SPARK_PORT`` (17077), its web UI and JSON
endpoint on ``$ICEFIELD_SPARK_UI_PORT`` (17080), the workers' web UIs on
``$ICEFIELD_SPARK_WORKER_UI_PORT`` (17081) and the next port; the workers' RPC ports are picked by
the kernel. The master's REST submission server (port 6066) is off. Ready when the master's
``/json/`` lists as many ALIVE workers as the cluster has. Workers have 1 core and 1 GiB each
(what an application's executors may take); the daemons themselves run in 512 MiB heaps.

A driver connects with ``master="spark://127.0.0.1:17077"`` (:func:`stack.spark.spark_session`'s
``master``). The executors run on this machine, so a ``file://`` warehouse works as long as the
path is absolute; on a real cluster the warehouse must be shared storage (S3).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import (
    Service,
    ServiceStartError,
    ServiceStatus,
    StackError,
    file_lock,
    kill_pid,
    port_open,
    recorded_pid,
    tail,
)
from .jvm import read_port_env, spawn_detached
from .spark import SparkNotInstalled, _ensure_java, import_pyspark

logger = logging.getLogger(__name__)

SPARK_PORT_ENV = "ICEFIELD_SPARK_PORT"
SPARK_PORT_DEFAULT = 17077
SPARK_UI_PORT_ENV = "ICEFIELD_SPARK_UI_PORT"
SPARK_UI_PORT_DEFAULT = 17080
SPARK_WORKER_UI_PORT_ENV = "ICEFIELD_SPARK_WORKER_UI_PORT"
SPARK_WORKER_UI_PORT_DEFAULT = 17081
SPARK_SCALA_VERSION = "2.13"
"""The Scala version of the pyspark 4.1 jars (``bin/load-spark-env.sh`` exports the same)."""
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
DAEMON_HEAP = "512m"


@dataclass(frozen=True)
class Daemon:
    """One JVM of the cluster: its role name (``master``, ``worker-1``...), pid file and log."""

    name: str
    pid_file: Path
    log_file: Path


class SparkCluster(Service):
    """A Spark standalone master and ``workers`` workers under ``state_dir``, all on 127.0.0.1.

    ``port`` (the master's RPC port), ``ui_port`` (its web UI and JSON endpoint) and
    ``worker_ui_ports`` come from the arguments, else from ``$ICEFIELD_SPARK_PORT``,
    ``$ICEFIELD_SPARK_UI_PORT`` and ``$ICEFIELD_SPARK_WORKER_UI_PORT`` (worker *i* gets that
    port + *i* - 1), else 17077, 17080 and 17081. ``worker_cores`` and ``worker_memory`` are what
    each worker offers to executors.
    """

    name = "spark"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        worker_ui_ports: tuple[int, ...] | None = None,
        workers: int = 2,
        worker_cores: int = 1,
        worker_memory: str = "1g",
        fast: bool = False,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad value."""
        super().__init__(base_dir, fast=fast)
        if workers < 1:
            raise StackError(f"a Spark cluster needs at least one worker, not {workers}")
        self._port = port if port is not None else read_port_env(SPARK_PORT_ENV, SPARK_PORT_DEFAULT)
        self.ui_port = ui_port if ui_port is not None else read_port_env(SPARK_UI_PORT_ENV, SPARK_UI_PORT_DEFAULT)
        if worker_ui_ports is None:
            first = read_port_env(SPARK_WORKER_UI_PORT_ENV, SPARK_WORKER_UI_PORT_DEFAULT)
            worker_ui_ports = tuple(first + i for i in range(workers))
        if len(worker_ui_ports) != workers:
            raise StackError(f"give one web UI port per worker: {workers} workers, ports {worker_ui_ports}")
        for p in (self._port, self.ui_port, *worker_ui_ports):
            if not 1 <= p <= 65535:
                raise StackError(f"Spark cluster port {p} is out of range 1-65535")
        self.worker_ui_ports = worker_ui_ports
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self._java: str | None = None
        self._spark_home: Path | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """The master URL drivers connect to: ``spark://127.0.0.1:<port>``."""
        return f"spark://{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        """The master's web UI (its state as JSON under ``/json/``)."""
        return f"http://{self.host}:{self.ui_port}"

    def worker_ui_url(self, index: int) -> str:
        """The web UI of worker ``index`` (1-based; its state as JSON under ``/json/``)."""
        return f"http://{self.host}:{self.worker_ui_ports[index - 1]}"

    def ports(self) -> tuple[int, ...]:
        """Every fixed port the cluster binds (checked free before a start)."""
        return (self.port, self.ui_port, *self.worker_ui_ports)

    # ------------------------------------------------------------------ layout

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def master(self) -> Daemon:
        return Daemon("master", self.state_dir / "master.pid", self.state_dir / "master.log")

    @property
    def workers(self) -> list[Daemon]:
        return [
            Daemon(f"worker-{i}", self.state_dir / f"worker-{i}.pid", self.state_dir / f"worker-{i}.log")
            for i in range(1, len(self.worker_ui_ports) + 1)
        ]

    def work_dir(self, index: int) -> Path:
        """Worker ``index``'s work dir: ``<app id>/<executor id>/stderr`` for each executor it ran."""
        return self.state_dir / "work" / f"worker-{index}"

    @property
    def local_dir(self) -> Path:
        return self.state_dir / "local"

    # ------------------------------------------------------------------ install and commands

    def install(self) -> None:
        """Find pyspark 4.1 (its jars are the cluster's) and Java 17/21; raise ServiceNotInstalled naming the fix."""
        pyspark = import_pyspark()
        home = Path(pyspark.__file__).resolve().parent
        if not any((home / "jars").glob("spark-core_*.jar")):
            raise SparkNotInstalled(f"{home}/jars holds no Spark jars: reinstall pyspark (pip install -r requirements/spark.txt)")
        self._spark_home = home
        self._java = _ensure_java()

    def _jvm(self, main_class: str, args: list[str]) -> list[str]:
        assert self._java is not None and self._spark_home is not None, "install() first"
        return [
            self._java,
            f"-Xmx{DAEMON_HEAP}",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",
            "-Djava.net.preferIPv4Stack=true",
            # The master's REST submission server would bind 6066 on every start: not needed here.
            "-Dspark.master.rest.enabled=false",
            "-Dspark.ui.showConsoleProgress=false",
            "-cp",
            f"{self._spark_home}/jars/*",
            main_class,
            *args,
        ]

    def master_command(self) -> list[str]:
        """The master's ``java ... Master --host 127.0.0.1 --port P --webui-port W`` argv."""
        return self._jvm(MASTER_CLASS, ["--host", self.host, "--port", str(self.port), "--webui-port", str(self.ui_port)])

    def worker_command(self, index: int) -> list[str]:
        """Worker ``index``'s ``java ... Worker spark://... --host 127.0.0.1 --cores C --memory M`` argv."""
        return self._jvm(WORKER_CLASS, [
            self.url(),
            "--host", self.host,
            "--cores", str(self.worker_cores),
            "--memory", self.worker_memory,
            "--webui-port", str(self.worker_ui_ports[index - 1]),
            "--work-dir", str(self.work_dir(index)),
        ])

    def environment(self) -> dict[str, str]:
        """The daemons' environment (inherited by the executors): 127.0.0.1, the pyspark home, scratch dirs."""
        assert self._java is not None and self._spark_home is not None, "install() first"
        drop = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "SPARK_CONF_DIR",
                "SPARK_MASTER_HOST", "SPARK_MASTER_PORT", "SPARK_WORKER_DIR", "SPARK_WORKER_OPTS",
                "SPARK_MASTER_OPTS", "SPARK_DAEMON_JAVA_OPTS")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            SPARK_HOME=str(self._spark_home),
            SPARK_SCALA_VERSION=SPARK_SCALA_VERSION,
            SPARK_LOCAL_IP=self.host,
            SPARK_LOCAL_DIRS=str(self.local_dir),
            # The executors a worker starts use the same JVM as the daemons.
            JAVA_HOME=str(Path(os.path.realpath(self._java)).parent.parent),
        )
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> bool:
        """Launch the master and the workers that do not run yet; return True if this call launched any.

        Raises :class:`ServiceStartError` if a port is taken by another process.
        """
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_file):
            down = [d for d in (self.master, *self.workers) if _running_pid(d) is None]
            if not down:
                logger.info("spark cluster already running (master pid %s)", _running_pid(self.master))
                return False
            wanted = {self.master.name: [self.port, self.ui_port]}
            wanted.update({w.name: [self.worker_ui_ports[i]] for i, w in enumerate(self.workers)})
            busy = [p for d in down for p in wanted[d.name] if port_open(self.host, p)]
            if busy:
                raise ServiceStartError(
                    f"spark: port(s) {', '.join(map(str, busy))} on {self.host} already in use by another process; "
                    f"choose others with {SPARK_PORT_ENV}, {SPARK_UI_PORT_ENV} and {SPARK_WORKER_UI_PORT_ENV}"
                )
            self.local_dir.mkdir(parents=True, exist_ok=True)
            env = self.environment()
            for daemon in down:
                if daemon.name == "master":
                    argv = self.master_command()
                else:
                    index = int(daemon.name.rpartition("-")[2])
                    self.work_dir(index).mkdir(parents=True, exist_ok=True)
                    argv = self.worker_command(index)
                logger.info("starting spark %s (log %s)", daemon.name, daemon.log_file)
                with open(daemon.log_file, "a") as log:
                    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting spark {daemon.name}\n")
                pid = spawn_detached(argv, daemon.log_file, env=env, cwd=self.state_dir)
                daemon.pid_file.write_text(f"{pid}\n")
            return True

    def master_state(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The master's state as its web UI serves it (``/json/``: workers, applications), or None if it
        does not answer."""
        return _get_json(f"{self.ui_url}/json/", timeout)

    def worker_state(self, index: int, timeout: float = 5.0) -> dict[str, Any] | None:
        """Worker ``index``'s state (``/json/``: its executors, running and finished), or None."""
        return _get_json(f"{self.worker_ui_url(index)}/json/", timeout)

    def alive_workers(self) -> int:
        """How many workers the master lists as ALIVE (0 if it does not answer)."""
        state = self.master_state()
        if state is None:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the master lists every worker as ALIVE; raise :class:`ServiceStartError` with the
        log tail of a daemon that exited, or of all of them after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        want = len(self.workers)
        while True:
            for daemon in (self.master, *self.workers):
                if _running_pid(daemon) is None:
                    raise ServiceStartError(
                        f"spark {daemon.name} is not running (it exited or was never started); "
                        f"log {daemon.log_file}:\n{tail(daemon.log_file)}"
                    )
            if port_open(self.host, self.ui_port) and (alive := self.alive_workers()) >= want:
                logger.info("spark cluster ready at %s with %d workers", self.url(), alive)
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {d.log_file}:\n{tail(d.log_file, 10)}" for d in (self.master, *self.workers))
                raise ServiceStartError(
                    f"spark master at {self.url()} lists {self.alive_workers()} of {want} workers ALIVE after "
                    f"{timeout:.0f}s (JSON at {self.ui_url}/json/)\n{logs}"
                )
            time.sleep(0.5)

    def up(self, timeout: float = 120.0) -> bool:
        """Install, start and wait until every worker is registered (three JVMs: the default wait is longer)."""
        return super().up(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the workers (they stop their executors), then the master, by pid: SIGTERM, then SIGKILL.

        Returns True if any of them ran; raises :class:`StackError` if one survives.
        """
        if not self.state_dir.is_dir():
            return False
        stopped = False
        with file_lock(self.lock_file):
            for daemon in (*self.workers, self.master):
                pid = _running_pid(daemon)
                if pid is not None:
                    logger.info("stopping spark %s (pid %d)", daemon.name, pid)
                    # SIGTERM: a JVM started in the background by sh ignores SIGINT and SIGQUIT (POSIX).
                    if not kill_pid(pid, timeout, signals=(signal.SIGTERM, signal.SIGKILL)):
                        raise StackError(f"spark {daemon.name} pid {pid} survived SIGKILL; see {daemon.log_file}")
                    stopped = True
                daemon.pid_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> ServiceStatus:
        """Running when the master and every worker run (pid files of live JVMs); pid is the master's."""
        pids = [_running_pid(d) for d in (self.master, *self.workers)]
        return ServiceStatus(
            name=self.name,
            running=all(p is not None for p in pids),
            host=self.host,
            port=self.port,
            pid=pids[0],
            url=self.url(),
            state_dir=self.state_dir,
            log_file=self.master.log_file,
        )


def _running_pid(daemon: Daemon) -> int | None:
    """The recorded pid if that process is alive and is a JVM (a reused pid reads as not running)."""
    return recorded_pid(daemon.pid_file, "java")


def _get_json(url: str, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = [
    "SPARK_PORT_DEFAULT",
    "SPARK_PORT_ENV",
    "SPARK_UI_PORT_DEFAULT",
    "SPARK_UI_PORT_ENV",
    "SPARK_WORKER_UI_PORT_DEFAULT",
    "SPARK_WORKER_UI_PORT_ENV",
    "SparkCluster",
]
