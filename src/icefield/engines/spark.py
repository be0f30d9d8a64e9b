"""The ``spark`` engine: Spark 4.1 with the Iceberg runtime writes each batch, icefield publishes it with the
position in one commit (the design is in :mod:`icefield.engines.base`, "A distributed engine").

:meth:`SparkEngine.stage`, for a batch of ``main``:

1. cuts the staging branch ``icefield-stage-<pipeline>`` at the ``main`` the request's table is at
   (``ALTER TABLE ... CREATE OR REPLACE BRANCH ... AS OF VERSION``; on a table without a snapshot, Iceberg gives
   the new branch an empty one);
2. hands the batch (Arrow, typed as the table by the writer) to Spark and writes it on that branch with Iceberg's
   Spark writer: ``INSERT INTO`` (append), ``INSERT OVERWRITE`` (overwrite: dynamic by partition, or of the whole
   table with ``overwrite: table`` or an unpartitioned table), ``MERGE INTO`` (merge by ``target.keys``, deletes
   by ``target.delete_column``; the table's ``write.merge.mode`` picks copy-on-write or merge-on-read; a
   ``keep_newest`` merge as below). The
   request's ``summary`` (``icefield.pipeline``, ``icefield.batch-id``, ``icefield.run-id``) goes on the
   snapshot through the session settings ``spark.sql.iceberg.snapshot-property.<key>``, set for that statement
   only;
3. loads the table again and returns a transaction that fast-forwards ``main`` to the branch head, with the
   requirement that ``main`` is still where it was. The writer adds the position and commits it: the batch and the
   position appear on ``main`` in one commit. If ``main`` moved meanwhile, the commit path calls ``stage`` again.
   So does a staged snapshot that does not sit right on the cut: Spark's writer rebased the batch onto a
   commit another writer made on the branch meanwhile (a second driver, the JVM of a killed one), which must
   not reach ``main`` with it.

A batch for an audit branch (write-audit-publish) is written on that branch directly and answered with an empty
transaction.

A ``keep_newest`` merge (change data capture: versions ordered by ``target.order_by``) lands as the local engine
lands it (:meth:`icefield.engines.local.LocalEngine.merge`):

- the ``MERGE INTO``'s matched clauses compare versions (``WHEN MATCHED AND <newer> AND <deleted> THEN DELETE``,
  ``WHEN MATCHED AND <newer> THEN UPDATE``; ``<newer>`` is the order columns compared in turn, NULL the oldest),
  so an older or equal version never replaces or deletes a stored row;
- a new key is inserted only when its version is newer than its tombstone: the source is the batch left-joined
  with ``request.tombstones`` (``<table>__tombstones``, read by Spark ``VERSION AS OF`` the snapshot the writer
  loaded), which marks the upserts a tombstone at least as new holds back (:data:`BURIED`), so a late older
  event never resurrects a deleted row;
- the batch's deletes (keys and version) are handed to ``request.on_tombstones`` before any Spark work (rows
  Spark holds, ``request.frame``: collected from Spark once the batch's view is made); the writer records them
  in the tombstone table, in a commit of its own (landed by this engine too) that precedes the data commit. A
  truncating batch returns them in :attr:`StagedWrite.tombstones` instead, as the local engine does;
- ``rows_stale`` (versions dropped as not newer) is counted by one Spark query before the merge, on the same
  snapshots the merge reads (the branch cut and the tombstones as loaded): batch rows a stored version at least
  as new matches, and upserts of keys the table lacks held back by a tombstone. Spark's merge metrics count
  target rows only, so they cannot tell it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from icefield.engines.base import SUSPECT_COLUMN, Engine, EngineCapabilities, Frame, StagedWrite, WriteRequest
from icefield.errors import ConfigError
from icefield.iceberg.history import MAIN, SUMMARY_BATCH_ID, SUMMARY_PIPELINE, head_id
from icefield.iceberg.versions import dedupe_latest, split_deletes

if TYPE_CHECKING:
    from datetime import datetime

    import pyarrow as pa
    from pyiceberg.table import Table

    from icefield.config import Project
    from icefield.config.models import TargetConfig

log = logging.getLogger(__name__)

STAGE_PREFIX = "icefield-stage-"
SNAPSHOT_PROPERTY = "spark.sql.iceberg.snapshot-property."
"""Session settings whose suffix Iceberg's Spark writer puts in the summary of every snapshot it commits."""
OVERWRITE_MODE = "spark.sql.sources.partitionOverwriteMode"
BURIED = "_icefield_buried"
"""The column of a ``keep_newest`` merge's source that marks an upsert a tombstone at least as new holds back."""
HIT = "_icefield_hit"

