"""Grafana dashboards of icefield's metrics, generated as code (``docs/dashboards.md``).

``python deploy/grafana/generate.py [--out DIR]`` writes one dashboard per topic
(:data:`DASHBOARDS`: pipelines, tables, streams and CDC, quality, cost) to ``DIR/dashboards/*.json`` and
Grafana's provisioning files (a Prometheus datasource, a dashboard provider) to ``DIR/provisioning/``
(``DIR``: this file's folder by default). The generated files are committed; a unit test regenerates them
and fails when they differ.

The dashboards are built with grafana-foundation-sdk (pinned in the ``dev`` extra). This generator lives
outside the ``icefield`` package: the SDK is never a dependency of icefield itself. Every panel queries only metrics icefield
exports: :class:`~icefield.observe.metrics.MetricsObserver`'s (pushed by batch runs, served by following
runs; the Kafka consumer lag and CDC lag gauges among them), and the table statistics and storage cost of
``icefield metrics serve`` (:class:`icefield.inspect.TableStatsCollector`, :class:`icefield.inspect.CostCollector`).

Counters a batch run pushes hold that run's counts (each process starts at 0; ``docs/metrics.md``), so the
panels of batch pipelines read the gauges of the latest run (``icefield_last_run_rows_*``, the timestamps)
or the pushed counters as they are; ``rate()`` panels are for following runs (``--follow``), whose counters grow.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon_models
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as gprom_models

__all__ = ["DASHBOARDS", "DATASOURCE_UID", "Dash", "Panel", "main", "render", "write"]

DATASOURCE_UID = "icefield-prometheus"
"""The uid of the provisioned Prometheus datasource, the default of each dashboard's ``datasource`` variable."""

HERE = Path(__file__).resolve().parent
FOLDER = "icefield"
PIPE = 'pipeline=~"$pipeline"'
TABLE = 'table=~"$table"'
PIPE_TABLE = f"{PIPE},{TABLE}"
OWNER = 'owner=~"$owner"'
PRICED = f'{TABLE},{OWNER},part!="small"'
"""The cost samples of the selected tables and owners that add up (``small`` is a share of ``current``)."""


