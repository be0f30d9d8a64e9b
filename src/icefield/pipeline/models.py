"""SQL models: ``models/*.sql`` run on DuckDB over the Iceberg tables and written back through the
same writer. A model's position is the snapshot ids of its inputs plus a hash of its SQL: a rerun with
unchanged inputs and SQL commits nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from icefield.engines import get_engine
from icefield.errors import ConfigError, IcefieldError
from icefield.iceberg.history import read_position
from icefield.iceberg.tables import table_identifier
from icefield.observe.events import (
    BatchStarted,
    EventStream,
    Observer,
    RunStarted,
    SchemaChanged,
    SourceRef,
    TableRef,
    now,
)
from icefield.pipeline.results import BatchResult, RunResult, columns_of, emit_batch, reporting
from icefield.pipeline.runner import acquire_lease, new_run_id, output_columns
from icefield.write import TableWriter, batch_id_for

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from icefield.config import Project
    from icefield.config.models import ModelConfig
    from icefield.engines import Engine


def run_model(
    project: Project,
    name: str,
    catalog: Catalog | None = None,
    run_id: str | None = None,
    wait: float = 0.0,
    observers: Sequence[Observer] = (),
) -> RunResult:
    """Run the SQL model ``name`` and write its result to its target table. Returns a :class:`RunResult`
    (its ``inputs``: the tables the SQL read, at the snapshots it read).

    The model's SQL must be one read-only query; it runs on a locked DuckDB connection that reads only
    the tables it names, at the snapshots its position records (:mod:`icefield.query`). Raises
    :class:`ConfigError` when it is refused or fails. Like a pipeline run, it holds the lease of its table
    while it runs (waiting up to ``wait`` seconds for another run of it), and emits the same events to
    the logging observer and ``observers`` (one batch when the result changed, none when it is up to date)."""
    from icefield.catalog import open_catalog
    from icefield.query import readonly

    try:
        model = project.models[name]
    except KeyError:
        raise ConfigError(
            f"no model named {name!r} in {project.root / 'models'} (known: {', '.join(sorted(project.models)) or 'none'})"
        ) from None
    run_id = run_id or new_run_id()
    result = RunResult(
        pipeline=f"model.{name}",
        table=model.target.table,
        run_id=run_id,
        started_at=now(),
        source=SourceRef("model", "file://" + str(Path(model.path).absolute())),
    )
    events = EventStream(run_id, result.pipeline, observers)
    with events.running():
        events.emit(RunStarted, table=result.table, source=result.source, sql=model.sql)
        with reporting(events, result):
            what = f"{model.path}: the model's SQL"
            with contextlib.closing(readonly.open_connection()) as parser:
                readonly.statement(parser, model.sql, what)  # refused before anything is read
            catalog = catalog or open_catalog(project)
            engine = get_engine(project.config.engine, project)  # writes the result; the query runs on the query seam
            with acquire_lease(catalog, model.target, run_id, f"model {name}", wait):
                _run_model(model, catalog, engine, result, run_id, what, events)
    return result


def _run_model(
    model: ModelConfig,
    catalog: Catalog,
    engine: Engine,
    result: RunResult,
    run_id: str,
    what: str,
    events: EventStream,
) -> None:
    from icefield.query import named_tables, open_views, readonly

    # Each input is loaded once and read at the snapshot the position records, even if it moves meanwhile.
    tables = named_tables(catalog, model.sql)
    snapshots = {
        ident: snap.snapshot_id if (snap := t.current_snapshot()) else None for ident, t in tables.items()
    }
    inputs = {
        ".".join(ident): snap for ident, snap in snapshots.items() if ".".join(ident) != model.target.table
    }
    loaded = {".".join(ident): t for ident, t in tables.items()}
    result.inputs = [TableRef(t, snap, columns_of(loaded[t], snap)) for t, snap in sorted(inputs.items())]
    sql_hash = hashlib.sha256(model.sql.encode()).hexdigest()[:16]
    position = {"sql": sql_hash, "inputs": inputs}
    writer = TableWriter(catalog, model.target, result.pipeline, engine)
    table = writer.load()
    writer.base_position = read_position(table, result.pipeline)
    if writer.base_position == position:
        return
    batch_id = batch_id_for(result.pipeline, json.dumps(position, sort_keys=True))
    with events.batch(batch_id):
        started = time.perf_counter()
        with open_views((ident, t, snapshots[ident]) for ident, t in tables.items()) as views:
            try:
                data = readonly.query(views.con, model.sql, what)
            except IcefieldError as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"{e}; fix the model's SQL") from e
        data = _iceberg_friendly(data)
        read = time.perf_counter() - started
        events.emit(BatchStarted, batch_id=batch_id, rows_in=data.num_rows)

        def schema_changed(changes: list[str]) -> None:
            events.emit(SchemaChanged, table=model.target.table, batch_id=batch_id, changes=tuple(changes))

        if table is None:
            table = writer.create(data.schema)
        else:
            writer.evolve(table, data.schema, data=data, on_change=schema_changed)
        wr = writer.commit(data, batch_id, position, run_id)
        res = BatchResult(
            batch_id,
            data.num_rows,
            data.num_rows,
            0,
            0,
            wr.rows_deleted,
            wr.snapshot_id,
            wr.skipped,
            time.perf_counter() - started,
            files_added=wr.files_added,
            files_removed=wr.files_removed,
            bytes_added=wr.bytes_added,
            bytes_removed=wr.bytes_removed,
            commit_conflicts=wr.commit_conflicts,
            stages={"read": read, "commit": time.perf_counter() - started - read},
        )
        result.batches.append(res)
        if wr.snapshot_id is not None and not wr.skipped:
            columns = output_columns(catalog, model.target.table, wr.snapshot_id) if events.wants_schemas else ()
            result.outputs = [TableRef(model.target.table, wr.snapshot_id, columns)]
        emit_batch(events, model.target.table, res)


def _iceberg_friendly(data: pa.Table) -> pa.Table:
    """Map DuckDB result types Iceberg lacks to ones it has (time zones to UTC, small ints to int)."""
    fields = []
    for f in data.schema:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC" if t.tz else None)
        elif pa.types.is_integer(t) and t.bit_width < 32:
            t = pa.int32()
        elif pa.types.is_unsigned_integer(t) and t.bit_width >= 32:
            t = pa.int64()
        elif pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        fields.append(pa.field(f.name, t, nullable=True))
    return data.cast(pa.schema(fields)) if fields != list(data.schema) else data


__all__ = ["run_model", "table_identifier"]