_JDBC_DRIVERS = {"sqlite": "org.sqlite.JDBC", "postgresql": "org.postgresql.Driver"}

# One statement at a time: the snapshot properties and the overwrite mode are settings of the one session.
_session_lock = threading.RLock()


def staging_branch(pipeline: str) -> str:
    """The branch a pipeline's batches are written on before ``main`` is moved to them."""
    return STAGE_PREFIX + pipeline


def _q(name: str) -> str:
    """``name`` as a Spark SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def _window_sql(table: Table, column: str, start: datetime, end: datetime) -> str:
    """``start <= t.column < end`` in Spark SQL, the bounds typed as the table's column (a ``date``, a
    ``timestamp`` without time zone compared as UTC wall-clock time, or a ``timestamptz``); the column is
    checked by :func:`icefield.engines.files.window_filter`."""
    from pyiceberg.types import DateType, TimestampType

    from icefield.engines.files import window_filter

    window_filter(table, column, start, end)  # a ConfigError for a missing column or one that is no date or time
    kind = table.schema().find_field(column).field_type
    if isinstance(kind, DateType):
        lo, hi = f"DATE '{start.date().isoformat()}'", f"DATE '{end.date().isoformat()}'"
    elif isinstance(kind, TimestampType):
        lo, hi = (f"TIMESTAMP_NTZ '{t.replace(tzinfo=None).isoformat(sep=' ')}'" for t in (start, end))
    else:
        lo, hi = (f"TIMESTAMP_LTZ '{t.isoformat(sep=' ')}'" for t in (start, end))
    return f"t.{_q(column)} >= {lo} AND t.{_q(column)} < {hi}"


class SparkEngine(Engine):
    """Lands batches with Spark's Iceberg writer on a staging branch; ``main`` moves with the position."""

    name: ClassVar[str] = "spark"
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities(
        supports_merge=True, distributed=True, dialect="spark", reads=frozenset({"sql", "kafka", "files"}), replaces_windows=True
    )

    def __init__(self, project: Project | None = None, session: Any = None) -> None:
        self._project = project
        self._session = session
        self.timings: list[tuple[str, float]] = []
        """``(batch id, seconds)`` of each :meth:`stage`: the Spark work of the batch."""
        self._frames: dict[str, Any] = {}  # view name -> its checkpointed DataFrame

    @classmethod
    def for_project(cls, project: Project | None) -> Engine:
        if project is None:
            raise ConfigError("engine spark needs the project (its catalog and its spark settings): pass it to get_engine")
        return cls(project)

    @property
    def spark(self) -> Any:
        """The Spark session, started on first use (:func:`icefield.engines.spark_session.project_session`)."""
        if self._session is None:
            from icefield.engines.spark_session import project_session

            assert self._project is not None
            self._session = project_session(self._project)
        return self._session

    def _catalog_name(self) -> str:
        if self._project is not None:
            return self._project.config.catalog.name
        return str(self.spark.conf.get("spark.sql.defaultCatalog"))

    def stage(self, table: Table, request: WriteRequest) -> StagedWrite:
        """Write the batch on the staging branch (or the audit branch) with Spark and return the fast-forward of
        ``main`` (see the module doc)."""
        target, data = request.target, request.data
        whole_table = target.mode == "overwrite" and (target.overwrite == "table" or table.spec().is_unpartitioned())
        frame = request.frame
        if frame is not None and not frame.rows:
            frame = None
        if (
            not data.num_rows and frame is None and not request.truncate and not whole_table and request.replace_file is None
            and request.replace_window is None  # an emptied window still removes its stored rows
        ):
            return StagedWrite(table.transaction(), changed=False)
        started = time.perf_counter()
        batch = dedupe_latest(data, target.keys, target.order_columns) if target.mode == "merge" and frame is None else data
        newest = frame is None and _keeps_newest(target, batch.column_names)
        deletes = _deletes(target, batch) if newest else None
        hand = request.on_tombstones if not request.truncate else None
        if deletes is not None and hand is not None:
            # The writer records them while Spark merges (before the data commit), as with the local engine.
            hand(deletes)
            deletes = None
        stale = 0
        ident = table.name()
        base = ".".join(_q(p) for p in (self._catalog_name(), *ident))
        main = head_id(table)
        columns = table.schema().column_names
        with _session_lock:
            spark = self.spark
            if request.branch == MAIN:
                ref = staging_branch(request.summary[SUMMARY_PIPELINE])
                self._cut(spark, base, ref, main)
            else:
                ref = request.branch
            before = head_id(table, ref) if request.branch != MAIN else main
            view = f"icefield_batch_{uuid.uuid4().hex[:12]}"
            names = batch.column_names
            if frame is None:
                spark.createDataFrame(batch).createOrReplaceTempView(view)
            else:
                df = self._with_frame(data, frame, request)
                df.createOrReplaceTempView(view)
                names = list(df.columns)
                newest = _keeps_newest(target, names)
            try:
                if frame is not None and newest:  # the deletes of the rows Spark holds, as tombstones
                    deletes = self._frame_deletes(spark, target, view, names)
                    if deletes is not None and hand is not None:
                        hand(deletes)
                        deletes = None
                source, buried = view, False
                if newest and not request.truncate:
                    source, buried, stale = self._newest_source(spark, request, view, names, base, before)
                statement, args, dynamic = self._statement(
                    table, request, f"{base}.{_q('branch_' + ref)}", source, columns, whole_table, set(names), newest=newest, buried=buried
                )
                self._run(spark, statement, args, request.summary, dynamic)
            finally:
                spark.catalog.dropTempView(view)
        fresh = table.catalog.load_table(ident)
        if head_id(fresh) != main:
            from pyiceberg.exceptions import CommitFailedException

            raise CommitFailedException(f"main of {'.'.join(ident)} moved while Spark wrote the batch on {ref!r}")
        head = head_id(fresh, ref)
        changed = head != before
        tx = fresh.transaction()
        staged = StagedWrite(tx, changed, rows_stale=stale, tombstones=deletes)
        if changed and head is not None:
            snap = fresh.snapshot_by_id(head)
            assert snap is not None and snap.summary is not None
            if not _sits_on(fresh, snap.parent_snapshot_id, before):
                from pyiceberg.exceptions import CommitFailedException

                # Another writer committed on the branch between the cut and Spark's commit (a second driver of
                # the pipeline, the JVM of a killed one): Spark's writer rebased the batch onto its snapshot,
                # which must not reach main with it. Stage again from a fresh cut.
                raise CommitFailedException(
                    f"another writer committed on {ref!r} of {'.'.join(ident)} while Spark wrote the batch: "
                    f"the batch's snapshot {head} does not sit on {before}"
                )
            summary = snap.summary.additional_properties
            if summary.get(SUMMARY_BATCH_ID) != request.summary.get(SUMMARY_BATCH_ID):
                raise ConfigError(
                    f"Spark committed snapshot {head} on {ref!r} of {'.'.join(ident)} without the batch id "
                    f"{request.summary.get(SUMMARY_BATCH_ID)!r}: this Iceberg runtime ignores {SNAPSHOT_PROPERTY}*; "
                    "use the Iceberg Spark runtime 1.11 or newer"
                )
            _count(staged, summary, target.mode == "merge", request.truncate)
            if request.branch == MAIN:
                from pyiceberg.table.refs import SnapshotRefType

                # The requirement that comes with it asserts main still points where it was: compare-and-swap.
                tx._stage(*tx._set_ref_snapshot(snapshot_id=head, ref_name=MAIN, type=SnapshotRefType.BRANCH))
        seconds = time.perf_counter() - started
        self.timings.append((request.summary.get(SUMMARY_BATCH_ID, ""), seconds))
        log.info("spark staged batch %s of %s on %s in %.1fs", request.summary.get(SUMMARY_BATCH_ID), ".".join(ident), ref, seconds)
        return staged

    def _with_frame(self, data: Any, frame: Frame, request: WriteRequest) -> Any:
        """The batch as one DataFrame: the engine's ``frame`` (typed as the table by :meth:`split`) and the
        rows of ``data`` cast to its types (a column only ``data`` has is null for the frame's rows); a merge keeps the last version of each key (by ``order_by``, else
        by the order the source gave: the frame's ``order``)."""
        df = self._frames[frame.handle]
        if data.num_rows:
            from pyspark.sql import functions as F

            more = self.spark.createDataFrame(data)
            types = {f.name: f.dataType for f in df.schema}
            # A column only the rows of data have (the table gained it for them) is null in the frame's rows.
            more = more.select(*[F.col(_q(c)).cast(types[c]).alias(c) if c in types else F.col(_q(c)) for c in more.columns])
            df = df.unionByName(more, allowMissingColumns=True)
        target = request.target
        if target.mode != "merge":
            return df
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        # Equal versions of a key: the later one the source gave wins, as in dedupe_latest.
        order = list(dict.fromkeys([*target.order_columns, *frame.order]))
        by = [F.col(_q(c)).desc_nulls_last() for c in order] or [F.lit(1)]
        rank = "__icefield_rank"
        newest = Window.partitionBy(*[F.col(_q(k)) for k in target.keys]).orderBy(*by)
        return df.withColumn(rank, F.row_number().over(newest)).filter(F.col(rank) == 1).drop(rank).localCheckpoint(eager=True)

    # ------------------------------------------------------------------ reading sources (frames)

    def read_jdbc(self, url: str, select: str, column: str | None, bounds: tuple[str, str] | None, extra: Any) -> Frame:
        """Read ``select`` from the database at ``url`` with Spark's JDBC reader, in ``spark.read_partitions``
        ranges of ``column`` between ``bounds`` (Spark's ``partitionColumn``, ``lowerBound``, ``upperBound``), plus
        the rows of ``extra``; checkpointed (eagerly, on the executors), so every later step sees the rows read
        once, never a second read of a source that moved meanwhile. See :meth:`Engine.read_jdbc`."""
        from icefield.engines.spark_session import jdbc_url_from_sqlalchemy

        jdbc, user, password = jdbc_url_from_sqlalchemy(url)
        with _session_lock:
            spark = self.spark
            reader = (
                spark.read.format("jdbc")
                .option("url", jdbc)
                .option("dbtable", f"({select}) icefield_source")
                .option("fetchsize", "10000")
                # a timestamp without a time zone stays one (Iceberg's timestamp, not timestamptz)
                .option("preferTimestampNTZ", "true")
            )
            driver = _JDBC_DRIVERS.get(jdbc.split(":")[1])
            if driver is not None:  # the jars are on Spark's class loader, which java.sql.DriverManager does not search
                reader = reader.option("driver", driver)
            if user is not None:
                reader = reader.option("user", user)
            if password is not None:
                reader = reader.option("password", password)
            parts = self.read_partitions()
            if column is not None and bounds is not None and parts > 1:
                reader = (
                    reader.option("partitionColumn", column)
                    .option("lowerBound", bounds[0])
                    .option("upperBound", bounds[1])
                    .option("numPartitions", str(parts))
                )
            started = time.perf_counter()
            try:
                df = reader.load()
                ranges = df.rdd.getNumPartitions()
                if extra is not None and extra.num_rows:
                    from pyspark.sql import functions as F

                    more = spark.createDataFrame(extra)
                    df = df.unionByName(more.select(*[F.col(_q(f.name)).cast(f.dataType).alias(f.name) for f in df.schema]))
                df = df.localCheckpoint(eager=True)
            except Exception as e:
                from icefield.errors import SourceError

                if type(e).__name__ in ("AnalysisException", "ParseException"):
                    raise ConfigError(f"Spark could not read the source ({_first_line(e)}); the query was: {select}") from e
                raise SourceError(f"Spark's JDBC read of the source failed: {_first_line(e)}") from e
            rows = df.count()
            view = f"icefield_frame_{uuid.uuid4().hex[:12]}"
            df.createOrReplaceTempView(view)
            self._frames[view] = df
        log.info("spark read %d rows of the source in %d range(s) in %.1fs", rows, ranges, time.perf_counter() - started)
        return Frame(view, rows)

    def read_kafka(
        self, options: dict[str, str], ranges: dict[tuple[str, int], tuple[int, int]], decode: Any, schema: Any
    ) -> Frame:
        """Read the offset ranges with Spark's Kafka source (``assign``, ``startingOffsets``, ``endingOffsets``:
        one Spark task per partition), decode them with ``decode`` in Spark's Python workers
        (``mapInArrow``), and checkpoint the result (see :meth:`Engine.read_kafka`). ``schema`` is the Arrow
        form of the rows ``decode`` yields; Spark's own types are derived from it."""
        import json

        from pyspark.sql.pandas.types import from_arrow_schema

        topics = sorted({t for t, _ in ranges})
        assign = {t: sorted(p for (u, p) in ranges if u == t) for t in topics}
        start = {t: {str(p): ranges[(t, p)][0] for p in assign[t]} for t in topics}
        end = {t: {str(p): ranges[(t, p)][1] for p in assign[t]} for t in topics}
        with _session_lock:
            spark = self.spark
            reader = (
                spark.read.format("kafka")
                .option("assign", json.dumps(assign))
                .option("startingOffsets", json.dumps(start))
                .option("endingOffsets", json.dumps(end))
                # offsets deleted by retention (or transaction markers) are gaps, as for icefield's own reader
                .option("failOnDataLoss", "false")
            )
            for key, value in options.items():
                if key not in ("group.id", "enable.auto.commit", "auto.offset.reset", "enable.partition.eof"):
                    reader = reader.option(f"kafka.{key}", value)
            started = time.perf_counter()
            try:
                raw = reader.load().select("topic", "partition", "offset", "value")
                df = raw.mapInArrow(decode, from_arrow_schema(schema, prefer_timestamp_ntz=True)).localCheckpoint(eager=True)
            except Exception as e:
                from icefield.errors import SourceError

                if "Failed to find data source: kafka" in str(e):
                    from icefield.engines.spark_session import JARS_HINT

                    raise ConfigError(f"Spark's Kafka source is not on spark.jars: run `{JARS_HINT}` and start again") from e
                raise SourceError(f"Spark's read of Kafka failed: {_first_line(e)}") from e
            rows = df.count()
            view = f"icefield_frame_{uuid.uuid4().hex[:12]}"
            df.createOrReplaceTempView(view)
            self._frames[view] = df
        log.info("spark read %d messages of %d partition(s) in %.1fs", rows, len(ranges), time.perf_counter() - started)
        return Frame(view, rows)

    def read_files(self, paths: list[str], decode: Any, schema: Any, by: str) -> tuple[Frame, dict[Any, int]]:
        """Read the files with Spark's ``binaryFile`` source (each file whole, in one task; small files share
        one), decode them with ``decode`` in Spark's Python workers (``mapInArrow``), checkpoint the result and
        count its rows by the column ``by`` (see :meth:`Engine.read_files`). ``schema`` is the Arrow form of the
        rows ``decode`` yields; Spark's own types are derived from it."""
        from pyspark.sql.pandas.types import from_arrow_schema

        with _session_lock:
            spark = self.spark
            started = time.perf_counter()
            try:
                raw = spark.read.format("binaryFile").load(paths).select("path", "content")
                df = raw.mapInArrow(decode, from_arrow_schema(schema, prefer_timestamp_ntz=True)).localCheckpoint(eager=True)
                counts = {r[0]: int(r[1]) for r in df.groupBy(by).count().collect()}
            except Exception as e:
                from icefield.errors import SourceError

                raise SourceError(f"Spark's read of the source files failed: {_first_line(e)}") from e
            rows = sum(counts.values())
            view = f"icefield_frame_{uuid.uuid4().hex[:12]}"
            df.createOrReplaceTempView(view)
            self._frames[view] = df
        log.info("spark read %d files (%d rows) in %.1fs", len(paths), rows, time.perf_counter() - started)
        return Frame(view, rows), counts

    def take(self, frame: Frame, where: str) -> Frame:
        """See :meth:`Engine.take`: checkpointed, so it outlives ``frame`` (released once the source is read)."""
        with _session_lock:
            df = self._frames[frame.handle].filter(where).localCheckpoint(eager=True)
            rows = df.count()
            view = f"icefield_frame_{uuid.uuid4().hex[:12]}"
            df.createOrReplaceTempView(view)
            self._frames[view] = df
        return Frame(view, rows, frame.order)

    def read_partitions(self) -> int:
        """How many ranges a source read is split into: ``spark.read_partitions``, else Spark's default
        parallelism (the cores of ``local[N]``, of the cluster's workers)."""
        configured = self._project.config.spark.read_partitions if self._project is not None else None
        return configured or int(self.spark.sparkContext.defaultParallelism)

    def split(self, frame: Frame, table: Table, suspect: str | None, columns: list[str]) -> tuple[Frame, Any]:
        """See :meth:`Engine.split`: one pass marks each row (the check condition, or a value whose cast to the
        table's type fails), the marked rows come back as Arrow, the others stay, cast to the table's types."""
        base = ".".join(_q(p) for p in (self._catalog_name(), *table.name()))
        with _session_lock:
            spark = self.spark
            df = self._frames.pop(frame.handle)
            types = {f.name: f.dataType for f in spark.table(base).schema}
            have = {f.name: f.dataType for f in df.schema}
            marks = [f"({suspect})"] if suspect else []
            if SUSPECT_COLUMN in have:
                marks.append(SUSPECT_COLUMN)
            for name, t in have.items():
                if name in types and types[name] != t:
                    marks.append(f"({_q(name)} IS NOT NULL AND try_cast({_q(name)} AS {types[name].simpleString()}) IS NULL)")
            flag = "__icefield_marked"
            try:
                marked = spark.sql(
                    f"SELECT *, coalesce({' OR '.join(marks) or 'false'}, false) AS {flag} FROM {frame.handle}"
                ).localCheckpoint(eager=True)
            except Exception as e:
                if type(e).__name__ in ("AnalysisException", "ParseException"):
                    raise ConfigError(f"Spark could not run the batch's checks ({_first_line(e)}); fix the check") from e
                raise
            finally:
                spark.catalog.dropTempView(frame.handle)
            suspects = marked.filter(f"{flag}").drop(flag).toArrow()
            select = []
            for name in columns:
                if name in types:
                    source = _q(name) if name in have else "NULL"
                    select.append(f"CAST({source} AS {types[name].simpleString()}) AS {_q(name)}")
                elif name in have:
                    select.append(_q(name))
            view = f"icefield_frame_{uuid.uuid4().hex[:12]}"
            marked.createOrReplaceTempView(view)
            try:
                good = spark.sql(f"SELECT {', '.join(select)} FROM {view} WHERE NOT {flag}").localCheckpoint(eager=True)
            finally:
                spark.catalog.dropTempView(view)
            rows = good.count()
            good.createOrReplaceTempView(view)
            self._frames[view] = good
        log.info("spark checks: %d of %d rows to check here", suspects.num_rows, frame.rows)
        return Frame(view, rows, frame.order), suspects

    def release(self, frame: Frame) -> None:
        df = self._frames.pop(frame.handle, None)
        if df is not None:
            with _session_lock:
                self.spark.catalog.dropTempView(frame.handle)
                df.unpersist()

    @staticmethod
    def _cut(spark: Any, base: str, ref: str, main: int | None) -> None:
        """Point the staging branch ``ref`` at ``main`` (a new branch of a table without a snapshot gets an
        empty one)."""
        if main is None:
            spark.sql(f"ALTER TABLE {base} DROP BRANCH IF EXISTS {_q(ref)}")
            spark.sql(f"ALTER TABLE {base} CREATE BRANCH {_q(ref)}")
        else:
            spark.sql(f"ALTER TABLE {base} CREATE OR REPLACE BRANCH {_q(ref)} AS OF VERSION {main}")

    @staticmethod
    def _frame_deletes(spark: Any, target: TargetConfig, view: str, names: list[str]) -> pa.Table | None:
        """The deletes of the batch in ``view`` (deduplicated by key, columns ``names``) as tombstones: their
        keys and version, collected from Spark; None without any."""
        if target.delete_column not in names:
            return None
        picked = ", ".join(f"s.{_q(c)}" for c in dict.fromkeys([*target.keys, *target.order_columns]))
        rows = spark.sql(f"SELECT {picked} FROM {view} s WHERE {_deleted_sql(target, names)}").toArrow()
        return rows if rows.num_rows else None

    def _newest_source(
        self, spark: Any, request: WriteRequest, view: str, names: list[str], base: str, before: int | None
    ) -> tuple[str, bool, int]:
        """The source of a ``keep_newest`` merge of the batch (view ``view``, columns ``names``) into the table ``base`` (at
        snapshot ``before``, the branch as cut), whether it has the column :data:`BURIED`, and the count of
        its stale rows.

        ``BURIED`` is true for an upsert whose key has a tombstone at least as new in ``request.tombstones``
        (read at the snapshot the writer loaded, as the local engine reads it): such a row is not inserted,
        so a late older event never resurrects a deleted key. The stale rows, as the local engine counts
        them, are the batch rows a stored version at least as new matches, and the buried rows of keys the
        table does not hold: Spark's merge metrics count target rows only, so one query counts them on
        the same snapshots before the merge."""
        target = request.target
        keys, order = target.keys, target.order_columns
        on = " AND ".join(f"s.{_q(k)} = t.{_q(k)}" for k in keys)
        picked = ", ".join(_q(c) for c in dict.fromkeys([*keys, *order]))
        graves = request.tombstones
        grave = graves.current_snapshot() if graves is not None else None
        source, buried = view, False
        if graves is not None and grave is not None:
            dead = f"{'.'.join(_q(p) for p in (self._catalog_name(), *graves.name()))} VERSION AS OF {grave.snapshot_id}"
            hit = ", ".join(f"s.{_q(k)}" for k in keys)
            back = " AND ".join(f"s.{_q(k)} = b.{_q(k)}" for k in keys)
            source = (
                f"(SELECT s.*, (NOT {_deleted_sql(target, names)} AND b.{_q(HIT)} IS NOT NULL) AS {_q(BURIED)} "
                f"FROM {view} s LEFT JOIN (SELECT DISTINCT {hit}, true AS {_q(HIT)} FROM {view} s "
                f"JOIN (SELECT {picked} FROM {dead}) t ON {on} WHERE NOT {_newer_sql(order)}) b ON {back})"
            )
            buried = True
        counts = []
        if before is not None:
            stored = f"(SELECT {picked} FROM {base} VERSION AS OF {before})"
            counts.append(f"(SELECT count(*) FROM {source} s LEFT SEMI JOIN {stored} t ON {on} AND NOT {_newer_sql(order)})")
            if buried:
                counts.append(f"(SELECT count(*) FROM {source} s LEFT ANTI JOIN {stored} t ON {on} WHERE s.{_q(BURIED)})")
        elif buried:
            counts.append(f"(SELECT count(*) FROM {source} s WHERE s.{_q(BURIED)})")
        stale = 0
        if counts:
            query = "SELECT " + " + ".join(counts)
            log.debug("spark: %s", query)
            try:
                stale = int(spark.sql(query).collect()[0][0])
            except Exception as e:
                if type(e).__name__ in ("AnalysisException", "ParseException"):
                    raise ConfigError(f"Spark refused the count of the batch's stale versions ({e}); the query was: {query}") from e
                raise
        return source, buried, stale

    @staticmethod
    def _statement(
        table: Table, request: WriteRequest, dest: str, view: str, columns: list[str], whole_table: bool,
        have: set[str], newest: bool = False, buried: bool = False,
    ) -> tuple[str, dict[str, Any], bool]:
        """The SQL statement that writes the batch (view ``view`` with the columns ``have``, or a subquery over
        it) on ``dest`` (the table's branch), its named arguments, and whether the overwrite is dynamic (by
        partition). ``newest``:
        a ``keep_newest`` merge (only a strictly newer version replaces or deletes a stored row); ``buried``:
        the source has the column :data:`BURIED` (rows not to insert, :meth:`_newest_source`)."""
        target = request.target
        select = ", ".join(f"s.{_q(c)}" if c in have else f"NULL AS {_q(c)}" for c in columns)
        if target.mode == "overwrite":
            return f"INSERT OVERWRITE {dest} SELECT {select} FROM {view} s", {}, not whole_table
        if target.mode == "append":
            if request.replace_window is not None:
                # One snapshot: the stored rows of the window go, the batch (the window's rows) comes in.
                cols = ", ".join(_q(c) for c in columns)
                return (
                    f"MERGE INTO {dest} t USING {view} s ON FALSE "
                    f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({select}) "
                    f"WHEN NOT MATCHED BY SOURCE AND {_window_sql(table, *request.replace_window)} THEN DELETE",
                    {},
                    False,
                )
            if request.replace_file is not None and request.replace_file[0] in columns:
                # One snapshot: the rows the changed source file gave before go, the batch comes in.
                column, value = request.replace_file
                cols = ", ".join(_q(c) for c in columns)
                return (
                    f"MERGE INTO {dest} t USING {view} s ON FALSE "
                    f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({select}) "
                    # the value as hex: no quoting to get wrong (Iceberg's MERGE rewrite leaves named parameters unbound)
                    f"WHEN NOT MATCHED BY SOURCE AND t.{_q(column)} = decode(unhex('{value.encode().hex()}'), 'UTF-8') THEN DELETE",
                    {},
                    False,
                )
            return f"INSERT INTO {dest} SELECT {select} FROM {view} s", {}, False
        # merge
        flag = target.delete_column if target.delete_column in have else None
        deleted = _deleted_sql(target, sorted(have))
        if request.truncate:
            return f"INSERT OVERWRITE {dest} SELECT {select} FROM {view} s WHERE NOT {deleted}", {}, False
        on = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in target.keys)
        sets = ", ".join(f"t.{_q(c)} = s.{_q(c)}" for c in columns if c in have)
        cols = ", ".join(_q(c) for c in columns)
        # keep_newest: an older or equal version leaves the stored row as it is (stale).
        matched = f"WHEN MATCHED AND {_newer_sql(target.order_columns)}" if newest else "WHEN MATCHED"
        insert = f"WHEN NOT MATCHED AND NOT {deleted}" + (f" AND NOT s.{_q(BURIED)}" if buried else "")
        clauses = [f"{matched} AND {deleted} THEN DELETE"] if flag else []
        clauses += [f"{matched} THEN UPDATE SET {sets}", f"{insert} THEN INSERT ({cols}) VALUES ({select})"]
        return f"MERGE INTO {dest} t USING {view} s ON {on} " + " ".join(clauses), {}, False

    @staticmethod
    def _run(spark: Any, statement: str, args: dict[str, Any], summary: dict[str, str], dynamic: bool) -> None:
        """Run ``statement`` with ``summary`` as the properties of the snapshots it commits (and the dynamic
        partition overwrite mode when ``dynamic``); the session settings are put back afterwards."""
        conf = spark.conf
        settings = {SNAPSHOT_PROPERTY + k: v for k, v in summary.items()}
        settings[OVERWRITE_MODE] = "dynamic" if dynamic else "static"
        previous = {k: conf.get(k, None) for k in settings}
        for k, v in settings.items():
            conf.set(k, v)
        try:
            log.debug("spark: %s", statement)
            spark.sql(statement, args=args or None)
        except Exception as e:
            if type(e).__name__ in ("AnalysisException", "ParseException"):
                raise ConfigError(f"Spark refused the batch's statement ({e}); the statement was: {statement}") from e
            raise
        finally:
            for k, v in previous.items():
                if v is None:
                    conf.unset(k)
                else:
                    conf.set(k, v)


