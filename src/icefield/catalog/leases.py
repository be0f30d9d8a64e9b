"""Writer leases: one run at a time writes a table.

Two runs of one pipeline started together would read the same source range and race to commit it. The
batch check of the writer keeps each batch exactly once, but the losing run still reads the source for
nothing and, where batch boundaries depend on when the source was read (a ``sql`` cursor while rows
arrive), its batches would not match the winner's. So a run first takes the lease of its target table, a
row in the catalog's own database (``icefield_leases``, beside pyiceberg's tables), and gives it back when
it ends. A second run finds the lease held and waits for it (``wait`` seconds) or refuses with
:class:`LeaseHeldError`, naming the run that holds it.

A lease is renewed by a heartbeat thread every ``ttl / 3`` seconds. A holder that died is detected at once
on the same host (its process is gone) and after ``ttl`` seconds elsewhere (its heartbeat stopped); the
next run then takes the lease over. A holder that stalled longer than ``ttl`` may lose its lease: its
commits are then still checked by the writer (batch ids and the source position it started from), so
nothing lands twice.

A REST catalog has no database of icefield's: its leases live in the database ``catalog.leases`` names
(SQLite under ``.icefield/leases.db`` by default, which serialises runs on one machine; a shared
PostgreSQL serialises them everywhere). A catalog with neither gets no lease; the writer's checks still hold.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icefield.errors import TransientError

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

LEASE_TABLE = "icefield_leases"
DEFAULT_TTL = 60.0
POLL_SECONDS = 0.5


class LeaseHeldError(TransientError):
    """Another run holds the lease of the table this run would write; nothing was read or written."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the run, what it runs, and where."""

    run_id: str
    writer: str
    host: str
    pid: int
    started: str
    """The holder process's start time as the OS reports it (tells a reused pid from the holder)."""
    acquired_at: float
    renewed_at: float
    expires_at: float

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = dt.datetime.fromtimestamp(self.acquired_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"run {self.run_id} of {self.writer} (pid {self.pid} on {self.host}, since {since}, "
            f"last heartbeat {max(0.0, now - self.renewed_at):.0f} s ago)"
        )


