"""The ``sql`` source: a table or query of any SQLAlchemy database.

Without a ``cursor`` it is a full load: the whole result is one batch, identified by a hash of its
contents, so a rerun over unchanged data commits nothing. With a ``cursor`` it is incremental: rows are
read with ``cursor >= last`` in cursor order, in chunks of ``batch_size`` rows, each chunk one batch.
Rows sharing the last cursor value are the classic trap (rows committed later with the same timestamp
are lost by ``>``, and doubled by ``>=``): the position keeps the fingerprints of the rows already loaded
at the last value, so such rows are loaded exactly once.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from icefield.config.models import SqlSourceConfig
from icefield.config.secrets import redact, register_secret, resolve
from icefield.errors import (
    ConfigError,
    IcefieldError,
    MissingDependencyError,
    QueryError,
    SourceError,
    TransientError,
    driver_install_hint,
)
from icefield.ingest import (
    Rejected,
    Source,
    SourceBatch,
    SourceCapabilities,
    rebatch,
    row_coords,
    window_batches,
)
from icefield.ingest.coerce import convert_values, infer_type

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from icefield.config import PipelineConfig, Project
    from icefield.config.window import Window

log = logging.getLogger(__name__)


def _encode(v: Any) -> Any:
    """JSON form of a cursor value that round-trips to the same driver type."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dt.datetime):
        return {"t": "datetime", "v": v.isoformat()}
    if isinstance(v, dt.date):
        return {"t": "date", "v": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"t": "decimal", "v": str(v)}
    raise SourceError(f"cursor values of type {type(v).__name__} are not supported; pick a timestamp, number or text column")


def _decode(v: Any) -> Any:
    if isinstance(v, dict):
        t, raw = v["t"], v["v"]
        if t == "datetime":
            return dt.datetime.fromisoformat(raw)
        if t == "date":
            return dt.date.fromisoformat(raw)
        if t == "decimal":
            return decimal.Decimal(raw)
    return v


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    return str(v)


def row_fingerprint(values: Any) -> str:
    return hashlib.sha1(json.dumps(values, default=_json_default, sort_keys=True).encode()).hexdigest()[:20]


def arrow_type_for(sa_type: Any) -> pa.DataType | None:
    """Map a reflected SQLAlchemy column type to Arrow (None: infer from the values)."""
    from sqlalchemy import types as t

    if isinstance(sa_type, t.Boolean):
        return pa.bool_()
    if isinstance(sa_type, t.Integer):
        return pa.int64()
    if isinstance(sa_type, t.Numeric) and not isinstance(sa_type, t.Float):
        p, s = sa_type.precision, sa_type.scale
        if p is not None and p <= 38:
            return pa.decimal128(p, s or 0)
        return pa.decimal128(38, 9)
    if isinstance(sa_type, (t.Float, t.REAL)):
        return pa.float64()
    if isinstance(sa_type, t.DateTime):
        return pa.timestamp("us", tz="UTC") if getattr(sa_type, "timezone", False) else pa.timestamp("us")
    if isinstance(sa_type, t.Date):
        return pa.date32()
    if isinstance(sa_type, t.Time):
        return pa.time64("us")
    if isinstance(sa_type, t.LargeBinary):
        return pa.binary()
    if isinstance(sa_type, (t.String, t.Enum, t.JSON, t.Uuid)):
        return pa.string()
    return None