@dataclass(frozen=True)
class Panel:
    """One panel: ``targets`` are ``(PromQL, legend)`` pairs; ``kind`` is ``timeseries``, ``stat`` or
    ``table`` (stat and table panels run instant queries); ``unit`` is a Grafana unit id."""

    title: str
    description: str
    targets: tuple[tuple[str, str], ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8


@dataclass(frozen=True)
class Dash:
    """One dashboard: its file stem, uid, title, what it shows, its variables (``pipeline``, ``table``) and
    its rows of panels."""

    stem: str
    title: str
    description: str
    variables: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    tags: tuple[str, ...] = field(default=())

    @property
    def uid(self) -> str:
        return f"icefield-{self.stem}"


# The variables: each is fed by label_values() over a metric every pipeline (or table) has.
VARIABLE_QUERIES = {
    "pipeline": "label_values(icefield_runs_total, pipeline)",
    "table": "label_values(icefield_runs_total{" + PIPE + "}, table)",
    "stats_table": "label_values(icefield_table_bytes, table)",
    "owner": "label_values(icefield_table_storage_bytes, owner)",
}


def _stat(title: str, description: str, expr: str, unit: str = "short", legend: str = "", width: int = 6) -> Panel:
    return Panel(title, description, ((expr, legend),), kind="stat", unit=unit, width=width, height=5)


PIPELINES = Dash(
    "pipelines",
    "icefield / Pipelines",
    "Did yesterday's loads run? Status, duration, rows and errors of each pipeline's latest run.",
    ("pipeline",),
    (
        (
            "Status",
            (
                _stat("Pipelines failing", "Pipelines whose latest run failed (icefield_run_failed).",
                      f"sum(icefield_run_failed{{{PIPE}}})"),
                _stat("Batches held", "Pipelines with a batch held on the audit branch by a failing gate.",
                      f"sum(icefield_batch_held{{{PIPE}}})"),
                _stat("Oldest success", "Time since the latest successful run, of the pipeline that has waited longest.",
                      f"max(time() - icefield_last_success_timestamp_seconds{{{PIPE}}})", unit="s"),
                _stat("Runs ended in errors", "Errors that ended a run (pushed: the latest run's).",
                      f"sum(icefield_run_errors_total{{{PIPE}}})"),
                Panel(
                    "Latest run per pipeline",
                    "One row per pipeline and table: failed (1) or not, held, seconds since the latest run and the latest success.",
                    (
                        (f"max by (pipeline, table) (icefield_run_failed{{{PIPE}}})", "failed"),
                        (f"max by (pipeline, table) (icefield_batch_held{{{PIPE}}})", "held"),
                        (f"time() - max by (pipeline, table) (icefield_last_run_timestamp_seconds{{{PIPE}}})", "since run"),
                        (f"time() - max by (pipeline, table) (icefield_last_success_timestamp_seconds{{{PIPE}}})", "since success"),
                    ),
                    kind="table", width=24,
                ),
            ),
        ),
        (
            "Runs",
            (
                Panel("Runs by status", "Runs ended, by status (success, failed, held).",
                      ((f"sum by (pipeline, status) (icefield_runs_total{{{PIPE}}})", "{{pipeline}} {{status}}"),)),
                Panel("Duration of the latest run", "Seconds of the latest run (pushed histograms hold one run each).",
                      ((f"sum by (pipeline) (icefield_run_duration_seconds_sum{{{PIPE}}}) / "
                        f"sum by (pipeline) (icefield_run_duration_seconds_count{{{PIPE}}})", "{{pipeline}}"),), unit="s"),
                Panel("Batch duration p95 (following runs)", "95th percentile of the seconds per batch.",
                      ((f"histogram_quantile(0.95, sum by (pipeline, le) "
                        f"(rate(icefield_batch_duration_seconds_bucket{{{PIPE}}}[$__rate_interval])))", "{{pipeline}}"),), unit="s"),
                Panel("Seconds per stage (following runs)", "Mean seconds of each stage of a batch (read, checks, commit...).",
                      ((f"sum by (stage) (rate(icefield_stage_duration_seconds_sum{{{PIPE}}}[$__rate_interval])) / "
                        f"sum by (stage) (rate(icefield_stage_duration_seconds_count{{{PIPE}}}[$__rate_interval]))", "{{stage}}"),),
                      unit="s"),
            ),
        ),
        (
            "Rows",
            (
                Panel(
                    "Rows of the latest run",
                    "Rows read, committed, quarantined and filtered by the latest run.",
                    tuple(
                        (f"sum by (pipeline) (icefield_last_run_rows_{name}{{{PIPE}}})", "{{pipeline}} " + name)
                        for name in ("in", "committed", "quarantined", "filtered")
                    ),
                ),
                Panel("Rows committed per second (following runs)", "Rows committed per second.",
                      ((f"sum by (pipeline) (rate(icefield_rows_committed_total{{{PIPE}}}[$__rate_interval]))", "{{pipeline}}"),),
                      unit="rowsps"),
                Panel("Batches", "Batches ended, by outcome (skipped: an earlier run had committed it).",
                      ((f"sum by (pipeline, outcome) (icefield_batches_total{{{PIPE}}})", "{{pipeline}} {{outcome}}"),)),
            ),
        ),
        (
            "Errors and commits",
            (
                Panel("Errors by type", "Errors that ended a run, by exception type.",
                      ((f"sum by (pipeline, error_type) (icefield_run_errors_total{{{PIPE}}})", "{{pipeline}} {{error_type}}"),)),
                Panel(
                    "Commit retries and conflicts",
                    "Commit attempts retried after a concurrent commit, and runs ended by a conflict that outlasted the retries.",
                    (
                        (f"sum by (pipeline) (icefield_commit_retries_total{{{PIPE}}})", "{{pipeline}} retries"),
                        (f"sum by (pipeline) (icefield_commit_conflicts_total{{{PIPE}}})", "{{pipeline}} conflicts"),
                    ),
                ),
                Panel("Nodes skipped", "Plan nodes not run because a node they read failed.",
                      ((f"sum by (pipeline) (icefield_nodes_skipped_total{{{PIPE}}})", "{{pipeline}}"),)),
            ),
        ),
    ),
    tags=("pipelines",),
)

TABLES = Dash(
    "tables",
    "icefield / Tables",
    "The shape of each table, read from its manifests by `icefield metrics serve`, and when data last landed.",
    ("stats_table",),
    (
        (
            "Files",
            (
                Panel("Live data files", "Data files of the current snapshot.",
                      ((f"sum by (table) (icefield_table_data_files{{{TABLE}}})", "{{table}}"),)),
                Panel("Small files", "Live data files below the compaction threshold: compaction merges them.",
                      ((f"sum by (table) (icefield_table_small_files{{{TABLE}}})", "{{table}}"),)),
                Panel("Small-file ratio", "Small files out of the live data files.",
                      ((f"sum by (table) (icefield_table_small_files{{{TABLE}}}) / "
                        f"clamp_min(sum by (table) (icefield_table_data_files{{{TABLE}}}), 1)", "{{table}}"),), unit="percentunit"),
                Panel("Delete files", "Position and equality delete files (merges of CDC streams write them).",
                      ((f"sum by (table) (icefield_table_delete_files{{{TABLE}}})", "{{table}}"),)),
            ),
        ),
        (
            "Size and history",
            (
                Panel("Records", "Records in the live data files (before deletes).",
                      ((f"sum by (table) (icefield_table_records{{{TABLE}}})", "{{table}}"),)),
                Panel("Bytes", "Bytes of the live data and delete files.",
                      ((f"sum by (table) (icefield_table_bytes{{{TABLE}}})", "{{table}}"),), unit="bytes"),
                Panel("Snapshots", "Snapshots the metadata keeps (time travel); expiry removes old ones.",
                      ((f"sum by (table) (icefield_table_snapshots{{{TABLE}}})", "{{table}}"),)),
                Panel("Unreadable tables", "Tables whose statistics could not be read at the latest scrape (see the exporter's log).",
                      (("sum(icefield_table_stats_errors)", "errors"),)),
            ),
        ),
        (
            "Writes",
            (
                Panel("Time since the latest commit", "Seconds since a batch with rows was committed to the table.",
                      ((f"time() - max by (table) (icefield_last_commit_timestamp_seconds{{{TABLE}}})", "{{table}}"),), unit="s"),
                Panel("Data freshness", "Now minus the newest cursor time landed (sources with a timestamp cursor).",
                      ((f"time() - max by (table) (icefield_newest_cursor_timestamp_seconds{{{TABLE}}})", "{{table}}"),), unit="s"),
                Panel(
                    "Files added and removed",
                    "Data files the batches' commits added and removed (pushed: the latest run's).",
                    (
                        (f"sum by (table) (icefield_files_added_total{{{TABLE}}})", "{{table}} added"),
                        (f"sum by (table) (icefield_files_removed_total{{{TABLE}}})", "{{table}} removed"),
                    ),
                ),
                Panel(
                    "Schema changes and maintenance",
                    "Schema changes of the table, and maintenance done between batches by operation.",
                    (
                        (f"sum by (table) (icefield_schema_changes_total{{{TABLE}}})", "{{table}} schema changes"),
                        (f"sum by (table, operation) (icefield_maintenance_total{{{TABLE}}})", "{{table}} {{operation}}"),
                    ),
                ),
            ),
        ),
    ),
    tags=("tables",),
)

STREAMS = Dash(
    "streams-and-cdc",
    "icefield / Streams and CDC",
    "Which stream is falling behind: Kafka consumer lag per partition, CDC lag, and the throughput of following runs.",
    ("pipeline",),
    (
        (
            "Lag",
            (
                Panel("Kafka consumer lag per partition", "Messages between the group's committed offset and the partition's end.",
                      ((f"sum by (pipeline, topic, partition) (icefield_kafka_consumer_lag_messages{{{PIPE}}})",
                        "{{pipeline}} {{topic}}/{{partition}}"),)),
                Panel("Kafka consumer lag growth", "Messages per second the lag grows (above 0 for long: the consumer falls behind).",
                      ((f"sum by (pipeline, topic) (deriv(icefield_kafka_consumer_lag_messages{{{PIPE}}}[$__rate_interval]))",
                        "{{pipeline}} {{topic}}"),)),
                Panel("CDC lag", "Seconds between a change in the source database and its commit to the table.",
                      ((f"max by (pipeline) (icefield_cdc_lag_seconds{{{PIPE}}})", "{{pipeline}}"),), unit="s"),
                Panel("Data freshness", "Now minus the newest cursor time landed, and minus the latest commit.",
                      (
                          (f"time() - max by (pipeline) (icefield_newest_cursor_timestamp_seconds{{{PIPE}}})", "{{pipeline}} cursor"),
                          (f"time() - max by (pipeline) (icefield_last_commit_timestamp_seconds{{{PIPE}}})", "{{pipeline}} commit"),
                      ), unit="s"),
            ),
        ),
        (
            "Throughput",
            (
                Panel("Rows committed per second", "Rows committed per second by following runs.",
                      ((f"sum by (pipeline) (rate(icefield_rows_committed_total{{{PIPE}}}[$__rate_interval]))", "{{pipeline}}"),),
                      unit="rowsps"),
                Panel(
                    "Changes merged per second",
                    "Rows inserted, updated and deleted per second by merges (CDC), and stale changes ignored.",
                    tuple(
                        (f"sum by (pipeline) (rate(icefield_rows_{name}_total{{{PIPE}}}[$__rate_interval]))", "{{pipeline}} " + name)
                        for name in ("inserted", "updated", "deleted", "stale")
                    ),
                    unit="rowsps",
                ),
                Panel("Batches per second", "Batches committed (or skipped) per second.",
                      ((f"sum by (pipeline, outcome) (rate(icefield_batches_total{{{PIPE}}}[$__rate_interval]))",
                        "{{pipeline}} {{outcome}}"),)),
                Panel("Batch duration p95", "95th percentile of the seconds per batch.",
                      ((f"histogram_quantile(0.95, sum by (pipeline, le) "
                        f"(rate(icefield_batch_duration_seconds_bucket{{{PIPE}}}[$__rate_interval])))", "{{pipeline}}"),), unit="s"),
                Panel("Commit retries per second", "Commit attempts that met a concurrent commit.",
                      ((f"sum by (pipeline) (rate(icefield_commit_retries_total{{{PIPE}}}[$__rate_interval]))", "{{pipeline}}"),)),
                Panel("Bytes read by merges per second", "Bytes of table files the merges read to find the rows they change.",
                      ((f"sum by (pipeline) (rate(icefield_bytes_read_total{{{PIPE}}}[$__rate_interval]))", "{{pipeline}}"),),
                      unit="Bps"),
            ),
        ),
    ),
    tags=("streams", "cdc"),
)

QUALITY = Dash(
    "quality",
    "icefield / Quality",
    "What the checks and gates caught: quarantined rows by check, filtered rows, gate results, held batches.",
    ("pipeline", "table"),
    (
        (
            "Quarantine",
            (
                Panel("Quarantine rate of the latest run", "Rows quarantined out of the rows read by the latest run.",
                      ((f"sum by (pipeline, table) (icefield_last_run_rows_quarantined{{{PIPE_TABLE}}}) / "
                        f"clamp_min(sum by (pipeline, table) (icefield_last_run_rows_in{{{PIPE_TABLE}}}), 1)",
                        "{{pipeline}} {{table}}"),), unit="percentunit"),
                Panel("Quarantined rows by check", "Quarantined rows per failing check.",
                      ((f"sum by (pipeline, table, check) (icefield_rows_quarantined_by_check_total{{{PIPE_TABLE}}})",
                        "{{table}} {{check}}"),)),
                Panel(
                    "Rows quarantined and filtered",
                    "Rows sent to the quarantine and rows dropped by filter rules, latest run.",
                    (
                        (f"sum by (table) (icefield_last_run_rows_quarantined{{{PIPE_TABLE}}})", "{{table}} quarantined"),
                        (f"sum by (table) (icefield_last_run_rows_filtered{{{PIPE_TABLE}}})", "{{table}} filtered"),
                    ),
                ),
                Panel("Quarantined rows per second (following runs)", "Rows quarantined per second.",
                      ((f"sum by (table) (rate(icefield_rows_quarantined_total{{{PIPE_TABLE}}}[$__rate_interval]))", "{{table}}"),),
                      unit="rowsps"),
            ),
        ),
        (
            "Gates",
            (
                Panel("Gate results", "Gate evaluations by gate and status (passed, failed, error).",
                      ((f"sum by (table, gate, status) (icefield_gate_results_total{{{PIPE_TABLE}}})",
                        "{{table}} {{gate}} {{status}}"),)),
                _stat("Gates not passed", "Gate evaluations that failed or erred.",
                      f'sum(icefield_gate_results_total{{{PIPE_TABLE},status!="passed"}})', width=6),
                _stat("Batches held now", "Tables with a batch held on the audit branch.",
                      f"sum(icefield_batch_held{{{PIPE_TABLE}}})", width=6),
                Panel(
                    "Batches held and published",
                    "Batches held on the audit branch by failing gates, and held batches published to main.",
                    (
                        (f"sum by (table) (icefield_batches_held_total{{{PIPE_TABLE}}})", "{{table}} held"),
                        (f"sum by (table) (icefield_batches_published_total{{{PIPE_TABLE}}})", "{{table}} published"),
                    ),
                ),
                Panel("Schema changes", "Schema changes of the target tables (a new column, a widened type).",
                      ((f"sum by (table) (icefield_schema_changes_total{{{PIPE_TABLE}}})", "{{table}}"),)),
            ),
        ),
    ),
    tags=("quality",),
)

NAMESPACE_BYTES = 'label_replace(icefield_table_bytes{' + TABLE + '}, "namespace", "$1", "table", "(.+)\\\\.[^.]+")'

COST = Dash(
    "cost",
    "icefield / Cost",
    "What the tables store and what it costs a month, per table, namespace and owner: the current snapshot, "
    "history kept for time travel, metadata, orphan and small files (the figures of `icefield cost`), and what the "
    "pipelines write. From the table statistics and storage cost of `icefield metrics serve`.",
    ("stats_table", "owner"),
    (
        (
            "Monthly cost",
            (
                _stat("Cost per month", "The monthly price of what the selected tables store, at the prices of icefield.yaml's cost: block.",
                      f"sum by (currency) (icefield_table_storage_cost_per_month{{{PRICED}}})", legend="{{currency}}", width=8),
                _stat("History and orphans per month", "The part of it that expiry and orphan cleanup would free.",
                      f'sum by (currency) (icefield_table_storage_cost_per_month{{{TABLE},{OWNER},part=~"history|orphan"}})',
                      legend="{{currency}}", width=8),
                _stat("Figures age", "Seconds since the exporter computed the storage figures (every --cost-every seconds).",
                      "max(icefield_table_storage_cost_age_seconds)", unit="s", width=8),
                Panel("Cost per owner", "The monthly price per owner (the scheduling.owner of the pipelines writing the tables).",
                      ((f"sum by (owner, currency) (icefield_table_storage_cost_per_month{{{PRICED}}})", "{{owner}} {{currency}}"),),
                      kind="table", width=8),
                Panel("Cost per namespace", "The monthly price per namespace.",
                      ((f"sum by (namespace, currency) (icefield_table_storage_cost_per_month{{{PRICED}}})", "{{namespace}} {{currency}}"),),
                      kind="table", width=8),
                Panel("Most expensive tables", "The ten tables that cost the most a month.",
                      ((f"topk(10, sum by (table, owner, currency) (icefield_table_storage_cost_per_month{{{PRICED}}}))", "{{table}}"),),
                      kind="table", width=8),
                Panel("Bytes by part", "Bytes by why they are kept: current snapshot, history only, metadata, orphans, and small files (a share of current).",
                      ((f"sum by (part) (icefield_table_storage_bytes{{{TABLE},{OWNER}}})", "{{part}}"),), unit="bytes"),
                Panel("History and orphan bytes per table", "Bytes only older snapshots keep (icefield expire frees them) and orphan files (icefield orphans).",
                      ((f'sum by (table, part) (icefield_table_storage_bytes{{{TABLE},{OWNER},part=~"history|orphan"}})', "{{table}} {{part}}"),),
                      unit="bytes"),
            ),
        ),
        (
            "Storage",
            (
                _stat("Bytes stored", "Bytes of the live files of all selected tables.",
                      f"sum(icefield_table_bytes{{{TABLE}}})", unit="bytes", width=8),
                _stat("Snapshots kept", "Snapshots kept for time travel: their files stay until expiry.",
                      f"sum(icefield_table_snapshots{{{TABLE}}})", width=8),
                _stat("Small files", "Small data files: many small objects cost requests and planning time.",
                      f"sum(icefield_table_small_files{{{TABLE}}})", width=8),
                Panel("Bytes per table", "Bytes of each table's current snapshot.",
                      ((f"sum by (table) (icefield_table_bytes{{{TABLE}}})", "{{table}}"),), unit="bytes"),
                Panel("Bytes per namespace", "Bytes summed over the tables of each namespace.",
                      ((f"sum by (namespace) ({NAMESPACE_BYTES})", "{{namespace}}"),), unit="bytes"),
                Panel("Largest tables", "The ten largest tables now.",
                      ((f"topk(10, sum by (table) (icefield_table_bytes{{{TABLE}}}))", "{{table}}"),), kind="table", unit="bytes"),
                Panel("Growth over the time range", "Bytes each table gained (or lost) over the dashboard's time range.",
                      ((f"sum by (table) (delta(icefield_table_bytes{{{TABLE}}}[$__range]))", "{{table}}"),), kind="table", unit="bytes"),
            ),
        ),
        (
            "Writes",
            (
                Panel(
                    "Bytes written and removed",
                    "Bytes of the data files the batches' commits added and removed (pushed: the latest run's).",
                    (
                        (f"sum by (table) (icefield_bytes_added_total{{{TABLE}}})", "{{table}} added"),
                        (f"sum by (table) (icefield_bytes_removed_total{{{TABLE}}})", "{{table}} removed"),
                    ),
                    unit="bytes",
                ),
                Panel("Bytes read by merges", "Bytes of table files merges read (request and scan cost).",
                      ((f"sum by (table) (icefield_bytes_read_total{{{TABLE}}})", "{{table}}"),), unit="bytes"),
            ),
        ),
    ),
    tags=("cost",),
)

DASHBOARDS: tuple[Dash, ...] = (PIPELINES, TABLES, STREAMS, QUALITY, COST)


def _datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _variable(name: str) -> gd.QueryVariable:
    label = "table" if name == "stats_table" else name
    return (
        gd.QueryVariable(label)
        .label(label)
        .query({"query": VARIABLE_QUERIES[name], "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .datasource(_datasource())
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


def _panel(p: Panel, panel_id: int) -> gts.Panel | gstat.Panel | gtable.Panel:
    builder: gts.Panel | gstat.Panel | gtable.Panel
    if p.kind == "stat":
        builder = gstat.Panel().reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    elif p.kind == "table":
        builder = gtable.Panel().show_header(True).with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    else:
        builder = gts.Panel().legend(
            gcommon.VizLegendOptions().display_mode(gcommon_models.LegendDisplayMode.LIST)
            .placement(gcommon_models.LegendPlacement.BOTTOM).show_legend(True)
        )
    builder.id(panel_id).title(p.title).description(p.description).datasource(_datasource()).unit(p.unit)
    builder.span(p.width).height(p.height)
    for i, (expr, legend) in enumerate(p.targets):
        query = gp.Dataquery().expr(expr).ref_id(chr(ord("A") + i)).legend_format(legend or "__auto")
        if p.kind == "timeseries":
            query = query.range()
        else:  # a stat or a table shows the values now
            query = query.instant()
            if p.kind == "table":
                query = query.format(gprom_models.PromQueryFormat.TABLE)
        builder.with_target(query)
    return builder


def build(d: Dash) -> dict[str, object]:
    """The dashboard ``d`` as Grafana's JSON model (a dict, ready for :func:`json.dumps`)."""
    board = (
        gd.Dashboard(d.title)
        .uid(d.uid)
        .description(d.description)
        .tags(["icefield", *d.tags])
        .editable()
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    board.with_variable(
        gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        .current(dm.VariableOption(selected=True, text=DATASOURCE_UID, value=DATASOURCE_UID))
    )
    for name in d.variables:
        board.with_variable(_variable(name))
    panel_id = 0
    for title, panels in d.rows:
        panel_id += 1
        board.with_row(gd.Row(title).id(panel_id).collapsed(False))  # open: its panels follow it at the top level
        for p in panels:
            panel_id += 1
            board.with_panel(_panel(p, panel_id))
    out: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return out


def render(d: Dash) -> str:
    """The file text of dashboard ``d``: stable JSON (sorted keys, 2-space indent, a final newline)."""
    return json.dumps(build(d), indent=2, sort_keys=True) + "\n"


DATASOURCES = {
    "apiVersion": 1,
    "datasources": [
        {
            "name": "icefield Prometheus",
            "uid": DATASOURCE_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": "${ICEFIELD_PROMETHEUS_URL}",
            "isDefault": False,
            "editable": True,
            "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
        }
    ],
}

PROVIDERS = {
    "apiVersion": 1,
    "providers": [
        {
            "name": "icefield",
            "orgId": 1,
            "folder": FOLDER,
            "type": "file",
            "disableDeletion": False,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 60,
            "options": {"path": "${ICEFIELD_DASHBOARDS_DIR}", "foldersFromFilesStructure": False},
        }
    ],
}

HEADER = "# Generated by `python deploy/grafana/generate.py`: edit the generator, not this file (docs/dashboards.md).\n"


def files() -> dict[str, str]:
    """Every generated file, by its path relative to the output folder, and its text."""
    out = {f"dashboards/{d.stem}.json": render(d) for d in DASHBOARDS}
    out["provisioning/datasources/icefield.yaml"] = HEADER + yaml.safe_dump(DATASOURCES, sort_keys=False)
    out["provisioning/dashboards/icefield.yaml"] = HEADER + yaml.safe_dump(PROVIDERS, sort_keys=False)
    return out


def write(out: Path) -> list[Path]:
    """Write :func:`files` under ``out`` (folders made as needed), removing dashboards of ``out/dashboards``
    that are no longer generated; returns the paths written."""
    written = []
    texts = files()
    for rel, text in texts.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in (out / "dashboards").glob("*.json"):
        if f"dashboards/{stale.name}" not in texts:
            stale.unlink()
    return written


METRIC_NAME = re.compile(r"\bicefield_[a-z0-9_]+\b")


def metric_names(expr: str) -> set[str]:
    """The icefield metric names a PromQL expression reads (every metric of these dashboards is one)."""
    return set(METRIC_NAME.findall(expr))


def queries(doc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(panel title, PromQL, instant)`` of every target of every panel of the dashboard JSON ``doc``
    (panels of collapsed rows too), as Grafana would send them before variables are substituted."""
    out = []
    panels = list(doc.get("panels") or [])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels") or [])
        for target in panel.get("targets") or []:
            out.append((str(panel["title"]), str(target["expr"]), bool(target.get("instant"))))
    return out


def variables(doc: dict[str, Any]) -> dict[str, str]:
    """The query variables of the dashboard JSON ``doc``: name -> ``label_values(...)`` query."""
    out = {}
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            out[str(var["name"])] = str(query["query"] if isinstance(query, dict) else query)
    return out


def declared_metrics() -> set[str]:
    """The sample names icefield declares: those of :class:`~icefield.observe.metrics.MetricsObserver`'s
    registry (a counter ``x``: ``x_total``; a histogram: ``x_bucket``, ``x_sum``, ``x_count``; a gauge: ``x``),
    and the table statistics and storage cost of ``icefield metrics serve``."""
    from icefield.inspect import COST_METRICS, TABLE_STATS
    from icefield.observe.metrics import MetricsObserver

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {
        family.name + suffix
        for family in MetricsObserver().registry.collect()
        for suffix in suffixes[family.type]
    }
    names.update(f"icefield_table_{stat}" for stat in TABLE_STATS)
    names.add("icefield_table_stats_errors")
    names.update(COST_METRICS)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/grafana/generate.py", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this file's folder)")
    args = parser.parse_args(argv)
    for path in write(args.out):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
