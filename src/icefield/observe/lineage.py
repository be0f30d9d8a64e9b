"""OpenLineage run events for every run (``lineage:`` in ``icefield.yaml``; docs/lineage.md).

:class:`LineageObserver` turns a run's events (:mod:`icefield.observe.events`) into OpenLineage run events:
START when the run starts, COMPLETE or FAIL when it finishes (FAIL also when a gate held its batch: the
data did not reach ``main``). Everything it reports comes from the events, counted once by the run:

- the job: ``namespace`` (``lineage.namespace``, default the project's name) and the pipeline's name
  (``model.<name>`` for a model), with a job-type facet, the pipeline's ``description`` and, for a model,
  its SQL;
- inputs: the source, named by the OpenLineage naming conventions (:func:`source_datasets`), and the
  Iceberg tables a model read (at the snapshot it read, with their schema);
- outputs: the Iceberg tables the run wrote (namespace: the warehouse location, or the catalog's URI for a
  REST or Hive catalog; name ``namespace.table``) with their schema, the snapshot the run last committed as
  the dataset's version, output statistics (rows and bytes the run committed), the gates' and checks'
  results as data-quality assertions, and, for a model, column lineage derived from its SQL (sqlglot);
- the run: its icefield run id, status, batches (batch id, snapshot id, rows) in the ``icefield`` facet
  (schema: ``schemas/IcefieldRunFacet.json`` beside this module), the error of a failed run, and the
  parent Airflow task run when the run happens inside one (:func:`airflow_parent`).

The run id of OpenLineage is a UUID derived from icefield's run id, the node and the start time, so the
START and the COMPLETE of one run share it, and two nodes of one plan run have different ones.

Sending goes through openlineage-python's transports (file of JSON lines, HTTP, console); a transport
that fails is logged by the event stream and the run goes on. The ``lineage`` extra installs
openlineage-python; only :func:`lineage_observer` (called by the entry points) imports this module.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from icefield.observe.events import (
    BatchCommitted,
    ErrorRaised,
    Event,
    GateEvaluated,
    RunFinished,
    RunStarted,
    SourceRef,
    TableRef,
)

if TYPE_CHECKING:
    from openlineage.client.event_v2 import InputDataset, OutputDataset, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        data_quality_assertions_dataset,
        parent_run,
    )
    from openlineage.client.transport import Transport

    from icefield.config import Project
    from icefield.config.models import LineageConfig

log = logging.getLogger(__name__)

__all__ = [
    "PRODUCER",
    "AirflowParent",
    "LineageObserver",
    "airflow_parent",
    "column_lineage",
    "lineage_observer",
    "source_datasets",
]

PRODUCER = "https://pypi.org/project/icefield/"
"""The ``producer`` of every event and facet icefield emits."""
FACET_SCHEMA_URL = "https://icefield.dev/spec/facets/1-0-0/IcefieldRunFacet.json#/$defs/IcefieldRunFacet"
"""The ``_schemaURL`` of the ``icefield`` run facet: the ``$id`` of ``schemas/IcefieldRunFacet.json``."""
DEFAULT_PATH = "lineage.jsonl"
"""The file of the ``file`` transport, under the project's state folder, when ``lineage.path`` is not set."""
QUARANTINE_SUFFIX = "__quarantine"


