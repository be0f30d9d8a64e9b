"""Fetching Java software from Maven Central with Maven, into icefield's download cache.

Every launcher that runs a JVM (Spark, Kafka, Kafka Connect) gets its jars here, never through a
build: Maven's dependency plugin copies one artifact (:func:`copy_artifact`) or the runtime closure
of a small assembly POM kept in ``stack/poms/`` (:func:`copy_dependencies`). Downloads land in
``~/.m2`` and in :func:`cache_dir`, both outside the checkout, so a second checkout, the tests and
CI reuse them. Every copy goes to a temporary folder first and is renamed into place under a file
lock: concurrent callers never see half a jar or half a classpath.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .base import ServiceNotInstalled, StackError, file_lock, run_command

logger = logging.getLogger(__name__)

CACHE_ENV = "ICEFIELD_CACHE"
"""Environment variable that moves icefield's download cache (default ``$XDG_CACHE_HOME/icefield``)."""
MAVEN_INSTALL_HINT = "apt-get install maven"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
"""Pinned: Maven 3.8's built-in default for the plugin is too old for ``copy`` with classifiers."""
POMS_DIR = Path(__file__).resolve().parent / "poms"
"""The assembly POMs (one per classpath) that :func:`copy_dependencies` resolves."""

_STAMP = ".icefield-complete"


def cache_dir() -> Path:
    """Return ``$ICEFIELD_CACHE``, else ``$XDG_CACHE_HOME/icefield``, else ``~/.cache/icefield``.

    Reads the environment when called; creates nothing.
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "icefield").absolute()


def nonempty(path: Path) -> bool:
    """Return True if ``path`` is a file with at least one byte."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def find_mvn(purpose: str, error: type[ServiceNotInstalled] = ServiceNotInstalled) -> str:
    """Return the path of ``mvn``; raise ``error`` naming ``purpose`` and the install command if missing."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise error(f"Maven (`mvn`) is needed to fetch {purpose}: run `{MAVEN_INSTALL_HINT}`")
    return mvn


def copy_artifact(mvn: str, coordinate: str, dest: Path, timeout: float = 900.0) -> None:
    """Copy the artifact ``coordinate`` (``group:artifact:version[:type[:classifier]]``) to ``dest``.

    ``dest.name`` must be the file name Maven gives it (``artifact-version[-classifier].type``). The
    copy goes through a temporary folder beside ``dest`` and is renamed into place; the caller holds
    the lock. Raises :class:`StackError` with Maven's output when the fetch fails.
    """
    logger.info("fetching %s with Maven into %s", coordinate, dest.parent)
    t0 = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        run_command(
            [mvn, "-q", "-B", f"{MAVEN_DEPENDENCY_PLUGIN}:copy", f"-Dartifact={coordinate}", f"-DoutputDirectory={tmp}"],
            timeout=timeout,
            cwd=Path(tmp),  # never pick up a pom.xml from the caller's directory
        )
        fetched = Path(tmp) / dest.name
        if not nonempty(fetched):
            raise StackError(f"Maven reported success but {fetched.name} is not in {tmp} (fetching {coordinate})")
        os.replace(fetched, dest)
    logger.info("fetched %s in %.1fs", dest.name, time.monotonic() - t0)


def ensure_artifact(coordinate: str, dest: Path, *, purpose: str, timeout: float = 900.0) -> Path:
    """Return ``dest``, fetching ``coordinate`` there first (under a lock) if it is missing or empty.

    Raises :class:`ServiceNotInstalled` when Maven is missing and :class:`StackError` when it fails.
    """
    if nonempty(dest):
        return dest
    mvn = find_mvn(purpose)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / ".lock"):
        if not nonempty(dest):  # another process may have fetched it while we waited
            copy_artifact(mvn, coordinate, dest, timeout)
    return dest


def copy_dependencies(
    pom: Path,
    dest: Path,
    properties: Mapping[str, str] | None = None,
    *,
    purpose: str,
    timeout: float = 900.0,
) -> Path:
    """Return ``dest``, a folder holding the runtime classpath of the assembly POM ``pom``.

    ``properties`` are passed as ``-Dkey=value`` (the POM's versions). The folder is complete when it
    holds a stamp with the digest of the POM and the properties; otherwise the closure is copied by
    ``maven-dependency-plugin:copy-dependencies`` into a temporary folder and swapped in under a
    lock. Idempotent: the usual call costs one small read. Raises :class:`ServiceNotInstalled` when
    Maven is missing and :class:`StackError` with Maven's output when it fails.
    """
    props = dict(sorted((properties or {}).items()))
    digest = hashlib.sha256(pom.read_bytes() + repr(props).encode()).hexdigest()[:16]
    stamp = dest / _STAMP
    if _stamp_matches(stamp, digest):
        return dest
    mvn = find_mvn(purpose)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if _stamp_matches(stamp, digest):
            return dest
        logger.info("assembling %s from %s with Maven into %s", purpose, pom.name, dest)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
            staging = Path(tmp) / "libs"
            run_command(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                    *(f"-D{k}={v}" for k, v in props.items()),
                ],
                timeout=timeout,
                cwd=Path(tmp),
            )
            if not any(staging.glob("*.jar")):
                raise StackError(f"Maven reported success but copied no jar for {pom} into {staging}")
            (staging / _STAMP).write_text(digest + "\n")
            old = Path(tmp) / "old"
            if dest.exists():
                os.replace(dest, old)
            os.replace(staging, dest)
        logger.info("assembled %s (%d jars) in %.1fs", purpose, len(list(dest.glob("*.jar"))), time.monotonic() - t0)
    return dest


def _stamp_matches(stamp: Path, digest: str) -> bool:
    try:
        return stamp.read_text().strip() == digest
    except OSError:
        return False
