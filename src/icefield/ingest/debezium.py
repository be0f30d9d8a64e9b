"""The ``debezium`` source: Debezium change events, from JSON Lines files or from a Kafka topic.

Events are decoded by :mod:`icefield.ingest.debezium_codec` into rows with their version: the
event's ``source.sequence`` as ``_cdc_commit_lsn`` and ``_cdc_lsn`` (``docs/architecture.md``, "The write
path", rule 3: order by commit LSN, then LSN, never by LSN alone), ``_cdc_op`` and ``_cdc_ts_ms``, and
``_cdc_deleted`` for deletes. The target merges them by key with ``keep_newest``: duplicates and late events
never undo newer changes.

A truncate (``op = t``) splits the stream: the batch that holds it empties the table in its commit,
then applies the events after it. Tombstones (null values after a delete) carry no row: they count as
filtered. Undecodable events, and events with a value the column's type cannot hold, go to the
quarantine with their raw text and coordinates.

Types: the embedded schema types each column (:mod:`icefield.ingest.debezium_types`); an unconstrained
``numeric`` takes the type ``source.numeric`` declares; events without the schema are typed by
``source.postgres_types`` and ``source.connector`` (the connector's encoding settings), else
from their values. Two columns travel to the writer and never land: ``_cdc_unchanged`` names the
unchanged TOAST values of each update (the merge takes the row's previous value,
:mod:`icefield.write.unchanged`), ``_cdc_defaults`` the defaults of columns the table lacks (stored rows
take them, :mod:`icefield.write.defaults`).

Files are read as append-only logs in name order; the position is the byte offset reached in each
file, so lines appended later are read by the next run. Write whole lines.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from icefield.config.models import (
    CDC_COMMIT_LSN,
    CDC_CONTROL_COLUMNS,
    CDC_DEFAULTS,
    CDC_DELETED,
    CDC_LSN,
    CDC_OP,
    CDC_TS_MS,
    CDC_UNCHANGED,
    DebeziumSourceConfig,
)
from icefield.errors import ConfigError
from icefield.ingest import (
    LazyStrings,
    Rejected,
    Source,
    SourceBatch,
    SourceCapabilities,
    relative_name,
)

if TYPE_CHECKING:
    from icefield.config import PipelineConfig, Project
    from icefield.ingest.debezium_codec import DecodedEvents
    from icefield.ingest.debezium_types import TypeOptions
    from icefield.ingest.files import FileScope
    from icefield.ingest.kafka import MessageBatch

log = logging.getLogger(__name__)

META = {
    "__seq_commit": CDC_COMMIT_LSN,
    "__seq_lsn": CDC_LSN,
    "__op": CDC_OP,
    "__ts_ms": CDC_TS_MS,
    "__unchanged": CDC_UNCHANGED,
    "__defaults": CDC_DEFAULTS,
}
DROPPED_META = ("__index", "__txid")


class DebeziumSource(Source):
    capabilities = SourceCapabilities(incremental=True, cdc=True, streaming=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, DebeziumSourceConfig)
        self.cfg = pipeline.source
        self.pipeline = pipeline
        self.root = project.root
        self.batch_size = batch_size
        self.read_ahead = project.config.read_ahead > 0
        self.types = _type_options(self.cfg)
        self._reader: Any = None
        self._stopping = threading.Event()
        self.scope: FileScope | None = None
        if self.cfg.path is not None:
            from icefield.ingest.files import FileScope

            # Change-event files are read where a files source may read: in the project, never icefield's own.
            self.scope = FileScope(project, self.cfg.path, [], f"pipeline {pipeline.name!r}: source")
        if pipeline.target.mode == "merge" and not pipeline.target.keys:
            raise ConfigError(
                f"pipeline {pipeline.name!r}: target.keys: a debezium source merges by key; list the primary key "
                "columns of the captured table, e.g. keys: [id]"
            )

    # ------------------------------------------------------------------ reading

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        if self.cfg.path is not None:
            yield from self._read_files(position or {}, schema)
        else:
            yield from self._read_topic(position or {}, schema)

    def _read_files(self, position: dict[str, Any], schema: pa.Schema | None) -> Iterator[SourceBatch]:
        offsets: dict[str, int] = {k: int(v) for k, v in position.get("files", {}).items()}
        lines: list[bytes | None] = []
        coords: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        assert self.scope is not None
        for path in self.scope.list_files():
            rel = relative_name(self.root, path)
            start = offsets.get(rel, 0)
            size = path.stat().st_size
            if start > size:
                raise ConfigError(
                    f"debezium source file {rel!r} is shorter ({size} bytes) than the {start} bytes already loaded; "
                    "change-event files are append-only logs: restore the file or write new events to a new file"
                )
            with path.open("rb") as f:
                f.seek(start)
                offset = start
                for line in f:
                    here = offset
                    offset += len(line)
                    if not line.strip():
                        continue
                    lines.append(line.rstrip(b"\r\n"))
                    coords.append(f"{rel}@{here}")
                    spans[rel] = (spans.get(rel, (here, here))[0], offset)
                    if len(lines) >= self.batch_size:
                        offsets[rel] = offset
                        yield self._batch(lines, None, coords, {"files": dict(offsets)}, _files_key(spans), schema)
                        lines, coords, spans = [], [], {}
                offsets[rel] = offset
        if lines or spans:
            yield self._batch(lines, None, coords, {"files": dict(offsets)}, _files_key(spans), schema)

    def follow(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Batches for as long as the source is not stopped: new Kafka messages, or lines appended to the
        files (polled); each batch closes at ``batch_size`` events or ``max_wait_seconds`` after it began."""
        if self.cfg.path is not None:
            return self._follow_files(position or {}, schema)
        return self._read_topic(position or {}, schema, follow=True)

    def _follow_files(self, position: dict[str, Any], schema: pa.Schema | None) -> Iterator[SourceBatch]:
        while not self._stopping.is_set():
            progressed = False
            for batch in self._read_files(position, schema):
                position = batch.position
                progressed = True
                yield batch
                if self._stopping.is_set():
                    return
            if not progressed:
                self._stopping.wait(min(self.cfg.max_wait_seconds, 1.0))

    def _read_topic(self, position: dict[str, Any], schema: pa.Schema | None, follow: bool = False) -> Iterator[SourceBatch]:
        from icefield.ingest.kafka import KafkaReader, consumer_config

        where = f"pipeline {self.pipeline.name!r}: source"
        conf = consumer_config(self.cfg, self.pipeline.name, where, base_dir=self.root)  # type: ignore[arg-type]  # topic implies bootstrap_servers
        reader = self._reader = KafkaReader(conf, self.cfg.topic_names, start=self.cfg.start)
        if self._stopping.is_set():
            reader.stop()
        reader.open(position)
        with closing(reader.prefetched(self.batch_size, self.cfg.max_wait_seconds, follow=follow, ahead=self.read_ahead)) as polled:
            yield from self._decoded(polled, schema)

    def _decoded(self, polled: Iterator[MessageBatch], schema: pa.Schema | None) -> Iterator[SourceBatch]:
        for mb in polled:
            # Coordinates are made only when needed (a rejection).
            coords = LazyStrings(len(mb), mb.coords)
            yield self._batch(mb.values, mb.keys, coords, mb.position, mb.key, schema)

    def stop(self) -> None:
        self._stopping.set()
        if self._reader is not None:
            self._reader.stop()

    def acknowledge(self, position: dict[str, Any]) -> None:
        """After the Iceberg commit: tell Kafka (consumer-group offsets are only a hint)."""
        if self._reader is not None:
            self._reader.commit(position)

    def lag(self, position: dict[str, Any]) -> dict[str, dict[int, int]] | None:
        """Messages beyond ``position`` per topic and partition, when reading a topic (:meth:`KafkaReader.lag`)."""
        return self._reader.lag(position) if self._reader is not None else None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ decoding

    def _batch(
        self,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        coords: Sequence[str],
        position: dict[str, Any],
        key: str,
        schema: pa.Schema | None,
    ) -> SourceBatch:
        from icefield.ingest.debezium_codec import decode_events, escape_raw

        decoded = decode_events(
            values, keys, coords=coords, table_schema=_user_schema(schema), max_record_bytes=self.cfg.max_record_bytes, types=self.types
        )
        data, filtered, truncate_at = to_rows(decoded)
        idx = data.column("__index").to_pylist()
        data = data.drop([c for c in DROPPED_META if c in data.column_names])

        def raw_of(i: int) -> str:
            v = values[i]
            return "null" if v is None else escape_raw(v)

        raw = LazyStrings(len(idx), raw_of, idx)
        row_coords = LazyStrings(len(idx), lambda i: coords[i], idx)
        return SourceBatch(
            data=data,
            position=position,
            key=key,
            raw=raw,
            coords=row_coords,
            rejected=list(decoded.rejected),
            filtered=filtered,
            truncate_at=truncate_at,
            coord_label=self.pipeline.name,
            coord_keys=list(self.pipeline.target.keys),
            # A delete under REPLICA IDENTITY DEFAULT carries only the key: absent columns are not dropped.
            open_schema=True,
            change_time=newest_change(data),
        )