@functools.cache
def _icefield_facet_class() -> type:
    """icefield's own run facet (``icefield``): its run id, the run's status and each batch with the snapshot
    that holds it. A class made on first use: openlineage-python is imported only when lineage is on."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class IcefieldRunFacet(RunFacet):
        runId: str  # noqa: N815
        status: str
        batches: list[dict[str, Any]] = attr.field(factory=list)

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return IcefieldRunFacet


# ---------------------------------------------------------------------------------------------- naming


def source_datasets(source: SourceRef) -> list[tuple[str, str]]:
    """The (namespace, name) of each dataset a source reads, by the OpenLineage naming conventions:

    - PostgreSQL: ``postgres://host:port`` and ``database.schema.table`` (schema ``public`` when not given);
      MySQL: ``mysql://host:port`` and ``database.table``; other SQL databases ``<dialect>://host:port`` and
      ``database.schema.table``; SQLite (no convention in the spec): ``sqlite://<absolute path of the file>``
      and the table. A source that reads
      a query is named ``query:<hash of the query>``;
    - Kafka (and Debezium from Kafka): ``kafka://<first bootstrap server>`` and each topic;
    - files (and Debezium from files): ``file`` and the absolute folder the glob starts from;
    - a model, or a source type icefield does not know: none (a model's inputs are the tables it read).
    """
    uri = source.uri
    if source.kind == "model":
        return []
    if uri.startswith("file://"):
        return [("file", _glob_root(unquote(uri[len("file://"):])))]
    if uri.startswith("kafka://"):
        servers, _, topics = uri[len("kafka://"):].partition("/")
        server = servers.split(",")[0]
        return [(f"kafka://{server}", t) for t in topics.split(",") if t]
    if source.kind == "sql" and "://" in uri:
        return [_sql_dataset(uri)]
    return []


_DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306, "mssql": 1433, "oracle": 1521}


def _sql_dataset(uri: str) -> tuple[str, str]:
    url, _, what = uri.partition("#")
    dialect = url.split("://", 1)[0].split("+", 1)[0]
    dialect = {"postgresql": "postgres", "mariadb": "mysql"}.get(dialect, dialect)
    parts = urlsplit(url)
    if dialect == "sqlite":  # sqlite:///<relative> or sqlite:////<absolute> (absolute in a SourceRef)
        path = url.split("://", 1)[1][1:]
        return (f"sqlite://{path}" if path else "sqlite://:memory:", what)
    host = parts.hostname or "localhost"
    port = parts.port or _DEFAULT_PORTS.get(dialect)
    namespace = f"{dialect}://{host}:{port}" if port else f"{dialect}://{host}"
    database = parts.path.lstrip("/")
    if what.startswith("query:"):
        return namespace, ".".join(p for p in (database, what) if p)
    schema, _, table = what.rpartition(".")
    if dialect == "mysql":
        return namespace, ".".join(p for p in (database or schema, table) if p)
    if dialect == "postgres":
        schema = schema or "public"
    return namespace, ".".join(p for p in (database, schema, table) if p)


def _glob_root(path: str) -> str:
    """The folder a glob starts from (``/data/in/*.csv`` -> ``/data/in``); a plain file's path as it is."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if re.search(r"[*?\[{]", part):
            return str(Path(*parts[:i])) if i else "/"
    return path


# ---------------------------------------------------------------------------------------------- Airflow


@dataclass(frozen=True)
class AirflowParent:
    """The Airflow task instance a run happens in (from the ``AIRFLOW_CTX_*`` variables Airflow exports)."""

    namespace: str
    dag_id: str
    task_id: str
    dag_run_id: str
    try_number: str = "1"
    logical_date: str | None = None

    def facet(self) -> parent_run.ParentRunFacet:
        """The parent-run facet: job ``dag_id.task_id`` in ``namespace`` (Airflow's naming) and the DAG run
        (job ``dag_id``) as the root. With a logical date, the run ids are those Airflow's OpenLineage provider
        derives (UUID v7 of the logical date and ``namespace.dag_id.task_id.try.map_index``, map index -1 for a
        task that is not mapped; the DAG run's from ``namespace.dag_id.<clear number>``, taken as 0: a DAG run
        never cleared), so a lineage server joins icefield's runs to the task's own events. Without one (an
        Airflow 3 run without a logical date) they are derived from the DAG run's id instead."""
        from openlineage.client.facet_v2 import parent_run
        from openlineage.client.uuid import generate_static_uuid

        if self.logical_date and (instant := _instant(self.logical_date)) is not None:
            task_data = f"{self.namespace}.{self.dag_id}.{self.task_id}.{self.try_number}.-1"
            dag_data = f"{self.namespace}.{self.dag_id}.0"
        else:
            instant = datetime(1970, 1, 1, tzinfo=UTC)
            task_data = f"{self.namespace}.{self.dag_id}.{self.dag_run_id}.{self.task_id}.{self.try_number}"
            dag_data = f"{self.namespace}.{self.dag_id}.{self.dag_run_id}"
        task_run = generate_static_uuid(instant, task_data.encode())
        dag_run = generate_static_uuid(instant, dag_data.encode())
        return parent_run.ParentRunFacet(
            run=parent_run.Run(runId=str(task_run)),
            job=parent_run.Job(namespace=self.namespace, name=f"{self.dag_id}.{self.task_id}"),
            root=parent_run.Root(
                run=parent_run.RootRun(runId=str(dag_run)),
                job=parent_run.RootJob(namespace=self.namespace, name=self.dag_id),
            ),
            producer=PRODUCER,
        )


def airflow_parent(environ: Mapping[str, str], namespace: str) -> AirflowParent | None:
    """The Airflow task this process runs for, from ``environ`` (``AIRFLOW_CTX_DAG_ID``,
    ``AIRFLOW_CTX_TASK_ID``, ``AIRFLOW_CTX_DAG_RUN_ID``, ``AIRFLOW_CTX_TRY_NUMBER``,
    ``AIRFLOW_CTX_LOGICAL_DATE``); None outside a task."""
    dag_id, task_id, run_id = (environ.get(f"AIRFLOW_CTX_{k}") for k in ("DAG_ID", "TASK_ID", "DAG_RUN_ID"))
    if not (dag_id and task_id and run_id):
        return None
    return AirflowParent(
        namespace, dag_id, task_id, run_id, environ.get("AIRFLOW_CTX_TRY_NUMBER") or "1", environ.get("AIRFLOW_CTX_LOGICAL_DATE") or None
    )


def _instant(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- column lineage


def column_lineage(sql: str, inputs: Mapping[str, Mapping[str, str]]) -> tuple[dict[str, list[tuple[str, str, str]]], list[tuple[str, str, str]]]:
    """The column lineage of a model's ``sql`` (DuckDB's dialect) over ``inputs`` (table ``ns.name`` -> column
    -> type). Returns ``(fields, indirect)``: for each output column the (input table, input column,
    subtype) it is computed from (subtype ``IDENTITY`` for a column taken as it is, ``AGGREGATION`` for an
    aggregate, else ``TRANSFORMATION``), and the input columns that decide which rows there are (subtypes
    ``JOIN``, ``FILTER``, ``GROUP_BY``). Tables outside ``inputs`` (CTEs resolved) are left out; a query
    sqlglot cannot read gives ({}, [])."""
    from sqlglot import exp, parse_one
    from sqlglot.errors import SqlglotError
    from sqlglot.lineage import lineage
    from sqlglot.optimizer.qualify import qualify
    from sqlglot.optimizer.scope import traverse_scope

    schema: dict[str, Any] = {}
    for name, columns in inputs.items():
        ns, _, table = name.rpartition(".")
        schema.setdefault(ns, {})[table] = dict(columns)
    try:
        query = qualify(parse_one(sql, dialect="duckdb"), schema=schema, dialect="duckdb", validate_qualify_columns=False)
    except SqlglotError as e:
        log.warning("no column lineage for a model: sqlglot cannot read its SQL: %s", e)
        return {}, []
    if not isinstance(query, exp.Query):
        return {}, []

    def known(source: Any) -> str | None:
        name = exp.table_name(source) if isinstance(source, exp.Table) else ""
        return name if name in inputs else None

    fields: dict[str, list[tuple[str, str, str]]] = {}
    for out, select in zip(query.named_selects, query.selects, strict=False):
        inner = select.unalias()
        subtype = (
            "AGGREGATION" if inner.find(exp.AggFunc) is not None
            else "IDENTITY" if isinstance(inner, exp.Column)
            else "TRANSFORMATION"
        )
        try:
            node = lineage(out, query, schema=schema, dialect="duckdb")
        except SqlglotError as e:
            log.warning("no column lineage for output column %s: %s", out, e)
            continue
        found: list[tuple[str, str, str]] = []
        for n in node.walk():
            source = known(n.source)
            if source is not None:
                column = n.name.split(".")[-1].strip('"')
                if (source, column, subtype) not in found:
                    found.append((source, column, subtype))
        if found:
            fields[out] = found

    indirect: list[tuple[str, str, str]] = []
    for scope in traverse_scope(query):
        body: Any = scope.expression
        clauses: list[tuple[str, Any]] = [("FILTER", body.args.get("where")), ("GROUP_BY", body.args.get("group"))]
        clauses += [("JOIN", j.args.get("on")) for j in body.args.get("joins") or []]
        for kind, clause in clauses:
            if clause is None:
                continue
            for col in clause.find_all(exp.Column):
                source = known(scope.sources.get(col.table)) if col.table else None
                if source is not None and (source, col.name, kind) not in indirect:
                    indirect.append((source, col.name, kind))
    return fields, indirect


# ---------------------------------------------------------------------------------------------- the observer


@dataclass
class _Run:
    started: RunStarted
    run_id: str
    batches: list[BatchCommitted] = field(default_factory=list)
    gates: list[GateEvaluated] = field(default_factory=list)
    error: ErrorRaised | None = None


class LineageObserver:
    """An observer (:data:`icefield.observe.events.Observer`) that sends OpenLineage START / COMPLETE / FAIL
    events for each run it observes, through ``transport`` (one of openlineage-python's).

    ``namespace`` names icefield's jobs; ``iceberg_namespace`` the Iceberg tables' datasets (the warehouse
    location or the catalog's URI); ``parent`` the Airflow task the runs happen in, if any. The observer
    keeps what it needs of a run between its START and its end (its batches and gates), nothing more."""

    JOB_TYPES: ClassVar[dict[str, str]] = {"model": "MODEL"}
    wants_schemas: ClassVar[bool] = True
    """The runs load their output tables' columns for this observer (the schema facet)."""

    def __init__(
        self,
        transport: Transport,
        namespace: str,
        iceberg_namespace: str,
        parent: AirflowParent | None = None,
    ) -> None:
        from openlineage.client import OpenLineageClient

        self.client = OpenLineageClient(transport=transport)
        self.namespace = namespace
        self.iceberg_namespace = iceberg_namespace
        self.parent = parent
        self._runs: dict[tuple[str, str], _Run] = {}

    def __repr__(self) -> str:
        return f"LineageObserver({self.client.transport.kind}, namespace={self.namespace!r})"

    def __call__(self, event: Event) -> None:
        from openlineage.client.event_v2 import RunState

        key = (event.run_id, event.pipeline)
        if isinstance(event, RunStarted):
            run = self._runs[key] = _Run(event, _run_uuid(event))
            self._send(self._event(RunState.START, run, event.at, [], [self._table(event.table)]))
            return
        run_or_none = self._runs.get(key)
        if run_or_none is None:
            return  # a run that started before this observer was registered
        if isinstance(event, BatchCommitted):
            run_or_none.batches.append(event)
        elif isinstance(event, GateEvaluated):
            run_or_none.gates.append(event)
        elif isinstance(event, ErrorRaised):
            run_or_none.error = event
        elif isinstance(event, RunFinished):
            del self._runs[key]
            self._send(self._finished(run_or_none, event))

    def _send(self, event: RunEvent) -> None:
        # A receiver that is down or refuses an event costs the event, never the run (nor a traceback).
        try:
            self.client.emit(event)
        except Exception as e:
            log.warning(
                "OpenLineage %s event of job %s (run %s) not sent through the %s transport: %s; check lineage: in icefield.yaml and that the receiver is up",
                event.eventType.value if event.eventType else "?", event.job.name, event.run.runId, self.client.transport.kind, e,
            )

    # -- events

    def _event(
        self,
        state: RunState,
        run: _Run,
        at: datetime,
        inputs: list[InputDataset],
        outputs: list[OutputDataset],
        run_facets: dict[str, Any] | None = None,
    ) -> RunEvent:
        from openlineage.client.event_v2 import InputDataset, Job, Run, RunEvent
        from openlineage.client.facet_v2 import (
            documentation_job,
            job_type_job,
            processing_engine_run,
            sql_job,
        )

        started = run.started
        kind = started.source.kind
        job_facets: dict[str, Any] = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="ICEFIELD", jobType=self.JOB_TYPES.get(kind, "PIPELINE"), producer=PRODUCER
            )
        }
        if started.description:
            job_facets["documentation"] = documentation_job.DocumentationJobFacet(description=started.description, producer=PRODUCER)
        if started.sql is not None:
            job_facets["sql"] = sql_job.SQLJobFacet(query=started.sql, dialect="duckdb", producer=PRODUCER)
        facets: dict[str, Any] = {
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=_version(), name="icefield", openlineageAdapterVersion=_openlineage_version(), producer=PRODUCER
            ),
            **(run_facets or {}),
        }
        if self.parent is not None:
            facets["parent"] = self.parent.facet()
        if kind != "model":
            inputs = [InputDataset(namespace=ns, name=name) for ns, name in source_datasets(started.source)] + inputs
        return RunEvent(
            eventType=state,
            eventTime=at.isoformat(),
            run=Run(runId=run.run_id, facets=facets),
            job=Job(namespace=self.namespace, name=started.pipeline, facets=job_facets),
            inputs=inputs,
            outputs=outputs,
            producer=PRODUCER,
        )

    def _finished(self, run: _Run, end: RunFinished) -> RunEvent:
        from openlineage.client.event_v2 import InputDataset, RunState
        from openlineage.client.facet_v2 import (
            data_quality_assertions_dataset,
            error_message_run,
            output_statistics_output_dataset,
        )

        committed = [b for b in run.batches if not b.skipped]
        run_facets: dict[str, Any] = {
            "icefield": _icefield_facet_class()(
                runId=end.run_id,
                status=end.status,
                batches=[
                    {
                        "batchId": b.batch_id,
                        "table": b.table,
                        "snapshotId": b.snapshot_id,
                        "skipped": b.skipped,
                        "rowsIn": b.rows_in,
                        "rowsCommitted": b.rows_committed,
                        "rowsQuarantined": b.rows_quarantined,
                    }
                    for b in run.batches
                ],
                producer=PRODUCER,
            )
        }
        if end.status != "success":
            message = end.error or (run.error.error if run.error else f"run {end.status}")
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=message, programmingLanguage="python", producer=PRODUCER
            )
        inputs = [self._table(t, InputDataset) for t in end.inputs]
        outputs = {t.table: t for t in end.outputs}
        outputs.setdefault(end.table, TableRef(end.table))
        out_datasets: list[OutputDataset] = []
        for name, ref in outputs.items():
            ds = self._table(ref)
            if name == end.table:
                rows, size = sum(b.rows_committed for b in committed), sum(b.bytes_added for b in committed)
                ds.outputFacets = {
                    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=rows, size=size, producer=PRODUCER
                    )
                }
                assertions = self._assertions(run)
                if assertions:
                    ds.facets["dataQualityAssertions"] = data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
                        assertions=assertions, producer=PRODUCER
                    )
                if run.started.sql is not None and end.inputs:
                    facet = self._column_lineage(run.started.sql, end.inputs)
                    if facet is not None:
                        ds.facets["columnLineage"] = facet
            elif name.endswith(QUARANTINE_SUFFIX):
                ds.outputFacets = {
                    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=end.rows_quarantined, producer=PRODUCER
                    )
                }
            out_datasets.append(ds)
        state = RunState.COMPLETE if end.status == "success" else RunState.FAIL
        return self._event(state, run, end.finished_at, inputs, out_datasets, run_facets)

    def _table(self, ref: TableRef | str, cls: type | None = None) -> Any:
        """The dataset (``cls``, default an output) of an Iceberg table, with its schema and (when known) the
        snapshot as its version."""
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import dataset_version_dataset, schema_dataset

        cls = cls or OutputDataset
        if isinstance(ref, str):
            ref = TableRef(ref)
        facets: dict[str, Any] = {}
        if ref.columns:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in ref.columns], producer=PRODUCER
            )
        if ref.snapshot_id is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(ref.snapshot_id), producer=PRODUCER
            )
        return cls(namespace=self.iceberg_namespace, name=ref.table, facets=facets)

    def _assertions(self, run: _Run) -> list[data_quality_assertions_dataset.Assertion]:
        from openlineage.client.facet_v2 import data_quality_assertions_dataset

        Assertion = data_quality_assertions_dataset.Assertion  # noqa: N806
        out = [
            Assertion(assertion=g.gate, success=g.status == "pass", severity=g.severity, description=g.message or None)
            for g in run.gates
        ]
        failures: dict[str, int] = dict.fromkeys(run.started.checks, 0)  # checks that rejected no row pass
        for b in run.batches:
            for check, n in b.failures_by_check.items():
                failures[check] = failures.get(check, 0) + n
        out += [Assertion(assertion=check, success=n == 0, actual=str(n), expected="0") for check, n in failures.items()]
        return out

    def _column_lineage(self, sql: str, inputs: tuple[TableRef, ...]) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
        from openlineage.client.facet_v2 import column_lineage_dataset

        fields, indirect = column_lineage(sql, {t.table: dict(t.columns) for t in inputs})
        if not fields:
            return None

        def field_of(table: str, column: str, kind: str, subtype: str) -> column_lineage_dataset.InputField:
            return column_lineage_dataset.InputField(
                namespace=self.iceberg_namespace,
                name=table,
                field=column,
                transformations=[column_lineage_dataset.Transformation(type=kind, subtype=subtype)],
            )

        return column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={
                out: column_lineage_dataset.Fields(inputFields=[field_of(t, c, "DIRECT", s) for t, c, s in sources])
                for out, sources in fields.items()
            },
            dataset=[field_of(t, c, "INDIRECT", s) for t, c, s in indirect],
            producer=PRODUCER,
        )


def _run_uuid(started: RunStarted) -> str:
    """The OpenLineage run id of a run: a UUID (version 7) from its start time, icefield run id and node."""
    from openlineage.client.uuid import generate_static_uuid

    return str(generate_static_uuid(started.at, f"{started.run_id}.{started.pipeline}".encode()))


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("icefield")
    except PackageNotFoundError:
        return "0+unknown"


@functools.cache
def _openlineage_version() -> str:
    from importlib.metadata import version

    return version("openlineage-python")


# ---------------------------------------------------------------------------------------------- wiring


def transport_for(config: LineageConfig, state_dir: Path, root: Path) -> Transport:
    """The openlineage-python transport ``config`` names (``file``: its ``path`` relative to ``root``, default
    ``lineage.jsonl`` in ``state_dir``; the folder is created)."""
    if config.transport == "file":
        from openlineage.client.transport.file import FileConfig, FileTransport

        path = root / config.path if config.path else state_dir / DEFAULT_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileTransport(FileConfig(log_file_path=str(path), append=True))
    if config.transport == "http":
        from openlineage.client.transport.http import (
            ApiKeyTokenProvider,
            HttpConfig,
            HttpTransport,
            TokenProvider,
        )

        from icefield.config.secrets import resolve

        assert config.url is not None  # validated
        auth = ApiKeyTokenProvider({"apiKey": resolve(config.api_key)}) if config.api_key else TokenProvider({})
        from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG

        retry = {**DEFAULT_RETRY_CONFIG, "total": config.retries, "read": config.retries, "connect": config.retries}
        return HttpTransport(
            HttpConfig(url=resolve(config.url), endpoint=config.endpoint, timeout=config.timeout, auth=auth, retry=retry)
        )
    from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport

    return ConsoleTransport(ConsoleConfig())


def lineage_observer(project: Project, environ: Mapping[str, str] | None = None) -> LineageObserver | None:
    """The lineage observer ``project``'s ``lineage:`` section asks for (None when it has none), with the
    Airflow task of ``environ`` (default: this process's environment) as the parent of its runs."""
    config = project.config.lineage
    if config is None:
        return None
    cat = project.config.catalog
    if cat.type == "sql":
        iceberg_namespace = project.warehouse_uri()
    else:
        from icefield.config.secrets import redact

        iceberg_namespace = redact(cat.uri or cat.type)
    parent = airflow_parent(os.environ if environ is None else environ, config.parent_namespace)
    return LineageObserver(
        transport_for(config, project.state_dir, project.root),
        config.namespace or project.config.name,
        iceberg_namespace,
        parent,
    )