def _keeps_newest(target: TargetConfig, names: list[str]) -> bool:
    """True for a ``keep_newest`` merge whose batch (columns ``names``) has the order columns (as the local
    engine decides)."""
    order = target.order_columns
    return target.mode == "merge" and target.keep_newest and bool(order) and all(c in names for c in order)


def _deletes(target: TargetConfig, batch: pa.Table) -> pa.Table | None:
    """The deletes of ``batch`` (deduplicated by key) as tombstones: their keys and version; None without any."""
    import pyarrow.compute as pc

    _, flag = split_deletes(batch, target.delete_column)
    if not pc.any(flag).as_py():
        return None
    return batch.filter(flag).select(target.keys + target.order_columns)


def _deleted_sql(target: TargetConfig, names: list[str]) -> str:
    """Spark SQL that is true for a source row ``s`` (columns ``names``) that deletes its key (a NULL flag is
    an upsert)."""
    flag = target.delete_column if target.delete_column in names else None
    return f"coalesce(CAST(s.{_q(flag)} AS BOOLEAN), false)" if flag else "false"


def _newer_sql(order: list[str], new: str = "s", old: str = "t") -> str:
    """Spark SQL that is true where the version of ``new`` is strictly newer than that of ``old``: the columns
    ``order`` compared in turn, NULL older than any value and equal to NULL (as
    :func:`icefield.iceberg.versions.newer_mask`)."""
    terms: list[str] = []
    equal: list[str] = []
    for c in order:
        a, b = f"{new}.{_q(c)}", f"{old}.{_q(c)}"
        terms.append(" AND ".join([*equal, f"(coalesce({a} > {b}, false) OR ({a} IS NOT NULL AND {b} IS NULL))"]))
        equal.append(f"({a} <=> {b})")
    return "(" + " OR ".join(f"({t})" for t in terms) + ")"


