"""Airflow pools per source: pipelines that read the same source share a pool, so a scheduler runs at most
the pool's number of them at once against one database, broker or folder. Plain Python (no Airflow).

A source is named by what identifies the system it reads, as written in the pipeline file (a secret
reference stays a reference, so no secret reaches a pool name): a ``sql`` source by its URL, a ``kafka``
source by its bootstrap servers, a ``debezium`` source by its bootstrap servers or its folder, a ``files``
source by the folder of its glob. The pool name is ``icefield_<type>_<10 hex digits of that identity>``.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icefield.config import PipelineConfig, Project

DEFAULT_SLOTS = 2
"""Runs a pool lets through at once, unless changed in Airflow (``airflow pools set NAME SLOTS ...``)."""


@dataclass(frozen=True)
class SourcePool:
    name: str
    slots: int
    description: str
    pipelines: tuple[str, ...]

    def to_airflow(self) -> dict[str, Any]:
        """The pool as ``airflow pools import`` reads it (one entry of its JSON object)."""
        return {"slots": self.slots, "description": self.description, "include_deferred": False}


def source_identity(pipe: PipelineConfig) -> tuple[str, str]:
    """(source type, what identifies the system the pipeline reads)."""
    src: Any = pipe.source
    kind = str(src.type)
    if kind == "sql":
        return kind, str(src.url)
    if kind == "kafka":
        return kind, str(src.bootstrap_servers)
    if kind == "files":
        return kind, posixpath.dirname(str(src.path)) or "."
    if kind == "http":  # one pool per API: its rate limit is shared by every endpoint
        return kind, str(src.base_url)
    if kind == "debezium":
        servers = getattr(src, "bootstrap_servers", None)
        return kind, str(servers) if servers else posixpath.dirname(str(src.path or "")) or "."
    return kind, str(getattr(src, "url", None) or getattr(src, "path", None) or pipe.name)


def pool_name(pipe: PipelineConfig) -> str:
    kind, ident = source_identity(pipe)
    return f"icefield_{kind}_{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def project_pools(project: Project, slots: int = DEFAULT_SLOTS) -> list[SourcePool]:
    """The pools the project's DAGs use, one per source, in name order."""
    members: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for name, pipe in sorted(project.pipelines.items()):
        pool = pool_name(pipe)
        members.setdefault(pool, []).append(name)
        kinds[pool] = source_identity(pipe)[0]
    return [
        SourcePool(
            name=pool,
            slots=slots,
            description=f"icefield {project.config.name}: runs against one {kinds[pool]} source "
            f"(pipelines {', '.join(names)})",
            pipelines=tuple(names),
        )
        for pool, names in sorted(members.items())
    ]
