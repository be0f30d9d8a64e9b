"""Apache Airflow 3 (the ``airflow`` extra): API server, scheduler, DAG processor and triggerer, started
natively from the ``airflow`` command of the Python environment that runs this launcher.

Each component is one detached process with its own log and pid file; they share ``AIRFLOW_HOME`` =
``state_dir`` (``<base>/airflow``), where ``airflow db migrate`` creates the metadata database on the first
start: SQLite (``airflow.db``) unless ``$ICEFIELD_AIRFLOW_DB`` (or ``db_url``) gives a PostgreSQL URL
(``postgresql+psycopg2://...``). The executor is ``LocalExecutor``. Layout::

    airflow.db                       the metadata database (SQLite)
    secrets/passwords.json           the users' passwords (0600), read by Airflow's simple auth manager
    secrets/keys.json                the JWT secret, API secret key and Fernet key (0600)
    api-server.log, api-server.pid   one log and pid file per component (scheduler.*, dag-processor.*,
                                     triggerer.*)
    pools.json                       the project's pools, imported at each start
    lock

Authentication is on: Airflow's simple auth manager with two users, ``admin`` (role admin) and ``viewer``
(role viewer: reads, cannot trigger). Their passwords are secrets: ``$ICEFIELD_AIRFLOW_ADMIN_PASSWORD``
and ``$ICEFIELD_AIRFLOW_VIEWER_PASSWORD`` when set, else random ones generated at the first start into
``secrets/passwords.json`` (readable by the owner only; :meth:`Airflow.password` reads them). Nothing
in a tracked file holds a password. The DAG folder is the repository's ``airflow/dags`` (or ``dags_folder``);
the project it generates DAGs for is ``$ICEFIELD_PROJECT`` (or ``project``), passed to every component.

Port: ``$ICEFIELD_AIRFLOW_PORT`` (18090), 127.0.0.1 only. Ready when ``/api/v2/monitor/health`` reports the
metadata database, scheduler, triggerer and DAG processor healthy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .base import (
    Service,
    ServiceNotInstalled,
    ServiceStartError,
    ServiceStatus,
    StackError,
    file_lock,
    kill_pid,
    pid_alive,
    port_open,
    run_command,
    tail,
)
from .jvm import read_port_env, spawn_detached

logger = logging.getLogger(__name__)

AIRFLOW_PORT_ENV = "ICEFIELD_AIRFLOW_PORT"
AIRFLOW_PORT_DEFAULT = 18090
AIRFLOW_DB_ENV = "ICEFIELD_AIRFLOW_DB"
ADMIN_PASSWORD_ENV = "ICEFIELD_AIRFLOW_ADMIN_PASSWORD"
VIEWER_PASSWORD_ENV = "ICEFIELD_AIRFLOW_VIEWER_PASSWORD"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USERS = {"admin": "admin", "viewer": "viewer"}
"""User name -> role of the simple auth manager."""
REPO_DAGS = Path(__file__).resolve().parent.parent / "airflow" / "dags"
INSTALL_HINT = (
    "install the airflow extra: pip install -e '.[airflow]' -c constraints/airflow-3.3.2-py3.11.txt (make venv does)"
)


class Airflow(Service):
    """Airflow's four components under ``state_dir`` on 127.0.0.1 (see the module docs)."""

    name = "airflow"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        dags_folder: Path | str | None = None,
        project: Path | str | None = None,
        db_url: str | None = None,
        env: dict[str, str] | None = None,
        fast: bool = False,
    ) -> None:
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(AIRFLOW_PORT_ENV, AIRFLOW_PORT_DEFAULT)
        self.dags_folder = Path(dags_folder).resolve() if dags_folder is not None else REPO_DAGS
        given = project if project is not None else os.environ.get("ICEFIELD_PROJECT")
        self.project = Path(given).resolve() if given else None
        self.db_url = db_url or os.environ.get(AIRFLOW_DB_ENV) or None
        self.extra_env = dict(env or {})
        self._airflow: str | None = None

    # ------------------------------------------------------------------ addresses and layout

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    def pid_file(self, component: str) -> Path:
        return self.state_dir / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.state_dir / f"{component}.log"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    # ------------------------------------------------------------------ install, secrets, environment

    def install(self) -> None:
        """Find the ``airflow`` command beside this Python (the extra's); raise ServiceNotInstalled if missing."""
        candidate = Path(sys.executable).parent / "airflow"
        found = str(candidate) if candidate.is_file() else shutil.which("airflow")
        if not found:
            raise ServiceNotInstalled(f"airflow: no `airflow` command beside {sys.executable}; {INSTALL_HINT}")
        self._airflow = found

    def _write_secret(self, name: str, values: dict[str, str]) -> None:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        fd = os.open(self.secrets_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)

    def _read_secret(self, name: str) -> dict[str, str]:
        try:
            values = json.loads((self.secrets_dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return values if isinstance(values, dict) else {}

    def _passwords(self) -> dict[str, str]:
        """The users' passwords: the environment's when set, else the stored ones, else new random ones
        (stored)."""
        have = self._read_secret("passwords.json")
        want = dict(have)
        for user, env in (("admin", ADMIN_PASSWORD_ENV), ("viewer", VIEWER_PASSWORD_ENV)):
            want[user] = os.environ.get(env) or have.get(user) or secrets.token_urlsafe(18)
        if want != have:
            self._write_secret("passwords.json", want)
        return want

    def password(self, user: str) -> str:
        """The password of ``user`` (``admin`` or ``viewer``), as the running server has it."""
        return self._passwords()[user]

    def _keys(self) -> dict[str, str]:
        from base64 import urlsafe_b64encode

        keys = self._read_secret("keys.json")
        if not {"jwt_secret", "secret_key", "fernet_key"} <= set(keys):
            keys = {
                "jwt_secret": secrets.token_urlsafe(32),
                "secret_key": secrets.token_urlsafe(32),
                "fernet_key": urlsafe_b64encode(os.urandom(32)).decode(),
            }
            self._write_secret("keys.json", keys)
        return keys

    def environment(self) -> dict[str, str]:
        """The components' environment: ``AIRFLOW_HOME``, the DAG folder, 127.0.0.1, auth, keys, database."""
        assert self._airflow is not None, "install() first"
        keys = self._keys()
        self._passwords()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        bin_dir = str(Path(self._airflow).parent)
        env.update(
            # The components start `airflow` subprocesses found on PATH.
            PATH=bin_dir + os.pathsep + env.get("PATH", ""),
            AIRFLOW_HOME=str(self.state_dir),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, r in USERS.items()),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.secrets_dir / "passwords.json"),
            AIRFLOW__CORE__FERNET_KEY=keys["fernet_key"],
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url()}/execution/",
            AIRFLOW__API__HOST=self.host,
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.url(),
            AIRFLOW__API__SECRET_KEY=keys["secret_key"],
            AIRFLOW__API_AUTH__JWT_SECRET=keys["jwt_secret"],
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.state_dir / "logs"),
        )
        if self.db_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.db_url
        if self.project is not None:
            env["ICEFIELD_PROJECT"] = str(self.project)
        env.update(self.extra_env)
        return env

    def airflow(self, *args: str, timeout: float = 120.0, check: bool = True) -> Any:
        """Run ``airflow ARGS`` against this installation (its home, database and settings)."""
        assert self._airflow is not None, "install() first"
        return run_command([self._airflow, *args], env=self.environment(), cwd=self.state_dir, timeout=timeout, check=check)

    # ------------------------------------------------------------------ lifecycle

    def _running_pid(self, component: str) -> int | None:
        try:
            text = self.pid_file(component).read_text().strip()
        except OSError:
            return None
        if not text.isdigit() or not pid_alive(int(text)):
            return None
        try:
            cmdline = Path(f"/proc/{text}/cmdline").read_bytes()
        except OSError:
            return int(text)
        return int(text) if b"airflow" in cmdline else None

    def start(self) -> bool:
        """Migrate the metadata database, import the project's pools and launch the components that do not
        run yet; return True if this call launched any."""
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_file):
            down = [c for c in COMPONENTS if self._running_pid(c) is None]
            if not down:
                return False
            if "api-server" in down and port_open(self.host, self.port):
                raise ServiceStartError(
                    f"airflow: port {self.port} on {self.host} is already in use by another process; choose another with {AIRFLOW_PORT_ENV}"
                )
            self.airflow("db", "migrate", timeout=300)
            self._import_pools()
            env = self.environment()
            assert self._airflow is not None
            for component in down:
                log = self.log_file(component)
                with open(log, "a") as f:
                    f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} icefield stack: starting airflow {component}\n")
                pid = spawn_detached([self._airflow, component], log, env=env, cwd=self.state_dir)
                self.pid_file(component).write_text(f"{pid}\n")
            return True

    def _import_pools(self) -> None:
        if self.project is not None:
            self.import_pools(self.project)

    def import_pools(self, project: Path | str) -> list[str]:
        """Create (or update) the pools of ``project``'s sources (``python -m icefield.integrations.airflow
        pools``, then ``airflow pools import``): a task whose pool does not exist is never scheduled. Returns
        the pool names."""
        out = run_command([sys.executable, "-m", "icefield.integrations.airflow", "pools", str(project)],
                          env=self.environment(), timeout=120)
        pools = self.state_dir / "pools.json"
        pools.write_text(out.stdout)
        names = sorted(json.loads(out.stdout))
        if names:
            self.airflow("pools", "import", str(pools), timeout=120)
        return names

    def health(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url()}/api/v2/monitor/health", timeout=timeout) as r:
                data = json.load(r)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        while True:
            for c in COMPONENTS:
                if self._running_pid(c) is None:
                    raise ServiceStartError(f"airflow {c} is not running (it exited); log {self.log_file(c)}:\n{tail(self.log_file(c))}")
            h = self.health()
            if h is not None and all((h.get(p) or {}).get("status") == "healthy" for p in parts):
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {self.log_file(c)}:\n{tail(self.log_file(c), 10)}" for c in COMPONENTS)
                raise ServiceStartError(f"airflow at {self.url()} is not healthy after {timeout:.0f}s (health: {h})\n{logs}")
            time.sleep(1.0)

    def up(self, timeout: float = 180.0) -> bool:
        return super().up(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the components by pid (SIGTERM, then SIGKILL), API server last; True if any ran."""
        if not self.state_dir.is_dir():
            return False
        stopped = False
        with file_lock(self.lock_file):
            for component in reversed(COMPONENTS):
                pid = self._running_pid(component)
                if pid is not None:
                    # The component's own children (task runners, DAG file parsers) share its session.
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGTERM)
                    if not kill_pid(pid, timeout, signals=(signal.SIGTERM, signal.SIGKILL)):
                        raise StackError(f"airflow {component} pid {pid} survived SIGKILL; see {self.log_file(component)}")
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    stopped = True
                self.pid_file(component).unlink(missing_ok=True)
        return stopped

    def status(self) -> ServiceStatus:
        pids = [self._running_pid(c) for c in COMPONENTS]
        return ServiceStatus(
            name=self.name,
            running=all(p is not None for p in pids),
            host=self.host,
            port=self.port,
            pid=pids[0],
            url=self.url(),
            state_dir=self.state_dir,
            log_file=self.log_file("api-server"),
        )

    # ------------------------------------------------------------------ REST API

    def token(self, user: str = "admin") -> str:
        """A JWT for ``user`` from ``POST /auth/token``."""
        body = json.dumps({"username": user, "password": self.password(user)}).encode()
        req = urllib.request.Request(f"{self.url()}/auth/token", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return str(json.load(r)["access_token"])

    def api(self, method: str, path: str, body: Any = None, user: str = "admin", token: str | None = None) -> tuple[int, Any]:
        """``method`` ``/api/v2/<path>`` as ``user``: (HTTP status, JSON body or text)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token or self.token(user)}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.url()}/api/v2/{path.lstrip('/')}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(errors="replace"), e.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text


__all__ = ["AIRFLOW_PORT_DEFAULT", "AIRFLOW_PORT_ENV", "Airflow"]