def _first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (a Java exception's own, not py4j's call)."""
    java = getattr(e, "java_exception", None)
    text = (str(java) if java is not None else str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _sits_on(table: Table, parent: int | None, cut: int | None) -> bool:
    """True when a snapshot whose parent is ``parent`` was committed right on the branch cut at ``cut``: its
    parent is ``cut``, or (a table without a snapshot at the cut) the empty root snapshot Iceberg gave the new
    branch."""
    if cut is not None or parent is None:
        return parent == cut
    root = table.snapshot_by_id(parent)
    if root is None or root.parent_snapshot_id is not None:
        return False
    summary = root.summary.additional_properties if root.summary is not None else {}
    return not int(summary.get("added-records", 0) or 0)


def _count(staged: StagedWrite, summary: dict[str, str], merge: bool, truncate: bool = False) -> None:
    """Fill ``staged``'s counts from the summary of the snapshot Spark committed (a truncating merge inserts
    every row it writes, as the local engine counts it)."""

    def n(key: str) -> int:
        return int(summary.get(key, 0) or 0)

    staged.rows_written = n("added-records")
    staged.files_added = n("added-data-files")
    staged.files_removed = n("deleted-data-files")
    if merge and truncate:
        staged.rows_inserted = staged.rows_written
    elif merge:
        prefix = "spark.merge-into.num-target-rows-"
        staged.rows_updated, staged.rows_inserted = n(prefix + "updated"), n(prefix + "inserted")
        staged.rows_deleted = n(prefix + "deleted")

