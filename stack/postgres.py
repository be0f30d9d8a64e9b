"""PostgreSQL from the Debian packages, started natively on 127.0.0.1 (``wal_level=logical``).

Layout under ``state_dir`` (``<base>/postgres``)::

    data/            the cluster (initdb'd once, kept between runs)
    run/             unix socket directory (never /var/run)
    postgres.log     server log (pg_ctl -l)
    pid              postmaster pid recorded once the server answered
    lock             serialises concurrent start/stop

The superuser is ``icefield`` / ``icefield`` (scram-sha-256 over TCP from 127.0.0.1, plus a
``replication`` line for Debezium). Only the server's own binaries are used: no Python driver here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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
    process_name,
    run_command,
    tail,
    wait_for_exit,
)

logger = logging.getLogger(__name__)

PG_PORT_ENV = "ICEFIELD_PG_PORT"
PG_PORT_DEFAULT = 55432  # not 5432: a system cluster may own that one
PG_USER = "icefield"
PG_PASSWORD = "icefield"
PG_DEFAULT_DB = "postgres"
PG_SYSTEM_USER = "postgres"  # created by the Debian package; PostgreSQL refuses to run as root
PG_ROOT = Path("/usr/lib/postgresql")
PG_INSTALL_HINT = "apt-get install postgresql"
PG_MAX_WAL_SENDERS = 10
PG_MAX_REPLICATION_SLOTS = 10
SQLALCHEMY_DRIVER = "postgresql+psycopg2"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_CLIENT_BINARIES = ("psql", "pg_isready", "createdb", "dropdb")
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# sun_path holds 108 bytes with the NUL; the socket file itself is "/.s.PGSQL.<port>" (<= 16).
_SOCKET_DIR_MAX = 107 - 16
_PIDFILE_GRACE = 15.0
_FALLBACK_ROOT = Path("/tmp")  # world-traversable on every Debian system, unlike $TMPDIR or /root


def find_pg_bindir(root: Path = PG_ROOT) -> Path | None:
    """Return ``<root>/<version>/bin`` for the highest installed version that has a server, or None."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if not root.is_dir():
        return None
    for entry in root.iterdir():
        bindir = entry / "bin"
        if not all((bindir / exe).is_file() for exe in _SERVER_BINARIES + _CLIENT_BINARIES):
            continue
        try:
            version = tuple(int(part) for part in entry.name.split("."))
        except ValueError:
            continue
        candidates.append((version, bindir))
    return max(candidates)[1] if candidates else None


@dataclass(frozen=True)
class _RunAs:
    """Who runs the server binaries, and the argv prefix that switches to them."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    prefix: tuple[str, ...]


def _run_as() -> _RunAs:
    """Return the identity for initdb/pg_ctl: the ``postgres`` user when root, else ourselves.

    Raises :class:`ServiceNotInstalled` if root and the user or a switching tool is missing.
    """
    if os.geteuid() != 0:
        return _RunAs(os.geteuid(), os.getegid(), tuple(os.getgroups()), ())
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError as e:
        raise ServiceNotInstalled(
            f"running as root, but the system user {PG_SYSTEM_USER!r} that PostgreSQL must run as "
            f"does not exist; `{PG_INSTALL_HINT}` creates it"
        ) from e
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    if shutil.which("runuser"):
        prefix: tuple[str, ...] = ("runuser", "-u", PG_SYSTEM_USER, "--")
    elif shutil.which("setpriv"):
        prefix = ("setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--")
    else:
        raise ServiceNotInstalled(
            "running as root needs `runuser` or `setpriv` to start PostgreSQL as the postgres user; "
            "`apt-get install util-linux` provides both"
        )
    return _RunAs(entry.pw_uid, entry.pw_gid, groups, prefix)


def _can_traverse(path: Path, uid: int, groups: tuple[int, ...]) -> bool:
    """Return True if ``uid`` (member of ``groups``) may search every existing ancestor of ``path``.

    Mode bits only (ACLs are ignored); a component that does not exist yet counts as reachable
    because :func:`_makedirs_reachable` creates it 0755.
    """
    if uid == 0:
        return True
    for directory in [path, *path.parents]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _makedirs_reachable(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0755 whatever the umask (so postgres can reach them).

    Raises :class:`StackError` if an existing component under /tmp is a symlink or owned by
    someone else (predictable /tmp names are a classic hijack).
    """
    missing: list[Path] = []
    for directory in [path, *path.parents]:
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
    if path.is_relative_to(_FALLBACK_ROOT):
        for directory in [path, *path.parents]:
            if directory == _FALLBACK_ROOT:
                break
            info = directory.lstat()
            if stat.S_ISLNK(info.st_mode) or info.st_uid not in (os.geteuid(), _safe_pg_uid()):
                raise StackError(
                    f"refusing to use {directory}: it is a symlink or owned by uid {info.st_uid}; "
                    f"remove it or set ICEFIELD_STACK_DIR to a directory of yours"
                )


