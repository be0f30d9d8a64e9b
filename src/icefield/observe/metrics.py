"""Prometheus metrics of a run, derived from its events only (``docs/metrics.md``).

:class:`MetricsObserver` is an observer (:mod:`icefield.observe.events`): every number it exports is a field
of an event the run emitted, so the metrics equal the run's results (nothing is counted twice). Its metrics
live in a :class:`~prometheus_client.CollectorRegistry` of its own (never the process-global one), so two
runs in one process do not mix.

Labels are bounded: ``pipeline`` and ``table`` (names from the project), ``stage``, ``status``, ``outcome``,
``operation``, ``gate``, ``check`` and ``error_type`` (names from the project or the code), ``topic`` and
``partition`` (the Kafka topics a pipeline reads, and their partitions: a few each); never a batch id, run
id, snapshot id or file name.

A batch run pushes its registry to a Pushgateway at the end (:func:`push`, one group per pipeline so a run
of one pipeline replaces only that pipeline's metrics); a following run serves ``/metrics``
(:func:`serve`). Neither ever fails the run: a push that fails is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import push_to_gateway, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.config.models import MetricsConfig
from icefield.observe.events import (
    BatchCommitted,
    BatchHeld,
    BatchPublished,
    ErrorRaised,
    Event,
    GateEvaluated,
    MaintenanceDone,
    NodeSkipped,
    RunFinished,
    SchemaChanged,
    SourceLag,
)

log = logging.getLogger(__name__)

__all__ = ["MetricsObserver", "MetricsServer", "PIPELINE_TABLE", "push", "run_metrics", "serve"]

PIPELINE_TABLE = ("pipeline", "table")

RUN_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
"""Seconds: a run takes from a second (a small incremental load) to hours (a backfill)."""
BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
"""Seconds: a batch or one of its stages takes from milliseconds to minutes."""

_ROW_COUNTS = ("in", "committed", "quarantined", "filtered", "updated", "inserted", "deleted", "stale")


class MetricsObserver:
    """Turns a run's events into Prometheus metrics in ``registry`` (a new one by default; read it from
    :attr:`registry`). One observer can watch every node of a plan and several runs: counters add up,
    gauges keep the latest value. Register it on a run: ``run_plan(..., observers=[observer])``.

    Metrics (labels ``pipeline`` and ``table`` unless said):

    - ``icefield_rows_{in,committed,quarantined,filtered,updated,inserted,deleted,stale}_total``: the rows of
      committed batches (a batch skipped because an earlier run committed it counts in none);
    - ``icefield_rows_quarantined_by_check_total{check}``: quarantined rows per failing check;
    - ``icefield_batches_total{outcome}``: batches ended, ``committed`` or ``skipped``;
    - ``icefield_files_added_total``, ``icefield_files_removed_total``, ``icefield_bytes_added_total``,
      ``icefield_bytes_removed_total``, ``icefield_bytes_read_total``: the data files of the batches' commits;
    - ``icefield_batch_duration_seconds`` and ``icefield_stage_duration_seconds{stage}`` (histograms);
    - ``icefield_runs_total{status}`` (success, failed, held), ``icefield_run_duration_seconds`` (histogram);
    - ``icefield_run_failed`` (gauge: 1 when the latest run failed, else 0), ``icefield_batch_held`` (gauge:
      1 while a batch of the latest run is held on the audit branch), ``icefield_last_run_timestamp_seconds``,
      ``icefield_last_success_timestamp_seconds``, ``icefield_last_commit_timestamp_seconds`` (gauges, Unix
      time), ``icefield_newest_cursor_timestamp_seconds`` (the newest timestamp cursor landed: freshness);
    - ``icefield_last_run_rows_{in,committed,quarantined,filtered}`` (gauges: the latest run's counts);
    - ``icefield_gate_results_total{gate,status}``, ``icefield_batches_held_total``,
      ``icefield_batches_published_total``, ``icefield_schema_changes_total``,
      ``icefield_maintenance_total{operation}``, ``icefield_nodes_skipped_total``;
    - ``icefield_commit_retries_total`` (commit attempts of committed batches that met a concurrent commit),
      ``icefield_run_errors_total{pipeline,error_type}`` and ``icefield_commit_conflicts_total{pipeline}``
      (runs ended by a commit conflict that outlasted the retries);
    - ``icefield_kafka_consumer_lag_messages{pipeline,topic,partition}`` (gauge: messages of the partition
      beyond the offset the latest batch committed, measured after its commit) and
      ``icefield_cdc_lag_seconds{pipeline}`` (gauge: seconds from the source time of the newest change the
      latest batch landed to its commit), from :class:`~icefield.observe.events.SourceLag`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._newest: dict[tuple[str, str], float] = {}  # the newest cursor time per (pipeline, table)
        r = self.registry
        pt = PIPELINE_TABLE
        self.rows = {
            name: Counter(f"icefield_rows_{name}", f"Rows {name} by committed batches.", pt, registry=r)
            for name in _ROW_COUNTS
        }
        self.quarantined_by_check = Counter(
            "icefield_rows_quarantined_by_check", "Quarantined rows per failing check.", (*pt, "check"), registry=r
        )
        self.batches = Counter("icefield_batches", "Batches ended (outcome: committed, skipped).", (*pt, "outcome"), registry=r)
        self.files_added = Counter("icefield_files_added", "Data files the batches' commits added.", pt, registry=r)
        self.files_removed = Counter("icefield_files_removed", "Data files the batches' commits removed.", pt, registry=r)
        self.bytes_added = Counter("icefield_bytes_added", "Bytes of the data files the batches added.", pt, registry=r)
        self.bytes_removed = Counter("icefield_bytes_removed", "Bytes of the data files the batches removed.", pt, registry=r)
        self.bytes_read = Counter("icefield_bytes_read", "Bytes of table files a merge read.", pt, registry=r)
        self.batch_seconds = Histogram(
            "icefield_batch_duration_seconds", "Seconds per batch.", pt, buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "icefield_stage_duration_seconds", "Seconds per stage of a batch.", (*pt, "stage"), buckets=BATCH_BUCKETS, registry=r
        )
        self.runs = Counter("icefield_runs", "Runs ended (status: success, failed, held).", (*pt, "status"), registry=r)
        self.run_seconds = Histogram("icefield_run_duration_seconds", "Seconds per run.", pt, buckets=RUN_BUCKETS, registry=r)
        self.run_failed = Gauge("icefield_run_failed", "1 when the latest run failed, else 0.", pt, registry=r)
        self.batch_held = Gauge(
            "icefield_batch_held", "1 while a batch of the latest run is held on the audit branch, else 0.", pt, registry=r
        )
        self.last_run = Gauge("icefield_last_run_timestamp_seconds", "When the latest run ended (Unix time).", pt, registry=r)
        self.last_success = Gauge(
            "icefield_last_success_timestamp_seconds", "When the latest successful run ended (Unix time).", pt, registry=r
        )
        self.last_commit = Gauge(
            "icefield_last_commit_timestamp_seconds", "When the latest batch with rows was committed (Unix time).", pt, registry=r
        )
        self.newest_cursor = Gauge(
            "icefield_newest_cursor_timestamp_seconds",
            "The newest cursor value landed, when the source's cursor is a timestamp (Unix time).",
            pt,
            registry=r,
        )
        self.last_run_rows = {
            name: Gauge(f"icefield_last_run_rows_{name}", f"Rows {name} by the latest run.", pt, registry=r)
            for name in ("in", "committed", "quarantined", "filtered")
        }
        self.gates = Counter("icefield_gate_results", "Gate evaluations (status: passed, failed, error).", (*pt, "gate", "status"), registry=r)
        self.held = Counter("icefield_batches_held", "Batches held on the audit branch by failing gates.", pt, registry=r)
        self.published = Counter("icefield_batches_published", "Held batches published to main.", pt, registry=r)
        self.schema_changes = Counter("icefield_schema_changes", "Schema changes of the target table.", pt, registry=r)
        self.maintenance = Counter("icefield_maintenance", "Maintenance operations done between batches.", (*pt, "operation"), registry=r)
        self.skipped = Counter("icefield_nodes_skipped", "Plan nodes not run because a node they read failed.", pt, registry=r)
        self.errors = Counter("icefield_run_errors", "Errors that ended a run, by type.", ("pipeline", "error_type"), registry=r)
        self.retries = Counter(
            "icefield_commit_retries", "Commit attempts of batches that met a concurrent commit and were retried.", pt, registry=r
        )
        self.conflicts = Counter(
            "icefield_commit_conflicts", "Runs ended by a commit conflict that outlasted the retries.", ("pipeline",), registry=r
        )

        self.consumer_lag = Gauge(
            "icefield_kafka_consumer_lag_messages",
            "Messages of a Kafka partition beyond the offset the latest batch committed (high watermark minus position).",
            ("pipeline", "topic", "partition"),
            registry=r,
        )
        self.cdc_lag = Gauge(
            "icefield_cdc_lag_seconds",
            "Seconds from the source time of the newest change the latest batch landed to its commit.",
            ("pipeline",),
            registry=r,
        )

    def __call__(self, event: Event) -> None:
        with self._lock:  # plan nodes may run in threads of their own
            self._observe(event)

    def _observe(self, e: Event) -> None:
        if isinstance(e, BatchCommitted):
            labels = (e.pipeline, e.table)
            self.batches.labels(*labels, "skipped" if e.skipped else "committed").inc()
            if e.skipped:  # an earlier run committed it: its rows are that run's
                return
            for name in _ROW_COUNTS:
                self.rows[name].labels(*labels).inc(getattr(e, f"rows_{name}"))
            for check, n in e.failures_by_check.items():
                self.quarantined_by_check.labels(*labels, check).inc(n)
            self.files_added.labels(*labels).inc(e.files_added)
            self.files_removed.labels(*labels).inc(e.files_removed)
            self.bytes_added.labels(*labels).inc(e.bytes_added)
            self.bytes_removed.labels(*labels).inc(e.bytes_removed)
            self.bytes_read.labels(*labels).inc(e.bytes_read)
            self.retries.labels(*labels).inc(e.commit_conflicts)
            self.batch_seconds.labels(*labels).observe(e.seconds)
            for stage, seconds in e.stages.items():
                self.stage_seconds.labels(*labels, stage).observe(seconds)
            if e.snapshot_id is not None:
                self.last_commit.labels(*labels).set(e.at.timestamp())
            if e.cursor_time is not None:
                newest = max(self._newest.get(labels, 0.0), e.cursor_time.timestamp())
                self._newest[labels] = newest
                self.newest_cursor.labels(*labels).set(newest)
        elif isinstance(e, SourceLag):
            for topic, partitions in e.messages.items():
                for partition, behind in partitions.items():
                    self.consumer_lag.labels(e.pipeline, topic, str(partition)).set(behind)
            if e.change_time is not None:  # clocks apart (the database's ahead of this host) read as no lag
                self.cdc_lag.labels(e.pipeline).set(max((e.at - e.change_time).total_seconds(), 0.0))
                # A CDC source's cursor is a log position, not a time: its freshness is the newest change landed.
                labels = (e.pipeline, e.table)
                newest = max(self._newest.get(labels, 0.0), e.change_time.timestamp())
                self._newest[labels] = newest
                self.newest_cursor.labels(*labels).set(newest)
        elif isinstance(e, GateEvaluated):
            self.gates.labels(e.pipeline, e.table, e.gate, e.status).inc()
        elif isinstance(e, BatchHeld):
            self.held.labels(e.pipeline, e.table).inc()
            self.batch_held.labels(e.pipeline, e.table).set(1)
        elif isinstance(e, BatchPublished):
            self.published.labels(e.pipeline, e.table).inc()
            self.batch_held.labels(e.pipeline, e.table).set(0)
        elif isinstance(e, SchemaChanged):
            self.schema_changes.labels(e.pipeline, e.table).inc()
        elif isinstance(e, MaintenanceDone):
            self.maintenance.labels(e.pipeline, e.table, e.operation).inc()
        elif isinstance(e, ErrorRaised):
            self.errors.labels(e.pipeline, e.error_type).inc()
            if e.error_type == "CommitConflictError":
                self.conflicts.labels(e.pipeline).inc()
        elif isinstance(e, NodeSkipped):
            self.skipped.labels(e.pipeline, e.table).inc()
        elif isinstance(e, RunFinished):
            self._finished(e)

    def _finished(self, e: RunFinished) -> None:
        labels = (e.pipeline, e.table)
        self.runs.labels(*labels, e.status).inc()
        self.run_seconds.labels(*labels).observe(e.seconds)
        self.run_failed.labels(*labels).set(1 if e.status == "failed" else 0)
        self.batch_held.labels(*labels).set(1 if e.status == "held" else 0)
        self.last_run.labels(*labels).set(e.finished_at.timestamp())
        if e.status == "success":
            self.last_success.labels(*labels).set(e.finished_at.timestamp())
        for name, gauge in self.last_run_rows.items():
            gauge.labels(*labels).set(getattr(e, f"rows_{name}"))

    def pipelines(self) -> list[str]:
        """The pipelines (and models) the observer has seen a metric of, sorted."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(s.labels["pipeline"] for s in family.samples if "pipeline" in s.labels)
        return sorted(names)

    def __repr__(self) -> str:
        return "MetricsObserver()"


class _PipelineView(Collector):
    """The samples of one pipeline in another registry (what one Pushgateway group holds), without the
    ``*_created`` series (a pushed group is one run's: its creation times say nothing more)."""

    def __init__(self, source: CollectorRegistry, pipeline: str) -> None:
        self.source = source
        self.pipeline = pipeline

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            samples = [
                s for s in family.samples if s.labels.get("pipeline") == self.pipeline and not s.name.endswith("_created")
            ]
            if samples:
                out = Metric(family.name, family.documentation, family.type, family.unit)
                out.samples = samples
                yield out


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` did: the pipelines pushed, and the error of each that failed."""

    pushed: tuple[str, ...]
    failed: dict[str, str]


def push(observer: MetricsObserver, gateway: str, job: str, timeout: float = 10.0) -> PushResult:
    """Push ``observer``'s metrics to the Pushgateway at ``gateway``, one group per pipeline (grouping key
    ``job`` and ``pipeline``), replacing that group's earlier metrics (HTTP PUT). Never raises: a failure
    is logged as a warning and returned."""
    pushed: list[str] = []
    failed: dict[str, str] = {}
    for pipeline in observer.pipelines():
        view = CollectorRegistry(auto_describe=False)
        view.register(_PipelineView(observer.registry, pipeline))
        try:
            push_to_gateway(gateway, job=job, registry=view, grouping_key={"pipeline": pipeline}, timeout=timeout)
        except Exception as e:  # a metrics outage never fails a run
            failed[pipeline] = f"{type(e).__name__}: {e}"
            log.warning(
                "could not push the metrics of %s to the Pushgateway %s (job %s): %s; the run's result stands, "
                "check metrics.pushgateway in icefield.yaml and that the Pushgateway is up",
                pipeline, gateway, job, failed[pipeline],
            )
        else:
            pushed.append(pipeline)
            log.debug("pushed the metrics of %s to %s (job %s)", pipeline, gateway, job)
    return PushResult(tuple(pushed), failed)


class MetricsServer:
    """An HTTP server of ``/metrics`` for one registry, in a daemon thread; :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` (port 0: a free one; read :attr:`MetricsServer.port`).
    Raises :class:`~icefield.errors.ConfigError` when the address cannot be bound."""
    try:
        server = MetricsServer(registry, host, port)
    except OSError as e:
        raise ConfigError(
            f"cannot serve /metrics on {host}:{port} ({e}): choose a free port with metrics.port in icefield.yaml "
            "or --metrics-port"
        ) from e
    log.info("serving metrics on %s", server.url)
    return server


def samples(registry: CollectorRegistry, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The labels and value of each sample called ``name`` in ``registry`` (tests and tools read metrics so)."""
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                yield dict(s.labels), s.value


@contextmanager
def run_metrics(
    config: MetricsConfig, base_dir: Path, *, follow: bool = False, port: int | None = None
) -> Iterator[list[MetricsObserver]]:
    """The metrics of a run as the project configures them (``metrics:`` of ``icefield.yaml``): yields the
    observers to register on the run, none when the project neither pushes nor serves. A run that does not
    follow pushes to ``config.pushgateway`` when the block ends (however it ends; a failed push is logged); a
    following run serves ``/metrics`` on ``port`` (else ``config.port``) at ``config.host`` during the block.
    ``base_dir`` is the project folder (secret references in the Pushgateway URL are resolved from it).
    Raises :class:`~icefield.errors.ConfigError` when the port cannot be bound."""
    from icefield.config.secrets import resolve

    port = port if port is not None else config.port if follow else None
    gateway = config.pushgateway if not follow else None
    if gateway is None and port is None:
        yield []
        return
    observer = MetricsObserver()
    server = serve(observer.registry, config.host, port) if port is not None else None
    try:
        yield [observer]
    finally:
        if server is not None:
            server.close()
        if gateway is not None:
            push(observer, resolve(gateway, where="icefield.yaml: metrics.pushgateway", base_dir=base_dir), config.job, config.timeout)
