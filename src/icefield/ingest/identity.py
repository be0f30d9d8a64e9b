"""The identity of a pipeline's source: its kind and a URI without secrets, for results, events and lineage."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from icefield.config.models import (
    DebeziumSourceConfig,
    FilesSourceConfig,
    HttpSourceConfig,
    KafkaSourceConfig,
    SqlSourceConfig,
)
from icefield.config.secrets import redact
from icefield.observe.events import SourceRef

if TYPE_CHECKING:
    from pathlib import Path

    from icefield.config import PipelineConfig


def source_ref(pipe: PipelineConfig, root: Path) -> SourceRef:
    """The :class:`SourceRef` of ``pipe``'s source (``root``: the project folder, that relative paths start
    from). No password, token or resolved secret appears in the URI:

    - ``sql``: the database URL without its password (a SQLite file's absolute path), then ``#schema.table`` or ``#query:<hash of the query>``;
    - ``files``: ``file://`` and the absolute glob;
    - ``kafka``: ``kafka://<bootstrap servers>/<topic>[,<topic>...]``;
    - ``debezium``: the file glob or the Kafka topic, as above;
    - ``http``: ``base_url`` and ``path`` without the query (which may carry an API key).
    """
    src = pipe.source
    if isinstance(src, SqlSourceConfig):
        uri = _database(src.url, root)
        if src.table is not None:
            uri += "#" + (f"{src.db_schema}.{src.table}" if src.db_schema else src.table)
        else:
            uri += "#query:" + hashlib.sha256((src.query or "").encode()).hexdigest()[:12]
    elif isinstance(src, (FilesSourceConfig, DebeziumSourceConfig)) and src.path:
        uri = "file://" + str((root / src.path).absolute())
    elif isinstance(src, (KafkaSourceConfig, DebeziumSourceConfig)):
        topics = [src.topic] if src.topic else list(getattr(src, "topics", None) or [])
        uri = f"kafka://{src.bootstrap_servers or ''}/{','.join(topics)}"
    elif isinstance(src, HttpSourceConfig):
        uri = (src.base_url.rstrip("/") + ("/" + src.path.lstrip("/") if src.path else "")).split("?", 1)[0]
    else:  # a source type registered later: its kind alone until it says more
        uri = f"{src.type}://"
    return SourceRef(src.type, redact(uri))


def _database(url: str, root: Path) -> str:
    """``url`` without its password (and without query parameters, which may carry tokens); a SQLite file
    named relative to the project folder ``root`` made absolute (the file the source opens)."""
    try:
        from sqlalchemy.engine import URL, make_url

        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy knows: keep the scheme only
        return url.split(":", 1)[0] + "://"
    database = parsed.database
    if parsed.drivername.startswith("sqlite") and database and database != ":memory:" and not database.startswith("/"):
        database = str((root / database).absolute())
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, database)
    return bare.render_as_string(hide_password=False)