def _safe_pg_uid() -> int:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER).pw_uid
    except KeyError:
        return os.geteuid()


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything below it (not following symlinks) to ``uid:gid``."""
    os.chown(path, uid, gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _client_env() -> dict[str, str]:
    """The environment for PostgreSQL binaries: ours minus every ``PG*`` variable.

    A developer's PGHOST/PGPORT/PGDATA/PGSERVICE must not redirect the launcher or the tests.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    env["PGCONNECT_TIMEOUT"] = "5"
    env["PGAPPNAME"] = "icefield-stack"
    return env


class Postgres(Service):
    """A PostgreSQL cluster under ``state_dir``, listening on 127.0.0.1:``port`` only.

    ``port`` comes from the argument, else ``$ICEFIELD_PG_PORT``, else 55432. ``fast=True`` turns
    off fsync and full_page_writes (a crash of the machine may then corrupt the cluster: tests
    only); synchronous_commit stays on so logical decoding sees each commit at once. Settings are
    rewritten at every start, so they follow the launcher.
    """

    name = "postgres"
    user = PG_USER
    password = PG_PASSWORD

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        bindir: Path | str | None = None,
    ) -> None:
        """Configure the launcher; touches nothing on disk.

        Raises :class:`StackError` if ``$ICEFIELD_PG_PORT`` or ``port`` is not a valid TCP port.
        """
        super().__init__(base_dir, fast=fast)
        if port is None:
            raw = os.environ.get(PG_PORT_ENV)
            try:
                port = int(raw) if raw else PG_PORT_DEFAULT
            except ValueError as e:
                raise StackError(
                    f"{PG_PORT_ENV}={raw!r} is not a port number; unset it or use e.g. 55432"
                ) from e
        if not 1 <= port <= 65535:
            raise StackError(f"PostgreSQL port {port} is out of range 1-65535")
        self._port = port
        self._bindir = Path(bindir) if bindir is not None else None
        self._identity: _RunAs | None = None
        self._state_dir: Path | None = None
        self._launched_at: float | None = None

    # ------------------------------------------------------------------ locations

    @property
    def port(self) -> int:
        """The configured TCP port (see :meth:`status` for the port of a running server)."""
        return self._port

    @property
    def state_dir(self) -> Path:
        """``<base>/postgres``, or a stand-in under /tmp when the postgres user cannot reach it.

        When we run as root, the server runs as ``postgres`` and must traverse every parent of its
        data dir. A base under a root-only path (the root user's home folder, pytest's temporary
        folder) is unreachable; rather than chmod the user's directories we move the state to
        ``/tmp/icefield-stack-<uid>-<hash of the base>/postgres``, stable for a given base.
        """
        if self._state_dir is None:
            wanted = self.base_dir / self.name
            if os.geteuid() == 0:
                pg_uid = _safe_pg_uid()
                try:
                    pg_groups = tuple(os.getgrouplist(PG_SYSTEM_USER, pwd.getpwuid(pg_uid).pw_gid))
                except KeyError:
                    pg_groups = ()
                if not _can_traverse(wanted, pg_uid, pg_groups):
                    digest = hashlib.sha1(str(self.base_dir).encode()).hexdigest()[:10]
                    fallback = _FALLBACK_ROOT / f"icefield-stack-{os.geteuid()}-{digest}" / self.name
                    logger.info(
                        "%s is not reachable by user %s; keeping state in %s",
                        wanted,
                        PG_SYSTEM_USER,
                        fallback,
                    )
                    wanted = fallback
            self._state_dir = wanted
        return self._state_dir

    @property
    def data_dir(self) -> Path:
        """The cluster directory (``state_dir/data``)."""
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        """The server log (``state_dir/postgres.log``)."""
        return self.state_dir / "postgres.log"

    @property
    def pid_file(self) -> Path:
        """Where the launcher records the postmaster pid once the server answered."""
        return self.state_dir / "pid"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory: ``state_dir/run``, or a short /tmp path if that is too long."""
        wanted = self.state_dir / "run"
        if len(str(wanted)) > _SOCKET_DIR_MAX:
            digest = hashlib.sha1(str(wanted).encode()).hexdigest()[:10]
            return _FALLBACK_ROOT / f"icefield-pg-{os.geteuid()}-{digest}"
        return wanted

    @property
    def bindir(self) -> Path:
        """The directory of the PostgreSQL binaries; raises :class:`ServiceNotInstalled` if none."""
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        if self._bindir is None or not (self._bindir / "pg_ctl").is_file():
            where = self._bindir if self._bindir is not None else PG_ROOT / "<version>" / "bin"
            raise ServiceNotInstalled(
                f"PostgreSQL server binaries not found in {where}; "
                f"install them with `{PG_INSTALL_HINT}` (.ci/run does this in CI)"
            )
        return self._bindir

    # ------------------------------------------------------------------ connection info

    def url(self, dbname: str = PG_DEFAULT_DB) -> str:
        """Return the SQLAlchemy URL ``postgresql+psycopg2://icefield:icefield@127.0.0.1:<port>/<dbname>``."""
        return f"{SQLALCHEMY_DRIVER}://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = PG_DEFAULT_DB) -> str:
        """Return a libpq keyword DSN (for psycopg2.connect, psql, Debezium-style configs)."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={dbname}"

    def connection_info(self, dbname: str = PG_DEFAULT_DB) -> dict[str, str | int]:
        """Return host, port, user, password and dbname as a dict."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
        }

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Check that the Debian PostgreSQL and, when root, the ``postgres`` user are present.

        Never installs anything itself. Raises :class:`ServiceNotInstalled` naming
        ``apt-get install postgresql`` when the binaries are missing.
        """
        bindir = self.bindir
        missing = [exe for exe in _SERVER_BINARIES + _CLIENT_BINARIES if not (bindir / exe).is_file()]
        if missing:
            raise ServiceNotInstalled(
                f"{bindir} lacks {', '.join(missing)}; reinstall with `{PG_INSTALL_HINT}`"
            )
        self._identity = _run_as()

    def start(self) -> bool:
        """Initialise the cluster if needed and launch the server without waiting for it.

        Returns False if a server already runs from this data dir on this port, True if this call
        launched one. Raises :class:`StackError` if the running server uses another port, and
        :class:`ServiceStartError` if the port is taken by another process or pg_ctl fails.
        """
        self.install()
        self._prepare_dirs()
        with file_lock(self.state_dir / "lock"):
            pid, port = self._postmaster()
            if pid is not None:
                if port is not None and port != self.port:
                    raise StackError(
                        f"PostgreSQL from {self.data_dir} already runs on port {port}, not {self.port}; "
                        f"stop it (python -m stack down postgres) or use port {port}"
                    )
                logger.info("postgres already running (pid %d, port %d)", pid, self.port)
                return False
            if port_open(self.host, self.port):
                raise ServiceStartError(
                    f"port {self.port} on {self.host} is already in use by another process; "
                    f"choose another with {PG_PORT_ENV}=<port> or Postgres(port=...)"
                )
            if not (self.data_dir / "PG_VERSION").is_file():
                self._initdb()
            self._write_config()
            self.pid_file.unlink(missing_ok=True)
            # Not running, so any postmaster.pid is stale (crash, reboot); wait_ready would read
            # it as "exited during startup" before the new postmaster replaces it.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            logger.info("starting postgres on %s:%d from %s", self.host, self.port, self.data_dir)
            self._server_command(
                ["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-W", "-s"],
                timeout=60,
            )
            self._launched_at = time.monotonic()
            return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until the server accepts an authenticated query as ``icefield``; record its pid.

        Raises :class:`ServiceStartError` with the log tail if the postmaster exits or ``timeout``
        seconds pass, and at once if the server answers but rejects our login.
        """
        deadline = time.monotonic() + timeout
        while True:
            pid, _ = self._postmaster()
            recorded = self._read_pid(self.data_dir / "postmaster.pid")
            if recorded is not None and pid is None:
                raise ServiceStartError(
                    f"PostgreSQL (pid {recorded}) exited during startup; log {self.log_file}:\n{tail(self.log_file)}"
                )
            if pid is not None:
                probe = run_command(
                    [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "2"],
                    env=_client_env(),
                    check=False,
                    timeout=10,
                )
                if probe.returncode == 0:
                    try:
                        self.psql("SELECT 1")
                    except StackError as e:
                        raise ServiceStartError(
                            f"PostgreSQL on port {self.port} answers but rejects {self.user!r}: {e}; "
                            f"if {self.data_dir} was made by another tool, remove it to re-initialise"
                        ) from e
                    self.pid_file.write_text(f"{pid}\n")
                    logger.info("postgres ready on %s:%d (pid %d)", self.host, self.port, pid)
                    return
            elif (
                recorded is None
                and self._launched_at is not None
                and time.monotonic() - self._launched_at > _PIDFILE_GRACE
            ):
                # The postmaster writes postmaster.pid right after reading its configuration; no
                # file this long after pg_ctl means it died on a bad setting or a busy port.
                raise ServiceStartError(
                    f"PostgreSQL did not come up within {_PIDFILE_GRACE:.0f}s of pg_ctl start; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"PostgreSQL not ready on {self.host}:{self.port} after {timeout:.0f}s "
                    f"(was it started?); log {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server with ``pg_ctl stop -m fast``, falling back to signalling its pid.

        Returns True if a server was running and is now gone, False if none was running. Raises
        :class:`StackError` if the process survives SIGKILL.
        """
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.state_dir / "lock"):
            pid, _ = self._postmaster()
            if pid is None:
                recorded = self._read_pid(self.pid_file)
                if recorded is not None and pid_alive(recorded) and self._is_postgres(recorded):
                    pid = recorded
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            logger.info("stopping postgres (pid %d)", pid)
            stopped = False
            if (self.data_dir / "postmaster.pid").is_file():
                try:
                    self._server_command(
                        [
                            "pg_ctl",
                            "stop",
                            "-D",
                            str(self.data_dir),
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            str(int(timeout)),
                        ],
                        timeout=timeout + 10,
                    )
                    # pg_ctl returns once postmaster.pid is gone; the process may linger a moment.
                    stopped = wait_for_exit(pid, 5.0)
                except StackError as e:
                    logger.warning("pg_ctl stop failed, signalling pid %d: %s", pid, e)
            if not stopped and not kill_pid(pid):
                raise StackError(f"PostgreSQL pid {pid} survived SIGKILL; see {self.log_file}")
            self.pid_file.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
        """Report running/pid/port from ``postmaster.pid``; changes nothing."""
        pid, port = self._postmaster()
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            host=self.host,
            port=port if port is not None else self.port,
            pid=pid,
            url=self.url(),
            state_dir=self.state_dir,
            log_file=self.log_file,
        )

    # ------------------------------------------------------------------ SQL helpers

    def psql(self, sql: str, dbname: str = PG_DEFAULT_DB) -> str:
        """Run ``sql`` with psql as ``icefield`` and return its unaligned, tuples-only output.

        Raises :class:`StackError` with psql's message if the statement fails.
        """
        result = self._client("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql)
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by ``icefield`` and return its SQLAlchemy URL.

        Raises :class:`StackError` if the name is not a plain identifier, the database exists or
        the server is not running.
        """
        self._check_db_name(name)
        self._client("createdb", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions first (``--force``).

        Raises :class:`StackError` if the name is invalid or the server refuses.
        """
        self._check_db_name(name)
        self._client("dropdb", "--if-exists", "--force", name)

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL client program as ``icefield`` against this server."""
        cmd = [str(self.bindir / tool), "-h", self.host, "-p", str(self.port), "-U", self.user, *args]
        return run_command(cmd, env=self._password_env(), timeout=60)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_db_name(name: str) -> None:
        if not _DB_NAME.fullmatch(name):
            raise StackError(f"database name {name!r} must match {_DB_NAME.pattern} (no quoting is done)")

    def _password_env(self) -> dict[str, str]:
        env = _client_env()
        env["PGPASSWORD"] = self.password  # not on the command line, where ps would show it
        return env

    def _identity_or_load(self) -> _RunAs:
        if self._identity is None:
            self._identity = _run_as()
        return self._identity

    def _server_command(self, argv: list[str], timeout: float = 120.0) -> None:
        """Run a server binary as the server's user, from a directory that user can enter."""
        who = self._identity_or_load()
        run_command(
            [*who.prefix, str(self.bindir / argv[0]), *argv[1:]],
            env=_client_env(),
            cwd=self.state_dir,
            timeout=timeout,
        )

    def _prepare_dirs(self) -> None:
        """Create the state and socket dirs and give them (and an existing cluster) to the server user."""
        who = self._identity_or_load()
        _makedirs_reachable(self.state_dir)
        _makedirs_reachable(self.socket_dir)
        if os.geteuid() != 0:
            return
        for path in (self.state_dir, self.socket_dir):
            os.chown(path, who.uid, who.gid)
        if self.log_file.exists():
            os.chown(self.log_file, who.uid, who.gid)
        # A cluster made by another user (a non-root run, a copied directory) would be refused.
        if self.data_dir.exists() and self.data_dir.stat().st_uid != who.uid:
            _chown_tree(self.data_dir, who.uid, who.gid)

    def _initdb(self) -> None:
        """Create the cluster with the ``icefield`` superuser and our pg_hba.conf."""
        who = self._identity_or_load()
        logger.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        pwfile = self.state_dir / ".initdb-password"
        pwfile.write_text(self.password + "\n")
        try:
            os.chmod(pwfile, 0o600)
            os.chown(pwfile, who.uid, who.gid)
            argv = [
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
            if self.fast:
                argv.append("--no-sync")
            self._server_command(argv, timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)
        hba = (
            "# Written by stack/postgres.py. TCP on 127.0.0.1 only, always with a password.\n"
            "# TYPE  DATABASE     USER  ADDRESS        METHOD\n"
            "local   all          all                  scram-sha-256\n"
            "host    all          all   127.0.0.1/32   scram-sha-256\n"
            "host    replication  all   127.0.0.1/32   scram-sha-256\n"
        )
        self._write_data_file("pg_hba.conf", hba)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# icefield stack settings, rewritten at every start\ninclude_if_exists = 'icefield.conf'\n"
            )

    def _write_config(self) -> None:
        """(Re)write ``icefield.conf`` with the port, addresses, replication and durability settings."""
        durable = "off" if self.fast else "on"
        # synchronous_commit stays on even when fast: with it off, a commit reaches logical
        # decoding (pg_logical_slot_get_changes, walsenders, Debezium) only after the WAL writer's
        # next flush, so CDC tests see "no changes yet" at random. With fsync off it costs ~nothing.
        socket_dir = str(self.socket_dir).replace("'", "''")
        self._write_data_file(
            "icefield.conf",
            "# Written by stack/postgres.py at every start: change the launcher, not this file.\n"
            f"listen_addresses = '{self.host}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "wal_level = logical\n"
            f"max_wal_senders = {PG_MAX_WAL_SENDERS}\n"
            f"max_replication_slots = {PG_MAX_REPLICATION_SLOTS}\n"
            f"fsync = {durable}\n"
            "synchronous_commit = on\n"
            f"full_page_writes = {durable}\n",
        )

    def _write_data_file(self, name: str, text: str) -> None:
        who = self._identity_or_load()
        path = self.data_dir / name
        path.write_text(text)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, who.uid, who.gid)

    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            first = path.read_text().split("\n", 1)[0].strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as e:
            raise StackError(f"cannot read {path}: {e}; run as root or as the server's user") from e
        return int(first) if first.isdigit() else None

    @staticmethod
    def _is_postgres(pid: int) -> bool:
        name = process_name(pid)
        return name is None or name in ("postgres", "postmaster")

    def _postmaster(self) -> tuple[int | None, int | None]:
        """Return (pid, port) of a live postmaster from ``postmaster.pid``, or (None, None).

        A stale file (crash, reboot, pid reused by something else) reads as not running.
        """
        path = self.data_dir / "postmaster.pid"
        try:
            lines = path.read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except PermissionError as e:
            raise StackError(f"cannot read {path}: {e}; run as root or as the server's user") from e
        # Line 1 is the pid, line 4 the port (see PostgreSQL's pidfile.h).
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        if pid is None or not pid_alive(pid) or not self._is_postgres(pid):
            return None, None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port