class Lease:
    """A held lease; renewed in the background until :meth:`release` (or leaving the ``with`` block)."""

    def __init__(self, leases: SqlLeases | None, key: str, holder: Holder | None) -> None:
        self._leases = leases
        self.key = key
        self.holder = holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        """True once a renewal found the lease taken over (this run stalled past its ttl)."""

    def _start_heartbeat(self, ttl: float) -> None:
        if self._leases is None:
            return
        self._thread = threading.Thread(target=self._beat, args=(ttl,), name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def _beat(self, ttl: float) -> None:
        assert self._leases is not None and self.holder is not None
        while not self._stop.wait(ttl / 3):
            try:
                if not self._leases.renew(self.key, self.holder.run_id, ttl):
                    self.lost = True
                    log.warning("the lease of %s was taken over by another run; this run's commits are still checked", self.key)
                    return
            except Exception as e:  # a catalog hiccup: the next beat tries again before the ttl runs out
                log.warning("could not renew the lease of %s: %r", self.key, e)

    def release(self) -> None:
        """Stop renewing and give the lease back (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._leases is not None and self.holder is not None and not self.lost:
            try:
                self._leases.release(self.key, self.holder.run_id)
            except Exception as e:  # it expires on its own
                log.warning("could not release the lease of %s: %r; it expires on its own", self.key, e)
        self._leases = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(catalog: Catalog, key: str, run_id: str, writer: str, wait: float = 0.0, ttl: float = DEFAULT_TTL) -> Lease:
    """Take the lease ``key`` (a table name) for ``run_id`` of ``writer`` (``pipeline orders``, say).

    Waits up to ``wait`` seconds while another live run holds it, then raises :class:`LeaseHeldError`
    naming that run. A lease whose holder died (its process is gone on this host, or its heartbeat is
    older than its ttl) is taken over. Returns the :class:`Lease`; release it when the run ends.
    """
    # A SQL catalog's own database; a REST catalog's lease database (attached by ``open_catalog``).
    engine = getattr(catalog, "engine", None) or getattr(catalog, "lease_engine", None)
    if engine is None:
        log.debug("catalog %s has no SQL database: no lease for %s", getattr(catalog, "name", "?"), key)
        return Lease(None, key, None)
    leases = SqlLeases(engine, str(getattr(catalog, "name", "")))
    deadline = time.monotonic() + max(wait, 0.0)
    announced = False
    while True:
        holder, current = leases.try_acquire(key, run_id, writer, ttl)
        if holder is not None:
            lease = Lease(leases, key, holder)
            lease._start_heartbeat(ttl)
            return lease
        assert current is not None
        if time.monotonic() >= deadline:
            hint = "wait for it to end, or pass --wait DURATION to wait for it" if wait <= 0 else "it is still running; wait longer or stop it"
            raise LeaseHeldError(
                f"table {key} is being written by {current.describe()}; this run of {writer} read and wrote nothing: {hint}"
            )
        if not announced:
            log.warning("table %s is being written by %s; waiting up to %.0f s", key, current.describe(), wait)
            announced = True
        time.sleep(POLL_SECONDS)


class SqlLeases:
    """Leases as rows of ``icefield_leases`` in the catalog's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, catalog_name: str) -> None:
        self.engine = engine
        self.catalog_name = catalog_name
        self._table = _lease_table()
        try:
            self._table.metadata.create_all(engine, checkfirst=True)
        except Exception:
            # Two processes creating it at once: one of them loses the race, and the table is there.
            from sqlalchemy import inspect

            if not inspect(engine).has_table(LEASE_TABLE):
                raise

    def try_acquire(self, key: str, run_id: str, writer: str, ttl: float) -> tuple[Holder | None, Holder | None]:
        """``(our holder, None)`` when taken, ``(None, the live holder)`` when another run holds it."""
        from sqlalchemy import and_, insert, select, update
        from sqlalchemy.exc import IntegrityError

        t = self._table
        now = time.time()
        mine = Holder(run_id, writer, _host(), os.getpid(), _process_start(os.getpid()), now, now, now + ttl)
        row = {"catalog_name": self.catalog_name, "lease_key": key, **_columns(mine)}
        try:
            with self.engine.begin() as con:
                con.execute(insert(t).values(**row))
            return mine, None
        except IntegrityError:
            pass
        where = and_(t.c.catalog_name == self.catalog_name, t.c.lease_key == key)
        with self.engine.begin() as con:
            found = con.execute(select(t).where(where)).mappings().first()
        if found is None:  # released meanwhile: try again
            return self.try_acquire(key, run_id, writer, ttl)
        current = _holder(found)
        if current.run_id != run_id and not _dead(current, now):
            return None, current
        # Its holder is gone: take it over, unless another run took it first (compare and swap).
        with self.engine.begin() as con:
            taken = con.execute(
                update(t).where(and_(where, t.c.run_id == current.run_id, t.c.renewed_at == current.renewed_at)).values(**_columns(mine))
            ).rowcount
        if taken == 1:
            log.warning("took over the lease of %s from %s, which is gone", key, current.describe(now))
            return mine, None
        return self.try_acquire(key, run_id, writer, ttl)

    def renew(self, key: str, run_id: str, ttl: float) -> bool:
        """Extend the lease; False when it is no longer ``run_id``'s."""
        from sqlalchemy import and_, update

        t = self._table
        now = time.time()
        with self.engine.begin() as con:
            n = con.execute(
                update(t)
                .where(and_(t.c.catalog_name == self.catalog_name, t.c.lease_key == key, t.c.run_id == run_id))
                .values(renewed_at=now, expires_at=now + ttl)
            ).rowcount
        return bool(n == 1)

    def release(self, key: str, run_id: str) -> None:
        from sqlalchemy import and_, delete

        t = self._table
        with self.engine.begin() as con:
            con.execute(delete(t).where(and_(t.c.catalog_name == self.catalog_name, t.c.lease_key == key, t.c.run_id == run_id)))


def _lease_table() -> Any:
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table

    return Table(
        LEASE_TABLE,
        MetaData(),
        Column("catalog_name", String(255), primary_key=True),
        Column("lease_key", String(1024), primary_key=True),
        Column("run_id", String(64), nullable=False),
        Column("writer", String(1024), nullable=False),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started", String(64), nullable=False),
        Column("acquired_at", Float, nullable=False),
        Column("renewed_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False),
    )


def _columns(h: Holder) -> dict[str, Any]:
    return {
        "run_id": h.run_id,
        "writer": h.writer,
        "host": h.host,
        "pid": h.pid,
        "started": h.started,
        "acquired_at": h.acquired_at,
        "renewed_at": h.renewed_at,
        "expires_at": h.expires_at,
    }


def _holder(row: Any) -> Holder:
    return Holder(
        row["run_id"], row["writer"], row["host"], int(row["pid"]), row["started"],
        float(row["acquired_at"]), float(row["renewed_at"]), float(row["expires_at"]),
    )


def _dead(h: Holder, now: float) -> bool:
    """True when the holder cannot be running: its lease expired, or on this host its process is gone
    (or the pid now belongs to a process started at another time)."""
    if h.expires_at < now:
        return True
    if h.host != _host():
        return False
    try:
        os.kill(h.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user: alive
        return False
    return _process_start(h.pid) != h.started


def _host() -> str:
    """This machine: its host name and boot id (a container's pids are its own; a reboot ends every run)."""
    boot = ""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _process_start(pid: int) -> str:
    """When process ``pid`` started, in the OS's clock ticks since boot ('' where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""