class SqlSource(Source):
    capabilities = SourceCapabilities(incremental=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, SqlSourceConfig)
        self.cfg = pipeline.source
        self.pipeline = pipeline.name
        self.keys = list(pipeline.target.keys)
        self.batch_size = batch_size
        self.file = f"{project.root / 'pipelines'}/{pipeline.name}.yaml"
        self.where = f"{self.file}: source.url"
        self.project_root = project.root
        self._engine: Engine | None = None
        self._reader: Any = None  # an icefield engine that reads the source itself (read_with)
        self._split_ok = project.config.spark.read_sources
        if self.cfg.cursor is None and pipeline.target.mode == "append":
            raise ConfigError(
                f"pipeline {pipeline.name!r}: a sql source without 'cursor' is a full load, and mode 'append' "
                "would add the whole table again whenever it changes; set source.cursor for incremental "
                "loads, or use target.mode 'overwrite' or 'merge'"
            )

    # ------------------------------------------------------------------ connection

    def engine(self) -> Engine:
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            url = resolve(self.cfg.url, where=self.where, base_dir=self.project_root)
            try:
                parsed = make_url(url)
            except ArgumentError:
                raise ConfigError(f"{self.where}: {redact(url)!r} is not a SQLAlchemy URL like postgresql://user@host/db") from None
            if parsed.password:
                register_secret(str(parsed.password))
            if parsed.drivername.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                db = Path(parsed.database)
                if not db.is_absolute():
                    parsed = parsed.set(database=str(self.project_root / db))
                if not Path(parsed.database or "").is_file():
                    raise ConfigError(
                        f"{self.where}: the SQLite database {redact(parsed.database or '')!r} does not exist; fix the "
                        "path (a relative one is read from the project folder)"
                    )
            try:
                self._engine = create_engine(parsed)
            except NoSuchModuleError:
                raise MissingDependencyError(
                    f"{self.where}: SQLAlchemy has no dialect {parsed.drivername!r}; fix the URL's scheme "
                    "(e.g. postgresql+psycopg2://) or install the package that provides it"
                ) from None
            except ModuleNotFoundError as e:
                raise MissingDependencyError(
                    f"{self.where}: the database driver {e.name!r} is not installed; run `{driver_install_hint(e.name)}`"
                ) from None
        return self._engine

    def _error(self, e: BaseException, doing: str) -> IcefieldError:
        """The icefield error for a database error ``e`` raised while ``doing`` something (see
        :func:`classify_db_error`), naming the setting to fix."""
        from sqlalchemy import exc

        if isinstance(e, exc.NoSuchTableError):
            return ConfigError(
                f"{self.file}: source.table: no table {self.cfg.table!r}"
                + (f" in schema {self.cfg.db_schema!r}" if self.cfg.db_schema else "")
                + " in the source database; fix the name (it is case-sensitive on most databases)"
            )
        kind, text = classify_db_error(e)
        selected = f"{self.file}: source.{'query' if self.cfg.query is not None else 'table'}"
        # The first read compares the cursor with initial_cursor: a value of the wrong type fails there.
        also = " (or source.initial_cursor)" if self.cfg.initial_cursor is not None else ""
        if kind == "login":
            return ConfigError(
                f"{self.where}: the source database refused the login ({text}); fix the user or the password "
                "(or the secret the URL references)"
            )
        if kind == "database":
            return ConfigError(
                f"{self.where}: the database, schema or role named in the URL does not exist or cannot be opened ({text}); fix the URL"
            )
        if kind == "query":
            return QueryError(f"{selected}: the source database refused the query while {doing} ({text}); fix it{also}")
        if kind == "value":
            return ConfigError(f"{selected}: the source database refused a value while {doing} ({text}); fix the query{also}")
        if kind == "transient":
            return TransientError(f"{self.where}: cannot reach the source database while {doing} ({text}); check that it runs and rerun")
        return SourceError(f"{self.where}: {doing} failed ({text})")

    def read_with(self, engine: Any) -> None:
        """Let ``engine`` read the rows between the committed cursor value and the newest one (see
        :meth:`_read_split`); not for full loads, nor when ``spark.read_sources`` is off."""
        if self._split_ok and self.cfg.cursor is not None:
            self._reader = engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _selectable(self) -> tuple[Any, dict[str, pa.DataType | None]]:
        from sqlalchemy import MetaData, Table, column, exc, table, text

        eng = self.engine()
        try:
            if self.cfg.table is not None:
                reflected = Table(self.cfg.table, MetaData(), schema=self.cfg.db_schema, autoload_with=eng)
                types = {c.name: arrow_type_for(c.type) for c in reflected.columns}
                # A plain table() clause: no result processors, so values arrive as the driver gives them
                # and are typed strictly by icefield, the same way for every database.
                sel = table(self.cfg.table, *[column(c) for c in types], schema=self.cfg.db_schema)
                return sel, types
            sub = text(self.cfg.query or "").columns()
            with eng.connect() as con:
                names = list(con.execute(text(f"SELECT * FROM ({self.cfg.query}) AS q WHERE 1=0")).keys())
            del sub
            sel = table("q", *[column(n) for n in names])
            return sel, dict.fromkeys(names)
        except exc.SQLAlchemyError as e:
            raise self._error(e, "reading the columns of the source") from e

    # ------------------------------------------------------------------ reading

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        from sqlalchemy import exc, select, text

        sel, types = self._selectable()
        if schema is not None:
            for f in schema:
                if f.name in types and types[f.name] is None:
                    types[f.name] = f.type
        names = list(types)
        if self.cfg.cursor and self.cfg.cursor not in types:
            raise ConfigError(f"pipeline {self.pipeline!r}: source.cursor: column {self.cfg.cursor!r} is not in the source (columns: {', '.join(names)})")
        from_clause: Any = sel
        if self.cfg.query is not None:
            from_clause = text(self.cfg.query).columns(*[c for c in sel.columns]).subquery("q")
        stmt = base = select(*[from_clause.c[n] for n in names])
        cursor_col = self.cfg.cursor
        last: Any = None
        boundary: set[str] = set()
        if cursor_col is not None:
            pos = position or {}
            if "cursor" in pos:
                last = _decode(pos["cursor"])
                boundary = set(pos.get("boundary", []))
            elif self.cfg.initial_cursor is not None:
                last = self.cfg.initial_cursor
            col = from_clause.c[cursor_col]
            if last is not None:
                stmt = stmt.where(col >= last)
            stmt = stmt.order_by(col.asc().nulls_first())
        if self._reader is not None and cursor_col is not None and (last is not None or not boundary):
            try:
                yield from self._read_split(base, from_clause.c[cursor_col], names, types, cursor_col, last, boundary)
            except exc.SQLAlchemyError as e:
                raise self._error(e, "reading the source") from e
            return
        try:
            chunks = self._chunks(stmt, names, types, cursor_col)
            if cursor_col is None:
                full = self._full_batch(list(chunks), names, position)
                if full is not None:
                    yield full
                return
            for chunk in chunks:
                # Rows already loaded at the boundary value. That value may be NULL: rows with no cursor
                # come first and, until a non-null value is committed, are told apart by fingerprint.
                drop = set()
                if last is not None or boundary:
                    drop = {i for i in chunk.equal(last) if self._fp(chunk.raw_row(i)) in boundary}
                if len(drop) == chunk.size:
                    continue
                first_pos = {"cursor": _encode(last), "boundary": sorted(boundary)} if last is not None or boundary else None
                new_last = chunk.cursor_at(chunk.size - 1)
                if new_last is None:
                    new_last = last
                at_last = {self._fp(chunk.raw_row(i)) for i in chunk.equal(new_last) if i not in drop}
                boundary = (boundary | at_last) if new_last == last else at_last
                last = new_last
                position = {"cursor": _encode(last), "boundary": sorted(boundary)}
                key = f"sql:{json.dumps(first_pos, sort_keys=True)}->{json.dumps(position, sort_keys=True)}"
                yield self._batch(chunk, drop, position, key)
        except exc.SQLAlchemyError as e:
            raise self._error(e, "reading the source") from e

    def read_window(self, windows: list[Window], column: str, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Each window's rows (see :meth:`Source.read_window`), read with ``column >= start AND column < end``
        whatever the cursor, one query per window. SQLite keeps timestamps as text, whose order within a day
        depends on how they were written ('T' or ' ', fractions or not): there the query takes whole days
        around the window, compared as ISO text, and the exact cut is made on the typed values, as it is for
        every database."""
        from sqlalchemy import exc, select, text

        sel, types = self._selectable()
        if schema is not None:
            for f in schema:
                if f.name in types and types[f.name] is None:
                    types[f.name] = f.type
        names = list(types)
        where = f"{self.file}: window.column"
        if column not in types:
            raise ConfigError(f"{where}: the source has no column {column!r} (columns: {', '.join(names)}); fix window.column")
        from_clause: Any = sel
        if self.cfg.query is not None:
            from_clause = text(self.cfg.query).columns(*[c for c in sel.columns]).subquery("q")
        base = select(*[from_clause.c[n] for n in names])
        col = from_clause.c[column]
        kind = types[column]
        if kind is not None and not (pa.types.is_date(kind) or pa.types.is_timestamp(kind)):
            raise ConfigError(
                f"{where}: column {column!r} of the source is {kind}, not a date or a timestamp: a window is cut on a date "
                "or timestamp column; fix window.column"
            )
        sqlite = self.engine().dialect.name == "sqlite"
        label = self.cfg.table or "query"
        for w in windows:
            stmt = base
            if sqlite:
                day = dt.timedelta(days=1)
                stmt = base.where(col >= (w.start - day).date().isoformat(), col < (w.end + day).date().isoformat())
            elif kind is not None and pa.types.is_date(kind):
                stmt = base.where(col >= w.start.date(), col < (w.end - dt.timedelta(microseconds=1)).date() + dt.timedelta(days=1))
            elif kind is not None and pa.types.is_timestamp(kind):
                aware = kind.tz is not None
                stmt = base.where(col >= (w.start if aware else w.start.replace(tzinfo=None)), col < (w.end if aware else w.end.replace(tzinfo=None)))
            else:
                log.info("%s: the type of column %r is not known before reading: the window %s reads the whole source", where, column, w.label)
            try:
                read = [self._batch(chunk, set(), {}, "") for chunk in self._chunks(stmt, names, types, None)]
            except exc.SQLAlchemyError as e:
                raise self._error(e, f"reading window {w.label} of the source") from e
            yield from window_batches(iter(read), column, [w], where, label)

    def _read_split(
        self, base: Any, col: Any, names: list[str], types: dict[str, pa.DataType | None], cursor: str, last: Any, boundary: set[str]
    ) -> Iterator[SourceBatch]:
        """The rows after the position, read mostly by the engine (:meth:`read_with`), in batches of about
        ``batch_size`` rows up to the newest cursor value when the read began.

        A batch ends at the cursor value ``hi`` ``batch_size`` rows on (or the newest). The engine reads the rows
        strictly between the committed value ``last`` and ``hi`` (JDBC, split into ranges of the cursor); this
        process reads the rows at the two edges: at ``last`` (those not loaded yet: the boundary's fingerprints)
        and at ``hi`` (whose fingerprints are the new boundary), and, on a first run, the rows without a cursor
        value. So each row is read by one reader only, and the position names exactly the rows the batch holds,
        whatever the source commits meanwhile. Positions and keys have the form :meth:`read` gives them; a
        batch ends on a cursor value, never between rows sharing one."""
        from sqlalchemy import and_, func, or_, select

        with self.engine().connect() as con:
            newest = con.execute(select(func.max(base.subquery().c[cursor]))).scalar()
        while True:
            after = base.where(col > last) if last is not None else base.where(col.is_not(None))
            sub = after.subquery()
            with self.engine().connect() as con:
                lo = con.execute(select(func.min(sub.c[cursor]))).scalar()
                cut = con.execute(select(sub.c[cursor]).order_by(sub.c[cursor]).limit(1).offset(max(self.batch_size - 1, 0))).scalar()
            hi = newest if cut is None or newest is None or cut > newest else cut
            if hi is None:
                hi = last
            edges_at = [col == last] if last is not None else [col.is_(None)]
            if hi is not None and hi != last:
                edges_at.append(col == hi)
            edge_stmt = base.where(or_(*edges_at)).order_by(col.asc().nulls_first())
            edges = _Chunk.concat(list(self._chunks(edge_stmt, names, types, cursor)), names)
            if edges.size == 0:
                edges.cursor_values = []
            drop: set[int] = set()
            if last is not None or boundary:
                drop = {i for i in edges.equal(last) if self._fp(edges.raw_row(i)) in boundary}
            middle = None
            if last is None:
                middle = col < hi if hi is not None else None
            elif hi != last:
                middle = and_(col > last, col < hi)
            if middle is None and len(drop) == edges.size:
                return
            first_pos = {"cursor": _encode(last), "boundary": sorted(boundary)} if last is not None or boundary else None
            new_last = hi if hi is not None else last
            at_last = {self._fp(edges.raw_row(i)) for i in edges.equal(new_last) if i not in drop}
            boundary = (boundary | at_last) if new_last == last else at_last
            position = {"cursor": _encode(new_last), "boundary": sorted(boundary)}
            key = f"sql:{json.dumps(first_pos, sort_keys=True)}->{json.dumps(position, sort_keys=True)}"
            batch = self._batch(edges, drop, position, key)
            if middle is not None:
                sql = str(base.where(middle).compile(dialect=self.engine().dialect, compile_kwargs={"literal_binds": True}))
                lower = last if last is not None else lo
                bounds = (_bound(lower), _bound(hi)) if _splittable(lower) and _splittable(hi) else None
                url = self.engine().url.render_as_string(hide_password=False)
                batch.frame = self._reader.read_jdbc(url, sql, cursor, bounds, batch.data)
                batch.frame.order = (cursor,)
                batch.data = batch.data.slice(0, 0)
            yield batch
            if new_last in (last, newest):
                return
            last = new_last

    def _fp(self, row: tuple[Any, ...]) -> str:
        # The whole row, not its key: a row updated again within the cursor's resolution keeps the cursor
        # value already committed, and only its new content tells it apart from the version loaded.
        return row_fingerprint(list(row))

    def _chunks(self, stmt: Any, names: list[str], types: dict[str, pa.DataType | None], cursor: str | None) -> Iterator[_Chunk]:
        """The result of ``stmt`` in chunks of ``batch_size`` rows, typed strictly. PostgreSQL is read as
        Arrow through ADBC (binary COPY, no Python objects per value) when the driver is installed; other
        databases through SQLAlchemy rows."""
        if self.engine().dialect.name == "postgresql" and _adbc_available():
            yield from self._chunks_adbc(stmt, names, types, cursor)
        else:
            yield from self._chunks_rows(stmt, names, types, cursor)

    def _chunks_rows(self, stmt: Any, names: list[str], types: dict[str, pa.DataType | None], cursor: str | None) -> Iterator[_Chunk]:
        cur_idx = names.index(cursor) if cursor else -1
        with self.engine().connect() as con:
            result = con.execution_options(stream_results=True, yield_per=self.batch_size).execute(stmt)
            for part in result.partitions(self.batch_size):
                rows = [tuple(r) for r in part]
                bad: dict[int, str] = {}
                cols = {}
                for i, name in enumerate(names):
                    values = [r[i] for r in rows]
                    t = types.get(name) or infer_type(values)
                    cols[name] = convert_values(name, values, t, bad)
                yield _Chunk(pa.table(cols), bad, names, rows=rows, cursor_values=[r[cur_idx] for r in rows] if cursor else None)

    def _chunks_adbc(self, stmt: Any, names: list[str], types: dict[str, pa.DataType | None], cursor: str | None) -> Iterator[_Chunk]:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc
        from sqlalchemy.dialects import postgresql

        from icefield.ingest.coerce import cast_column

        compiled = stmt.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
        params = [compiled.params[k] for k in compiled.positiontup or []]
        uri = self.engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with adbc.connect(uri) as conn, conn.cursor() as cur:
                cur.execute(str(compiled), parameters=params or None)
                reader = cur.fetch_record_batch()
                for _, raw in rebatch(reader, self.batch_size, 0):
                    bad: dict[int, str] = {}
                    cols = {}
                    for name in names:
                        col = raw.column(name)
                        t = types.get(name) or col.type
                        cols[name] = cast_column(name, col, t, bad)
                    yield _Chunk(pa.table(cols), bad, names, arrow_raw=raw, cursor_values=raw.column(cursor) if cursor else None)
        except (adbc_driver_manager.Error, pa.ArrowException) as e:
            # ADBC raises its own DB-API errors (and Arrow's, mid-stream), outside SQLAlchemy's wrapping.
            raise self._error(e, "reading the source") from e

    def _full_batch(self, chunks: list[_Chunk], names: list[str], position: dict[str, Any] | None) -> SourceBatch | None:
        """The whole result as one batch, or None when its content is the one committed last. The key
        names the previous content too, so content that changes back to an earlier state is a new batch."""
        h = hashlib.sha256()
        for chunk in chunks:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, chunk.typed.schema) as w:
                w.write_table(chunk.typed)
            h.update(sink.getvalue().to_pybytes())
        digest = h.hexdigest()[:32]
        previous = (position or {}).get("content")
        if previous == digest:
            return None
        whole = _Chunk.concat(chunks, names)
        return self._batch(whole, set(), {"content": digest, "rows": whole.size}, f"sql-full:{previous}->{digest}")

    def _batch(self, chunk: _Chunk, drop: set[int], position: dict[str, Any], key: str) -> SourceBatch:
        label = self.cfg.table or "query"
        rejected: list[Rejected] = []
        for i in sorted(chunk.bad):
            if i in drop:
                continue
            row = chunk.raw_row(i)
            raw = json.dumps(dict(zip(chunk.names, row, strict=True)), default=_json_default)
            rejected.append(Rejected(raw, row_coords(label, chunk.names, row, self.keys, i), "type", chunk.bad[i]))
        out = set(chunk.bad) | drop
        data = chunk.typed
        if out:
            data = data.take(pa.array([i for i in range(chunk.size) if i not in out], pa.int64()))
        return SourceBatch(data=data, position=position, key=key, rejected=rejected, coord_label=label, coord_keys=self.keys)


# SQLSTATE classes (the first two characters) and what they tell the user.
_SQLSTATE_KINDS = {
    "28": "login",  # invalid authorization specification: wrong user or password
    "3D": "database",  # invalid catalog name: the database does not exist
    "3F": "database",  # invalid schema name
    "42": "query",  # syntax error or access rule violation: bad query, unknown table or column, no privilege
    "0A": "query",  # feature not supported
    "22": "value",  # data exception: a value (an initial cursor, a cast) the database cannot take
    "08": "transient",  # connection exception
    "53": "transient",  # insufficient resources (too many connections, disk full)
    "57": "transient",  # operator intervention (server shutting down, cannot connect now)
    "40": "transient",  # transaction rollback (serialization failure, deadlock)
    "HY": "transient",  # driver timeout
}
# Errors of a connection that fails before the server has a session (libpq reports no SQLSTATE then).
_LOGIN_REFUSED = re.compile(
    r"password authentication failed|authentication failed|no password supplied|fe_sendauth|pg_hba\.conf|"
    r"access denied for user|login failed",
    re.IGNORECASE,
)
_NAME_MISSING = re.compile(r"(database|role|schema) \S+ does not exist|unknown database", re.IGNORECASE)
_SQLITE_KINDS = {
    "SQLITE_ERROR": "query",  # syntax error, no such table or column
    "SQLITE_MISMATCH": "value",
    "SQLITE_RANGE": "value",
    "SQLITE_BUSY": "transient",
    "SQLITE_LOCKED": "transient",
    "SQLITE_PROTOCOL": "transient",
    "SQLITE_CANTOPEN": "database",
    "SQLITE_NOTADB": "database",
    "SQLITE_AUTH": "login",
    "SQLITE_PERM": "login",
}
# DB-API exception classes, when nothing more precise is known.
_DBAPI_KINDS = {
    "ProgrammingError": "query",
    "NotSupportedError": "query",
    "DataError": "value",
    "OperationalError": "transient",
    "InterfaceError": "transient",
}


def classify_db_error(e: BaseException) -> tuple[str, str]:
    """What a database error means for the user, and its text (redacted, one line).

    The kind is ``login`` (user or password refused), ``database`` (the database, schema or role named
    does not exist), ``query`` (syntax error, unknown table or column, missing privilege), ``value`` (a
    value the database cannot take), ``transient`` (unreachable, busy, shutting down: a retry may help)
    or ``other``. It is read from the SQLSTATE when the driver gives one (psycopg2 ``pgcode``, psycopg
    and ADBC ``sqlstate``), else from SQLite's error name, else from libpq's connection messages, else
    from the DB-API class. Works on SQLAlchemy's wrappers (``.orig``) and on raw driver errors."""
    orig = getattr(e, "orig", None) or e
    text = " ".join(redact(str(orig)).split()) or type(orig).__name__
    if len(text) > 500:
        text = text[:497] + "..."
    state = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    if isinstance(state, str) and len(state) == 5:
        kind = _SQLSTATE_KINDS.get(state[:2])
        if kind is not None:
            return kind, text
    if _LOGIN_REFUSED.search(text):
        return "login", text
    if _NAME_MISSING.search(text):
        return "database", text
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return _SQLITE_KINDS.get(name, "other"), text
    for cls in type(orig).__mro__:
        if cls.__name__ in _DBAPI_KINDS:
            return _DBAPI_KINDS[cls.__name__], text
    from sqlalchemy import exc

    if isinstance(e, exc.StatementError) and not isinstance(e, exc.DBAPIError):
        return "value", text  # SQLAlchemy refused a parameter itself (an initial cursor of the wrong type)
    return "other", text


def _splittable(v: Any) -> bool:
    """Whether Spark's JDBC reader can split a range of this cursor value's type (numbers, dates, times)."""
    return isinstance(v, (int, float, decimal.Decimal, dt.date)) and not isinstance(v, bool)


def _bound(v: Any) -> str:
    """A cursor value as the bound text Spark's JDBC reader parses for the column's type."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        return v.isoformat(sep=" ")
    return v.isoformat() if isinstance(v, dt.date) else str(v)


def _adbc_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("adbc_driver_postgresql") is not None


class _Chunk:
    """Rows read from the source: ``typed`` (bad values as nulls, their reasons in ``bad``), and access
    to each row's raw values and cursor value as the database gave them."""

    def __init__(
        self,
        typed: pa.Table,
        bad: dict[int, str],
        names: list[str],
        rows: list[tuple[Any, ...]] | None = None,
        arrow_raw: pa.Table | None = None,
        cursor_values: Any = None,
    ) -> None:
        self.typed, self.bad, self.names = typed, bad, names
        self.rows, self.arrow_raw, self.cursor_values = rows, arrow_raw, cursor_values
        self.size = typed.num_rows

    def raw_row(self, i: int) -> tuple[Any, ...]:
        if self.rows is not None:
            return self.rows[i]
        assert self.arrow_raw is not None
        return tuple(self.arrow_raw.slice(i, 1).to_pylist()[0].values())

    def cursor_at(self, i: int) -> Any:
        if isinstance(self.cursor_values, list):
            return self.cursor_values[i]
        return self.cursor_values[i].as_py()

    def equal(self, value: Any) -> list[int]:
        """Indices of the rows whose cursor equals ``value`` (None: is NULL)."""
        import pyarrow.compute as pc

        if isinstance(self.cursor_values, list):
            return [i for i, v in enumerate(self.cursor_values) if v == value]
        col = self.cursor_values
        mask = pc.is_null(col) if value is None else pc.fill_null(pc.equal(col, pa.scalar(value, type=col.type)), False)
        return pc.indices_nonzero(mask).to_pylist()  # type: ignore[no-any-return]

    @staticmethod
    def concat(chunks: list[_Chunk], names: list[str]) -> _Chunk:
        if not chunks:
            return _Chunk(pa.table({n: pa.array([], pa.null()) for n in names}), {}, names, rows=[])
        typed = pa.concat_tables([c.typed for c in chunks])
        bad: dict[int, str] = {}
        offset = 0
        for c in chunks:
            bad.update({offset + i: r for i, r in c.bad.items()})
            offset += c.size
        if all(c.rows is not None for c in chunks):
            values = [v for c in chunks for v in c.cursor_values] if all(isinstance(c.cursor_values, list) for c in chunks) else None
            return _Chunk(typed, bad, names, rows=[r for c in chunks for r in (c.rows or [])], cursor_values=values)
        raw = pa.concat_tables([c.arrow_raw for c in chunks if c.arrow_raw is not None])
        cursors = [c.cursor_values for c in chunks if c.cursor_values is not None]
        column = pa.chunked_array([a for v in cursors for a in (v.chunks if isinstance(v, pa.ChunkedArray) else [v])]) if len(cursors) == len(chunks) else None
        return _Chunk(typed, bad, names, arrow_raw=raw, cursor_values=column)