def to_rows(decoded: DecodedEvents) -> tuple[pa.Table, int, list[int] | None]:
    """The decoded events as rows for the merge: meta columns renamed to ``_cdc_*``, ``_cdc_deleted``
    added, and events before the last truncate dropped. Returns ``(rows, filtered, truncate_at)``:
    ``filtered`` counts tombstones, truncate markers and the events a truncate erased; ``truncate_at`` is
    the last truncate's ``[commit LSN, LSN]`` or None. ``__index`` is kept for the caller."""
    rows = decoded.rows
    filtered = len(decoded.tombstones) + len(decoded.truncates)
    truncate_at: list[int] | None = None
    if decoded.truncates:
        last = max(decoded.truncates, key=lambda t: t.index)
        truncate_at = [int(last.seq_commit or 0), int(last.seq_lsn or 0)]
        after = pc.greater(rows.column("__index"), last.index)
        kept = rows.filter(after)
        filtered += rows.num_rows - kept.num_rows
        rows = kept
    names = [META.get(n, n) for n in rows.column_names]
    rows = rows.rename_columns(names)
    deleted = pc.equal(rows.column(CDC_OP), "d") if rows.num_rows else pa.array([], pa.bool_())
    rows = rows.append_column(CDC_DELETED, deleted)
    return rows, filtered, truncate_at


