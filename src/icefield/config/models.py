"""Typed project and pipeline configuration (pydantic, unknown keys refused)."""

from __future__ import annotations

import posixpath
import re
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icefield.config.cost import CostConfig
from icefield.config.gates import GateConfig, parse_gates
from icefield.config.logs import LogsConfig
from icefield.config.scheduling import SchedulingConfig
from icefield.config.secrets import has_reference
from icefield.config.window import WindowConfig
from icefield.errors import ConfigError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DEFAULT_CATALOG_NAME = "icefield"
DEFAULT_BATCH_SIZE = 100_000


ENGINE_CHECKS: ContextVar[bool] = ContextVar("icefield_engine_checks", default=True)
"""False while a project loads for a scheduler's parse (``load_project(..., engine_checks=False)``): the
checks that need the data engine loaded (a ``regex`` pattern compiled by Arrow's RE2) are left to the run,
which loads the project again with them."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- project (icefield.yaml)


class CatalogConfig(_Model):
    """Where table metadata lives.

    ``type: sql`` (the default): ``uri`` is a SQLAlchemy URL (SQLite or PostgreSQL). ``type: rest``: an
    Iceberg REST catalog server at ``uri`` (``http(s)://...``), logged in with a bearer ``token`` or an
    OAuth2 ``credential`` (``client_id:client_secret``), both secrets (``${env:...}``/``${file:...}``);
    ``warehouse`` is the warehouse name or location sent to the server (default: the project's
    warehouse); ``leases`` is the SQLAlchemy URL of the database that holds the writer leases (default:
    SQLite under ``<project>/.icefield/leases.db``). ``type: hive``: a Hive Metastore at ``uri``
    (``thrift://host:port``); ``warehouse`` and ``leases`` as for REST (``warehouse``: the location of
    tables whose namespace has none; the metastore gives every database one by default), no login keys.
    The server-only keys are refused for ``type: sql``; ``token`` and ``credential`` for ``type: hive``.
    """

    type: Literal["sql", "rest", "hive"] = "sql"
    name: str = DEFAULT_CATALOG_NAME
    uri: str | None = None  # sql default: sqlite under <project>/.icefield/catalog.db; rest, hive: required
    warehouse: str | None = None
    token: str | None = None
    credential: str | None = None
    leases: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_rest(self) -> CatalogConfig:
        rest_only = [k for k in ("warehouse", "token", "credential", "leases") if getattr(self, k) is not None]
        if self.type == "sql":
            if rest_only and {"token", "credential"} & set(rest_only):
                raise ValueError(
                    f"{', '.join(rest_only)} apply to a REST catalog only; set catalog.type: rest, or remove them"
                )
            if rest_only:
                raise ValueError(
                    f"{', '.join(rest_only)} apply to a REST or Hive catalog only; set catalog.type: rest or "
                    "catalog.type: hive, or remove them"
                )
            return self
        if self.type == "hive":
            return self._check_hive()
        if not self.uri:
            raise ValueError("a REST catalog needs catalog.uri, the server's URL, e.g. http://127.0.0.1:8181")
        if not has_reference(self.uri) and not re.match(r"^https?://[^/\s]+", self.uri):
            raise ValueError(
                f"catalog.uri {self.uri!r} is not an http(s) URL; a REST catalog's uri is its server, "
                "e.g. http://127.0.0.1:8181"
            )
        if self.token is not None and self.credential is not None:
            raise ValueError("give catalog.token or catalog.credential, not both")
        return self

    def _check_hive(self) -> CatalogConfig:
        login = [k for k in ("token", "credential") if getattr(self, k) is not None]
        if login:
            raise ValueError(
                f"{', '.join(login)} apply to a REST catalog only: a Hive Metastore takes no login here; remove them"
            )
        if not self.uri:
            raise ValueError("a Hive catalog needs catalog.uri, the metastore's Thrift URI, e.g. thrift://127.0.0.1:9083")
        if not has_reference(self.uri) and not re.fullmatch(r"thrift://[^/\s:,]+:\d+/?", self.uri):
            raise ValueError(
                f"catalog.uri {self.uri!r} is not a Thrift URI with a port; a Hive catalog's uri is its metastore, "
                "e.g. thrift://127.0.0.1:9083"
            )
        return self


class StorageConfig(_Model):
    """How icefield reaches an S3-compatible object store: the warehouse (``warehouse: s3://bucket/prefix``)
    and any other ``s3://`` location (an archive tier). Every key is optional: without them pyarrow's
    defaults apply (AWS, credentials from the environment or the instance).

    ``endpoint`` is the server's URL (``http://127.0.0.1:7070`` for a local server; none for AWS);
    ``path_style`` addresses buckets as ``<endpoint>/<bucket>`` rather than ``<bucket>.<endpoint>``
    (needed by most servers other than AWS); ``access_key``, ``secret_key`` and ``session_token`` are
    secrets: give them as ``${env:NAME}`` or ``${file:PATH}`` references (see :mod:`icefield.config.secrets`).
    They become pyiceberg's ``s3.*`` FileIO properties, which win over ``catalog.properties``."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @model_validator(mode="after")
    def _check(self) -> StorageConfig:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("give storage.access_key and storage.secret_key together (or neither, for the environment's credentials)")
        if self.session_token is not None and self.access_key is None:
            raise ValueError("storage.session_token goes with storage.access_key and storage.secret_key")
        if self.endpoint is not None and not has_reference(self.endpoint) and not re.match(r"^https?://[^/\s]+/?$", self.endpoint):
            raise ValueError(
                f"storage.endpoint {self.endpoint!r} is not an http(s) URL of a server; give e.g. http://127.0.0.1:7070"
            )
        return self


class SparkConfig(_Model):
    """The Spark session of ``engine: spark`` (:mod:`icefield.engines.spark_session`).

    ``master`` is the Spark master (``local[N]``, ``spark://host:7077``, ``k8s://...``); ``memory`` the
    driver's memory; ``jars_dir`` the folder holding the Iceberg runtime and JDBC driver jars (relative to the
    project; default: the icefield cache's ``jars`` folder) or ``jars`` the jar files one by one; ``conf``
    more Spark settings, applied last (they win). ``read_sources`` (default on): Spark reads ``sql`` sources
    itself, with its JDBC reader split into ``read_partitions`` ranges of the cursor (default: Spark's default
    parallelism), ``kafka`` sources (offset ranges) and the files a ``files`` source chooses, and runs the row
    checks over them; off: the source is read by this process and handed over."""

    master: str = "local[2]"
    memory: str = "2g"
    jars_dir: str | None = None
    jars: list[str] = Field(default_factory=list)
    conf: dict[str, str] = Field(default_factory=dict)
    read_partitions: Annotated[int, Field(ge=1)] | None = None
    read_sources: bool = True


EngineName = Literal["local", "spark"]


class TrinoConfig(_Model):
    """The Trino server ``icefield sql --engine trino`` sends queries to.

    ``uri`` is the server (``http(s)://host:port``); ``catalog`` the Trino catalog that maps to this
    project's catalog (default: ``catalog.name``; the name of its ``etc/catalog/<name>.properties``);
    ``user`` the Trino user queries run as; ``password`` (a secret: ``${env:...}``/``${file:...}``) logs in
    with HTTP basic authentication, which Trino accepts over https only.
    """

    uri: str
    catalog: str | None = None
    user: str = "icefield"
    password: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrinoConfig:
        if not has_reference(self.uri) and not re.fullmatch(r"https?://[^/\s:]+(:\d+)?/?", self.uri):
            raise ValueError(f"trino.uri {self.uri!r} is not a server URL; give e.g. http://127.0.0.1:18080")
        if self.password is not None and not has_reference(self.uri) and not self.uri.startswith("https://"):
            raise ValueError("trino.password is sent with basic authentication, which Trino accepts over https only: use an https:// uri or drop the password")
        return self


class MetricsConfig(_Model):
    """Prometheus metrics of runs (``docs/metrics.md``).

    ``pushgateway`` is the Pushgateway a batch run (``icefield run``) pushes its metrics to when it ends
    (``http(s)://host:port``; unset: no push), under job ``job`` and one group per pipeline; ``port`` the
    port a following run (``icefield run --follow``) serves ``/metrics`` on (unset: not served unless
    ``--metrics-port`` is given), bound to ``host`` (127.0.0.1 by default: only this machine scrapes it);
    ``timeout`` the seconds a push may take. A push that fails is logged and never fails the run."""

    pushgateway: str | None = None
    job: str = "icefield"
    port: int | None = None
    host: str = "127.0.0.1"
    timeout: float = 10.0

    @field_validator("pushgateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is not None and not has_reference(v) and not re.fullmatch(r"https?://[^/\s:]+(:\d+)?(/\S*)?", v):
            raise ValueError(f"metrics.pushgateway {v!r} is not a Pushgateway URL; give e.g. http://127.0.0.1:9091")
        return v.rstrip("/") if v is not None else None

    @field_validator("job")
    @classmethod
    def _job(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", v):
            raise ValueError(f"metrics.job {v!r} must be a plain name (letters, digits, _ . : -), e.g. icefield")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError(f"metrics.port {v} is not a TCP port: give 1..65535, e.g. 9464")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"metrics.timeout {v} must be more than 0 seconds, e.g. 10")
        return v


class LineageConfig(_Model):
    """Where OpenLineage run events go (``lineage:`` in ``icefield.yaml``; see docs/lineage.md).

    ``transport``: ``file`` (JSON lines appended to ``path``, default ``.icefield/lineage.jsonl`` under the
    project), ``http`` (POSTed to ``url`` + ``endpoint``: Marquez or any OpenLineage HTTP receiver; an
    ``api_key`` is sent as a bearer token; each event waits ``timeout`` seconds and is retried ``retries``
    times, then dropped with a warning: a receiver that is down slows a run, never fails it) or ``console`` (logged by the ``openlineage.client`` logger).
    ``namespace`` is the namespace of icefield's jobs (default: the project's ``name``);
    ``parent_namespace`` that of the Airflow jobs that run them (Airflow's ``[openlineage] namespace``,
    ``default`` unless set there).
    """

    transport: Literal["file", "http", "console"] = "file"
    path: str | None = None
    url: str | None = None
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    timeout: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    namespace: str | None = None
    parent_namespace: str = "default"

    @model_validator(mode="after")
    def _check(self) -> LineageConfig:
        if self.transport == "http":
            if not self.url:
                raise ValueError("lineage.transport is http but lineage.url is not set; give the receiver's URL, e.g. url: http://127.0.0.1:5000 (Marquez)")
            if not has_reference(self.url) and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.url):
                raise ValueError(f"lineage.url {self.url!r} is not an http(s) URL; give e.g. http://127.0.0.1:5000")
        elif self.url is not None:
            raise ValueError(f"lineage.url is set but lineage.transport is {self.transport!r}; set transport: http or drop url")
        if self.path is not None and self.transport != "file":
            raise ValueError(f"lineage.path is set but lineage.transport is {self.transport!r}; set transport: file or drop path")
        if self.path is not None and not self.path.strip():
            raise ValueError("lineage.path is empty; give a file for the JSON lines, e.g. .icefield/lineage.jsonl, or drop it for that default")
        for key in ("namespace", "parent_namespace"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ValueError(f"lineage.{key} is empty; give a name, e.g. {key}: shop, or drop the key")
        return self


class ProjectConfig(_Model):
    """The contents of ``icefield.yaml`` after profiles and environment overrides are applied."""

    name: str = "icefield"
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    warehouse: str = ".icefield/warehouse"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    engine: EngineName = "local"
    spark: SparkConfig = Field(default_factory=SparkConfig)
    trino: TrinoConfig | None = None
    lineage: LineageConfig | None = None
    """OpenLineage run events for every run (None: none are sent)."""
    namespace: str = "default"
    batch_size: int = Field(DEFAULT_BATCH_SIZE, gt=0)
    read_ahead: int = Field(1, ge=0, le=4)
    """Batches a source reads and decodes (in a thread) while the one before is written; 0 reads in turn."""
    target_file_size_mb: int = Field(128, gt=0)
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    """The scheduling every pipeline inherits, key by key, unless its own ``scheduling:`` sets the key."""
    logs: LogsConfig = Field(default_factory=LogsConfig)
    """Format, level, file and shipping of the log lines (:mod:`icefield.config.logs`)."""
    cost: CostConfig = Field(default_factory=CostConfig)
    """Storage prices per class for ``icefield cost`` (:mod:`icefield.config.cost`)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus: the Pushgateway batch runs push to, the port following runs serve ``/metrics`` on."""
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)


# ---------------------------------------------------------------- sources


class SqlSourceConfig(_Model):
    """Rows of a table (or query) of any SQLAlchemy database; incremental by ``cursor``."""

    type: Literal["sql"]
    url: str
    table: str | None = None
    db_schema: str | None = Field(None, alias="schema")
    query: str | None = None
    cursor: str | None = None
    initial_cursor: str | int | float | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self


class FilesSourceConfig(_Model):
    """CSV, JSON Lines or Parquet files matched by a glob; incremental by the set of files loaded.

    ``path`` is a glob relative to the project folder. The files it matches must lie in the project
    folder, or in one of the folders listed in ``roots`` (absolute, or relative to the project): a match
    elsewhere, a symbolic link included, is refused (see :mod:`icefield.ingest.files`)."""

    type: Literal["files"]
    path: str
    roots: list[str] = Field(default_factory=list)
    """Folders outside the project that ``path`` may match files in (absolute or project-relative)."""
    format: Literal["csv", "jsonl", "parquet", "auto"] = "auto"
    columns: dict[str, str] | None = None
    delimiter: str = ","
    file_column: str | None = "_source_file"
    group_files: bool = False
    """New files that fit in one batch share it (one commit) up to ``batch_size`` records, while they
    have the same columns; off, every file has batches (commits) of its own."""

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError(f"delimiter must be one character, got {v!r}")
        return v

    @field_validator("file_column")
    @classmethod
    def _file_column_name(cls, v: str | None) -> str | None:
        if v is not None:
            from icefield.columns import column_name_problem

            if problem := column_name_problem(v):
                raise ValueError(f"file_column {v!r} {problem}; pick another name")
        return v

    @field_validator("roots")
    @classmethod
    def _plain_folders(cls, v: list[str]) -> list[str]:
        for root in v:
            if not root.strip() or any(c in root for c in "*?["):
                raise ValueError(f"roots: {root!r} must be a folder path (no glob characters), absolute or relative to the project")
        return v

    @model_validator(mode="after")
    def _inside_the_project(self) -> FilesSourceConfig:
        # Known at load time without the project's folder: a path that is absolute, or climbs out of
        # the project with '..', needs a declared root. Where the matches really are (symbolic links
        # included) is checked when the files are listed.
        if not self.roots:
            folder = _folder_of(self.path.replace("\\", "/"))
            _refuse_outside_the_project(self.path, f"or list the folder that holds the files in 'roots' (e.g. roots: [{folder!r}])")
        return self


def _refuse_outside_the_project(path: str, alternative: str) -> None:
    """Refuse a glob that is absolute or climbs out of the project with '..' (known without the project's
    folder; where its matches really are, symbolic links included, is checked when files are listed)."""
    p = path.replace("\\", "/")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or posixpath.normpath(p).split("/")[0] == "..":
        raise ValueError(
            f"path {path!r} reaches outside the project folder; give a glob relative to the project "
            f"(e.g. 'data/*.csv'), {alternative}"
        )


def _folder_of(pattern: str) -> str:
    """The folder a glob matches in: its components before the first one with a wildcard (the
    pattern's folder when it has no wildcard)."""
    out: list[str] = []
    parts = pattern.split("/")
    for part in parts:
        if any(c in part for c in "*?["):
            return "/".join(out) or "."
        out.append(part)
    return posixpath.dirname(pattern) or "."


class KafkaSourceConfig(_Model):
    """JSON messages of Kafka topics; incremental by the next offset of every partition.

    The position committed with each batch is ``{"topics": {topic: {partition: next offset}}}``; the
    consumer group's offsets are committed after each Iceberg commit and only read as a hint when the
    table has no position for a partition. ``properties`` are extra librdkafka consumer settings
    (``security.protocol``, ``sasl.password: ${env:KAFKA_PASSWORD}``...); their values may hold secret
    references. A batch ends at ``batch_size`` records (the pipeline's) or after ``max_wait_seconds``.
    """

    type: Literal["kafka"]
    bootstrap_servers: str
    topic: str | None = None
    topics: list[str] | None = None
    group_id: str | None = None  # default: icefield.<pipeline name>
    format: Literal["json"] = "json"
    start: Literal["earliest", "latest"] = "earliest"
    max_wait_seconds: float = Field(5.0, gt=0)
    metadata_columns: bool = False
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _topic_or_topics(self) -> KafkaSourceConfig:
        if (self.topic is None) == (self.topics is None):
            raise ValueError("give exactly one of 'topic' or 'topics'")
        if self.topics is not None and not self.topics:
            raise ValueError("'topics' must name at least one topic")
        return self

    @property
    def topic_names(self) -> list[str]:
        """The topics to read, in the order given."""
        return [self.topic] if self.topic is not None else list(self.topics or [])



CDC_COMMIT_LSN = "_cdc_commit_lsn"
CDC_LSN = "_cdc_lsn"
CDC_OP = "_cdc_op"
CDC_TS_MS = "_cdc_ts_ms"
CDC_DELETED = "_cdc_deleted"
# Columns a debezium batch carries to the writer and that never land in the table: the columns of each
# row whose value is PostgreSQL's unchanged TOAST placeholder (the merge takes the stored value), and the
# defaults the embedded schema gives columns the table lacks (the writer gives them to the existing rows).
CDC_UNCHANGED = "_cdc_unchanged"
CDC_DEFAULTS = "_cdc_defaults"
CDC_CONTROL_COLUMNS = frozenset({CDC_UNCHANGED, CDC_DEFAULTS})

NUMERIC_DEFAULT = "decimal(38,18)"
_NUMERIC_TYPE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def numeric_type_name(value: str) -> str:
    """The canonical spelling of a type for unconstrained ``numeric`` columns: ``string`` or
    ``decimal(P,S)`` with 1 <= P <= 38 and 0 <= S <= P. Raises ValueError naming the value and the fix."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "string":
        return "string"
    m = _NUMERIC_TYPE.match(text) if isinstance(text, str) else None
    if m:
        p, s = int(m.group(1)), int(m.group(2))
        if 1 <= p <= 38 and 0 <= s <= p:
            return f"decimal({p},{s})"
    raise ValueError(
        f"numeric type {value!r} is not one icefield stores unconstrained numeric as: use 'string' (PostgreSQL's "
        "text, any value) or 'decimal(P,S)' with 1 <= P <= 38 and 0 <= S <= P (values that do not fit are quarantined)"
    )


class NumericConfig(_Model):
    """The Iceberg type of PostgreSQL ``numeric`` columns declared without a precision (Debezium's
    ``VariableScaleDecimal``, whose every value has its own scale). ``default`` applies to every such
    column a table does not already have, ``columns`` names a type per column. A value that does not fit
    the declared decimal goes to the quarantine with its raw event; ``string`` keeps PostgreSQL's text of
    every value."""

    default: str = NUMERIC_DEFAULT
    columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("default")
    @classmethod
    def _default_type(cls, v: str) -> str:
        return numeric_type_name(v)

    @field_validator("columns")
    @classmethod
    def _column_types(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, t in v.items():
            try:
                out[name] = numeric_type_name(t)
            except ValueError as e:
                raise ValueError(f"column {name!r}: {e}") from None
        return out


class ConnectorConfig(_Model):
    """How the Debezium connector encodes values (its own settings, spelled as in its config). An event
    with the embedded schema says it itself; events without it (``value.converter.schemas.enable=false``)
    are read as these settings and the source's ``postgres_types`` say. ``unavailable.value.placeholder``
    is what it sends for an unchanged TOASTed value, with or without the schema."""

    decimal_handling_mode: Literal["precise", "double", "string"] = Field("precise", alias="decimal.handling.mode")
    time_precision_mode: Literal["adaptive", "adaptive_time_microseconds", "connect", "isostring"] = Field(
        "adaptive", alias="time.precision.mode"
    )
    interval_handling_mode: Literal["numeric", "string"] = Field("numeric", alias="interval.handling.mode")
    unavailable_value_placeholder: str = Field("__debezium_unavailable_value", alias="unavailable.value.placeholder", min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DebeziumSourceConfig(_Model):
    """Debezium change events (PostgreSQL connector), from JSON Lines files (``path``) or a Kafka
    ``topic``. Rows land with their version columns ``_cdc_commit_lsn``, ``_cdc_lsn`` (the event's
    ``source.sequence``), ``_cdc_op`` and ``_cdc_ts_ms``; the target merges by key, newest version wins.

    ``numeric`` types unconstrained ``numeric`` columns; ``connector`` and ``postgres_types`` (the PostgreSQL
    type of columns, ``numeric(10,2)``, ``timestamp(3)``, ``text[]``...) type events that carry no schema."""

    type: Literal["debezium"]
    path: str | None = None
    topic: str | None = None
    bootstrap_servers: str | None = None
    group_id: str | None = None  # default: icefield.<pipeline name>
    start: Literal["earliest", "latest"] = "earliest"
    max_wait_seconds: float = Field(5.0, gt=0)
    properties: dict[str, str] = Field(default_factory=dict)
    max_record_bytes: int = Field(16 << 20, gt=0)
    numeric: NumericConfig = Field(default_factory=NumericConfig)
    connector: ConnectorConfig = Field(default_factory=lambda: ConnectorConfig.model_validate({}))
    postgres_types: dict[str, str] = Field(default_factory=dict)

    @property
    def topic_names(self) -> list[str]:
        return [self.topic] if self.topic is not None else []

    @field_validator("postgres_types")
    @classmethod
    def _postgres_types(cls, v: dict[str, str]) -> dict[str, str]:
        from icefield.config.postgres_types import parse_postgres_type

        for name, t in v.items():
            try:
                parse_postgres_type(t)
            except ValueError as e:  # reported by pydantic with the field's path
                raise ValueError(f"column {name!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _path_or_topic(self) -> DebeziumSourceConfig:
        if (self.path is None) == (self.topic is None):
            raise ValueError("give exactly one of 'path' (JSON Lines files of change events) or 'topic' (a Kafka topic)")
        if self.topic is not None and not self.bootstrap_servers:
            raise ValueError("'topic' needs 'bootstrap_servers' (host:port of the Kafka brokers)")
        if self.path is not None:
            _refuse_outside_the_project(self.path, "or move the change-event files into the project")
        return self


class HttpAuthConfig(_Model):
    """How an ``http`` source authenticates. Every value may hold ``${env:...}``/``${file:...}`` references
    (resolved when the source opens, redacted from every message, log and stored record):

    - ``bearer``: ``token``, sent as ``Authorization: Bearer <token>``;
    - ``basic``: ``username`` and ``password``;
    - ``api_key``: ``key`` sent in the header ``name`` (default ``X-API-Key``) or, with ``in: query``, as the
      query parameter ``name``;
    - ``oauth2_client_credentials``: ``token_url``, ``client_id``, ``client_secret`` (and ``scopes``): a token
      is fetched before the first request and again when it expires (or the API answers 401).
    """

    type: Literal["bearer", "basic", "api_key", "oauth2_client_credentials"]
    token: str | None = None
    username: str | None = None
    password: str | None = None
    key: str | None = None
    name: str | None = None
    location: Literal["header", "query"] = Field("header", alias="in")
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scopes: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _needed(self) -> HttpAuthConfig:
        needs = {
            "bearer": ["token"],
            "basic": ["username", "password"],
            "api_key": ["key"],
            "oauth2_client_credentials": ["token_url", "client_id", "client_secret"],
        }[self.type]
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"auth type {self.type!r} needs {', '.join(repr(k) for k in missing)} (a secret reference like '${{env:NAME}}' keeps it out of the file)")
        return self


class HttpPaginationConfig(_Model):
    """How an ``http`` source walks an endpoint's pages:

    - ``page``: the parameter ``page_param`` (default ``page``) counts pages from ``start`` (default 1);
    - ``offset``: ``offset_param`` (default ``offset``) counts records from 0;
    - ``cursor``: the token at the JSON path ``cursor_path`` of each body goes back as ``cursor_param``;
    - ``link``: the URL of the ``Link`` header's ``rel="next"`` (RFC 8288);
    - ``next_url``: the URL at the JSON path ``next_url_path`` of each body.

    ``size`` records per page are asked for with ``size_param`` (``page``: default ``per_page``; ``offset``
    and ``cursor``: default ``limit``); with ``page`` and ``offset`` a page shorter than ``size`` is the last
    (``stop_on_short_page``). Every style stops at an empty page.
    """

    type: Literal["page", "offset", "cursor", "link", "next_url"]
    size: int | None = Field(None, gt=0)
    size_param: str | None = None
    page_param: str = "page"
    start: int = 1
    offset_param: str = "offset"
    cursor_path: str | None = None
    cursor_param: str = "cursor"
    next_url_path: str | None = None
    stop_on_short_page: bool = True

    @model_validator(mode="after")
    def _needed(self) -> HttpPaginationConfig:
        if self.type == "cursor" and not self.cursor_path:
            raise ValueError("pagination type 'cursor' needs 'cursor_path' (where the next page's token is in the body, e.g. meta.next_cursor)")
        if self.type == "next_url" and not self.next_url_path:
            raise ValueError("pagination type 'next_url' needs 'next_url_path' (where the next page's URL is in the body, e.g. next)")
        if self.type in ("page", "offset") and self.size is None:
            raise ValueError(f"pagination type {self.type!r} needs 'size' (the records per page the API is asked for)")
        return self

    @property
    def size_name(self) -> str:
        """The query parameter that asks for ``size`` records per page."""
        return self.size_param or ("per_page" if self.type in ("page", "link", "next_url") else "limit")


class HttpCursorConfig(_Model):
    """The incremental cursor of an ``http`` source: the record field ``field`` (e.g. ``updated_at``), sent
    back as the request parameter ``param`` (e.g. ``since``, inclusive: records with ``field >= value``;
    ``in: json`` puts it in the POST body instead). The API must return records in ascending ``field`` order.
    ``initial`` is the value of the first run (none: no parameter, every record)."""

    field: str
    param: str
    location: Literal["query", "json"] = Field("query", alias="in")
    initial: str | int | float | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HttpRetriesConfig(_Model):
    """Retries of a request answered 429, 5xx or not at all: ``attempts`` in all, waits growing from
    ``backoff_seconds`` (doubling, with jitter) up to ``max_backoff_seconds``; a 429's ``Retry-After`` is
    waited instead (up to ``max_retry_after_seconds``). A malformed page (not JSON, or no record list) is
    asked for ``malformed_attempts`` times before it is quarantined."""

    attempts: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=0.5, ge=0)
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    max_retry_after_seconds: float = Field(default=300.0, ge=0)
    malformed_attempts: int = Field(default=2, ge=1)
    timeout_seconds: float = Field(default=30.0, gt=0)


class HttpRateLimitConfig(_Model):
    """At most ``requests_per_second`` requests (spread evenly)."""

    requests_per_second: float = Field(gt=0)


class HttpForEachConfig(_Model):
    """A parent endpoint whose records each give a child request: ``fills`` maps each ``{name}`` field of the
    source's ``path`` (or ``params`` values) to a parent record's field (dotted path), e.g. ``{id: id}`` for
    ``path: /customers/{id}/invoices``. ``parent_columns`` maps columns added to every child row to parent
    fields (default: ``parent_<name>`` for each fill). The parent endpoint shares the source's ``base_url``,
    ``headers``, ``auth``, rate limit and retries; it has its own ``params``, ``records`` and ``pagination``.
    With a ``cursor``, each parent's children keep a cursor of their own."""

    path: str
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    records: str = ""
    pagination: HttpPaginationConfig | None = None
    fills: dict[str, str]
    parent_columns: dict[str, str] | None = None

    @field_validator("fills")
    @classmethod
    def _some(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("fills must map at least one {name} of the source's path or params to a parent field, e.g. {id: id}")
        return v

    @property
    def columns(self) -> dict[str, str]:
        """The columns added to each child row and the parent field each holds."""
        if self.parent_columns is not None:
            return dict(self.parent_columns)
        return {f"parent_{name}": path for name, path in self.fills.items()}


class HttpSourceConfig(_Model):
    """Records of a REST API endpoint (JSON over HTTP), walked page by page; incremental by ``cursor``.

    ``base_url`` + ``path`` is the endpoint (``path`` may hold ``{name}`` fields a ``for_each`` fills);
    ``params`` and ``headers`` go with every request, ``json`` is the body of a POST. ``records`` is the JSON
    path of the record list in each body (dotted, e.g. ``data.items``; empty: the body is the list).
    ``columns`` types fields as a files source does (strict); nested objects and lists are kept as JSON
    text unless declared ``struct<name: type, ...>`` or ``list<type>``. Secrets (``${env:...}``, ``${file:...}``) may appear in ``base_url``, ``params``,
    ``headers`` and ``auth``; they are resolved at run time and redacted. See docs/http.md."""

    type: Literal["http"]
    base_url: str
    path: str = ""
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: dict[str, Any] | None = Field(None, alias="json")
    auth: HttpAuthConfig | None = None
    pagination: HttpPaginationConfig | None = None
    records: str = ""
    columns: dict[str, str] | None = None
    cursor: HttpCursorConfig | None = None
    rate_limit: HttpRateLimitConfig | None = None
    retries: HttpRetriesConfig = Field(default_factory=HttpRetriesConfig)
    for_each: HttpForEachConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^(https?://|\$\{)", v):
            raise ValueError(f"base_url {v!r} must start with http:// or https:// (e.g. https://api.example.com)")
        return v

    @model_validator(mode="after")
    def _post_body(self) -> HttpSourceConfig:
        if self.json_body is not None and self.method != "POST":
            raise ValueError("'json' is the body of a POST request: set method: POST, or move the values to 'params'")
        if self.cursor is not None and self.cursor.location == "json" and self.method != "POST":
            raise ValueError("cursor 'in: json' puts the cursor in a POST body: set method: POST, or use 'in: query'")
        texts = [self.path, *(v for v in self.params.values() if isinstance(v, str))]
        names = {m for t in texts for m in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", t)}
        fills = set(self.for_each.fills) if self.for_each is not None else set()
        if names - fills:
            missing = ", ".join(sorted(names - fills))
            fix = "add them to for_each.fills" if self.for_each is not None else "declare for_each (a parent endpoint whose records fill them)"
            raise ValueError(f"path or params name {{{missing}}}, which nothing fills: {fix}")
        if fills - names:
            raise ValueError(f"for_each.fills names {', '.join(sorted(fills - names))}, which path and params do not use: write {{name}} where the value goes")
        return self


SourceConfig = Annotated[
    SqlSourceConfig | FilesSourceConfig | KafkaSourceConfig | DebeziumSourceConfig | HttpSourceConfig, Field(discriminator="type")
]


# ---------------------------------------------------------------- target


class MaintenanceConfig(_Model):
    """Table maintenance a pipeline runs between its batches (``target.maintenance``)."""

    # Compact the table (icefield.write.compact) once this many commits landed since the last compaction.
    compact_every: int | None = Field(default=None, ge=1)
    # After each compaction, expire snapshots older than this age (icefield.write.expire), keeping the
    # newest ``retain_last``.
    expire_older_than: str | None = None
    retain_last: int = Field(default=1, ge=1)
    # After each compaction (and expiry), delete the table's orphan files older than this age
    # (icefield.write.orphans): the age guards the files of a commit in flight, so keep it longer than
    # any commit of any writer of the table takes (3d is safe; 0s only where nothing else writes it).
    orphans_older_than: str | None = None
    # After each compaction (expiry and orphan cleanup), delete the tombstones of ``<table>__tombstones``
    # recorded longer ago than this age (icefield.write.tombstones): keep it longer than any source may
    # redeliver an event, since a redelivered older version of a key deleted before the horizon comes back.
    tombstones_older_than: str | None = None
    # After each compaction (before expiry), move the partitions whose time range ended longer ago than
    # this age under ``archive_location`` (an s3:// URI, a file:// URI or an absolute folder), in one replace
    # snapshot (icefield.write.tiering); the table needs a time partition field (day(ts), ...).
    archive_older_than: str | None = None
    archive_location: str | None = None

    @field_validator("archive_location")
    @classmethod
    def _location(cls, v: str | None) -> str | None:
        if v is not None:
            from icefield.config.archive import archive_location

            try:
                archive_location(v)
            except Exception as e:  # ConfigError: reported by pydantic with the field's path
                raise ValueError(str(e)) from None
        return v

    @field_validator("expire_older_than", "orphans_older_than", "tombstones_older_than", "archive_older_than")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            from icefield.config.ages import parse_age

            try:
                parse_age(v)
            except Exception as e:  # ConfigError: reported by pydantic with the field's path
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _expire_needs_compact(self) -> MaintenanceConfig:
        for key in ("expire_older_than", "orphans_older_than", "tombstones_older_than", "archive_older_than"):
            if getattr(self, key) is not None and self.compact_every is None:
                raise ValueError(f"'{key}' runs after a compaction: set 'compact_every' too")
        if self.archive_older_than is not None and self.archive_location is None:
            raise ValueError("'archive_older_than' needs 'archive_location' (where the old partitions go, e.g. s3://cold-bucket/archive)")
        if self.archive_location is not None and self.archive_older_than is None:
            raise ValueError("'archive_location' needs 'archive_older_than' (the age past which a partition moves there, e.g. 180d)")
        return self


class TargetConfig(_Model):
    """The Iceberg table a pipeline writes and how."""

    table: str
    mode: Literal["append", "merge", "overwrite"] = "append"
    keys: list[str] = Field(default_factory=list)
    partition_by: list[str] = Field(default_factory=list)
    overwrite: Literal["partitions", "table"] | None = None
    order_by: str | list[str] | None = None
    delete_column: str | None = None
    keep_newest: bool = False
    properties: dict[str, str] = Field(default_factory=dict)
    # Schema contract (docs/architecture.md, "The write path", rule 5; icefield.write.contracts): ``evolve`` adds new columns, promotes
    # types Iceberg can widen and keeps dropped columns (nulls); ``additive-only`` adds columns only;
    # ``freeze`` refuses any change. Type changes are refused under every contract.
    contract: Literal["evolve", "additive-only", "freeze"] = "evolve"
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    # One writer per table: a second pipeline or model writing the same table is refused when the project
    # loads, unless every writer of it declares ``shared: true`` (each then needs batches of its own).
    shared: bool = False

    @property
    def order_columns(self) -> list[str]:
        """``order_by`` as a list: versions compare by these columns in turn (NULL is oldest)."""
        if self.order_by is None:
            return []
        return [self.order_by] if isinstance(self.order_by, str) else list(self.order_by)

    @field_validator("table")
    @classmethod
    def _qualified(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(IDENTIFIER.match(p) for p in parts):
            raise ValueError(
                "table must be 'namespace.name' (exactly one dot; nested namespaces are not supported) of "
                "letters, digits and '_'"
            )
        return v

    @field_validator("partition_by")
    @classmethod
    def _partitions(cls, v: list[str]) -> list[str]:
        from icefield.config.partitions import parse_partitions

        try:
            parse_partitions(v)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("target.partition_by: ")) from None
        return v

    @field_validator("properties")
    @classmethod
    def _no_secret_references(cls, v: dict[str, str]) -> dict[str, str]:
        # Table properties are stored in the table's metadata in plain text, for every reader of the
        # table to see: a secret resolved into them would leak, so a reference is refused, not resolved.
        for key, value in v.items():
            if has_reference(value):
                raise ValueError(
                    f"{key}: {value!r} holds a secret reference; table properties are stored in the "
                    "table's metadata in plain text, so they cannot hold secrets: write the value itself if it is "
                    "not secret, or remove the property"
                )
        return v

    @model_validator(mode="after")
    def _keys_for_merge(self) -> TargetConfig:
        if self.mode == "merge" and not self.keys:
            raise ValueError("mode 'merge' needs 'keys' (the columns that identify a row)")
        if self.mode != "merge" and (self.delete_column or self.order_by or self.keep_newest):
            raise ValueError("'delete_column', 'order_by' and 'keep_newest' only apply to mode 'merge'")
        if self.keep_newest and not self.order_by:
            raise ValueError("'keep_newest' needs 'order_by' (the columns that say which version is newer)")
        if self.maintenance.tombstones_older_than is not None and not (self.keep_newest and self.delete_column):
            raise ValueError(
                "'maintenance.tombstones_older_than' prunes the tombstones of a merge with 'keep_newest' and "
                "'delete_column' (a change data capture target); this target keeps none: remove the key"
            )
        return self


# ---------------------------------------------------------------- row checks


class RangeSpec(_Model):
    column: str
    min: float | int | str | None = None
    max: float | int | str | None = None


class AcceptedValuesSpec(_Model):
    column: str
    values: list[Any]

    @field_validator("values")
    @classmethod
    def _one_kind(cls, v: list[Any]) -> list[Any]:
        # The values are compared with the column's values: they must be of one kind (numbers, text,
        # booleans), as a column is of one type. Nulls are left out (a null value passes every check).
        kinds = {_value_kind(x) for x in v if x is not None}
        if len(kinds) > 1:
            raise ValueError(
                f"the values mix {' and '.join(sorted(kinds))}; a column holds one kind of value: quote them all "
                "for a text column, or none for a number column"
            )
        if "a list or mapping" in kinds:
            raise ValueError("the values must be numbers, text or booleans, not lists or mappings")
        return v


def _value_kind(x: Any) -> str:
    if isinstance(x, bool):
        return "booleans"
    if isinstance(x, (int, float)):
        return "numbers"
    if isinstance(x, str):
        return "text"
    if isinstance(x, (list, dict)):
        return "a list or mapping"
    return type(x).__name__


class RegexSpec(_Model):
    column: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        # Checks run on Arrow, whose regular expressions are RE2 (linear time): no lookaround nor
        # backreferences, which Python's ``re`` would accept. Compile the pattern there.
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression: {e}") from None
        if not ENGINE_CHECKS.get():
            return v
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            # On a null (the pattern compiles all the same): converting a Python value would load pandas.
            pc.match_substring_regex(pa.nulls(1, pa.string()), v)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            reason = str(e).removeprefix("Invalid regular expression: ")
            raise ValueError(
                f"pattern {v!r} is not a valid regular expression for RE2, the engine checks run on ({reason}): "
                "RE2 has no lookahead, lookbehind nor backreferences; rewrite the pattern without them"
            ) from None
        return v


class NotNullCheck(_Model):
    not_null: list[str]


class UniqueCheck(_Model):
    unique: list[str]


class RangeCheck(_Model):
    range: RangeSpec


class AcceptedValuesCheck(_Model):
    accepted_values: AcceptedValuesSpec


class RegexCheck(_Model):
    regex: RegexSpec


class FilterRule(_Model):
    """Rows for which the SQL expression is false are dropped and counted as ``filtered``. The
    expression is one condition over the row's columns: no statement, subquery or table."""

    filter: str

    @field_validator("filter")
    @classmethod
    def _one_expression(cls, v: str) -> str:
        from icefield.errors import ConfigError
        from icefield.sqlcheck import check_expression

        try:
            check_expression(v)
        except ConfigError as e:  # reported by pydantic with the check's path
            raise ValueError(str(e)) from None
        return v


CHECK_TYPES: dict[str, type[_Model]] = {
    "not_null": NotNullCheck,
    "unique": UniqueCheck,
    "range": RangeCheck,
    "accepted_values": AcceptedValuesCheck,
    "regex": RegexCheck,
    "filter": FilterRule,
}

CheckConfig = NotNullCheck | UniqueCheck | RangeCheck | AcceptedValuesCheck | RegexCheck | FilterRule


class PipelineConfig(_Model):
    """One ``pipelines/*.yaml`` file."""

    name: str
    description: str | None = None
    source: SourceConfig
    target: TargetConfig
    checks: list[CheckConfig] = Field(default_factory=list)
    gates: list[GateConfig] = Field(default_factory=list)
    batch_size: int | None = Field(None, gt=0)
    engine: EngineName | None = None
    """The engine that lands this pipeline's batches (default: the project's ``engine``)."""
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    """When and how a scheduler runs the pipeline (:mod:`icefield.config.scheduling`); once the project is
    loaded, the project's ``scheduling`` defaults are merged in."""
    window: WindowConfig | None = None
    """The date window a backfill run replaces (:mod:`icefield.config.window`); None: no backfill by window."""

    @model_validator(mode="before")
    @classmethod
    def _cdc_target(cls, data: Any) -> Any:
        """A change-data-capture source merges by key, newest ``source.sequence`` first, deletes included:
        fill those target settings unless the file gives them."""
        if not isinstance(data, dict):
            return data
        source, target = data.get("source"), data.get("target")
        if isinstance(source, dict) and source.get("type") == "debezium" and isinstance(target, dict):
            target = dict(target)
            target.setdefault("mode", "merge")
            if target["mode"] == "merge":
                target.setdefault("order_by", [CDC_COMMIT_LSN, CDC_LSN])
                target.setdefault("keep_newest", True)
                target.setdefault("delete_column", CDC_DELETED)
            data = {**data, "target": target}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", v):
            raise ValueError(f"name must be letters, digits, '_', '-' or '.', got {v!r}")
        return v

    @field_validator("checks", mode="before")
    @classmethod
    def _check_shape(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(
                    f"checks[{i}] must be a mapping with one key of {sorted(CHECK_TYPES)}, got {item!r}"
                )
            (kind,) = item
            if kind not in CHECK_TYPES:
                raise ValueError(f"checks[{i}]: unknown check {kind!r}; use one of {sorted(CHECK_TYPES)}")
            out.append(CHECK_TYPES[kind].model_validate(item))
        return out

    @field_validator("gates", mode="before")
    @classmethod
    def _gate_shape(cls, v: Any) -> Any:
        return parse_gates(v)


class ModelConfig(_Model):
    """A SQL model: ``models/*.sql`` with a header naming its target table and mode."""

    name: str
    sql: str
    target: TargetConfig
    path: str