def newest_change(rows: pa.Table) -> dt.datetime | None:
    """The newest ``_cdc_ts_ms`` of ``rows`` (``source.ts_ms``: when the change was made in the source
    database) as a UTC time; None when there is none. The CDC lag is measured from it."""
    if CDC_TS_MS not in rows.column_names or not rows.num_rows:
        return None
    newest = pc.max(rows.column(CDC_TS_MS)).as_py()
    return dt.datetime.fromtimestamp(newest / 1000, dt.UTC) if newest is not None else None


def _user_schema(schema: pa.Schema | None) -> pa.Schema | None:
    if schema is None:
        return None
    meta = set(META.values()) | {CDC_DELETED} | CDC_CONTROL_COLUMNS
    return pa.schema([f for f in schema if f.name not in meta])


def _type_options(cfg: DebeziumSourceConfig) -> TypeOptions:
    from icefield.ingest.debezium_types import TypeOptions

    c = cfg.connector
    return TypeOptions.from_settings(
        cfg.numeric.default,
        cfg.numeric.columns,
        cfg.postgres_types,
        c.decimal_handling_mode,
        c.time_precision_mode,
        c.interval_handling_mode,
        c.unavailable_value_placeholder,
    )


def _files_key(spans: dict[str, tuple[int, int]]) -> str:
    return "debezium-files:" + ";".join(f"{rel}@{a}-{b}" for rel, (a, b) in sorted(spans.items()))


__all__ = ["DebeziumSource", "Rejected", "newest_change", "to_rows"]
