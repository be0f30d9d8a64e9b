"""The ``scheduling:`` block of pipelines and of ``icefield.yaml``: what it accepts, how a refusal reads
(file, key, value, fix), the project's defaults, and the Airflow arguments it becomes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from icefield import ConfigError, load_project
from icefield.config.scheduling import SchedulingConfig, airflow_args, check_cron

FILES_SOURCE = {"type": "files", "path": "landing/*.csv"}
TARGET = {"table": "shop.orders"}


def pipeline(**scheduling: Any) -> dict[str, Any]:
    return {"source": dict(FILES_SOURCE), "target": dict(TARGET), "scheduling": scheduling}


def refusal(make_project, pipelines: dict[str, dict[str, Any]], project: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> str:
    root = make_project(pipelines, project=project)
    with pytest.raises(ConfigError) as info:
        load_project(root, env=env or {})
    return str(info.value)


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    ("given", "kept", "kind"),
    [
        ("30 6 * * MON-FRI", "30 6 * * MON-FRI", "cron"),
        ("*/15  *  * * *", "*/15 * * * *", "cron"),
        ("0 0,12 1-15/2 jan,jul sun", "0 0,12 1-15/2 jan,jul sun", "cron"),
        ("5/20 * * * 7", "5/20 * * * 7", "cron"),
        ("@daily", "@daily", "preset"),
        ("@ANNUALLY", "@yearly", "preset"),
        ("@once", "@once", "preset"),
        ("@continuous", "@continuous", "preset"),
        ("15m", "15m", "interval"),
        ("1d", "1d", "interval"),
        (None, None, "manual"),
        ("none", None, "manual"),
    ],
)
def test_a_schedule_is_cron_preset_interval_or_none(make_project, given, kept, kind):
    project = load_project(make_project({"orders": pipeline(schedule=given)}), env={})
    args = airflow_args(project.pipeline("orders").scheduling)
    if kind == "interval":
        assert args["schedule"] == {"15m": timedelta(minutes=15), "1d": timedelta(days=1)}[given]
    else:
        assert args["schedule"] == kept


def test_cron_fields_select_the_values_cron_runs_at():
    minute, hour, dom, month, dow = check_cron("*/20 9-17/4 1,15 1 *")
    assert minute == {0, 20, 40} and hour == {9, 13, 17} and dom == {1, 15} and month == {1} and dow == set(range(7))
    assert check_cron("0 0 * * 7")[4] == {0}  # 7 is Sunday, as 0
    assert check_cron("0 0 * * MON-FRI")[4] == {1, 2, 3, 4, 5}


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ("61 * * * *", "minute 61 is out of range: give 0 to 59"),
        ("0 24 * * *", "hour 24 is out of range: give 0 to 23"),
        ("0 0 0 * *", "day of month 0 is out of range: give 1 to 31"),
        ("0 0 * 13 *", "month 13 is out of range: give 1 to 12"),
        ("0 0 * * 8", "day of week 8 is out of range: give 0 to 7"),
        ("0 0 * FOO *", "month 'FOO' is not a number from 1 to 12 or a name (JAN"),
        ("0 0 * * MONDAY", "day of week 'MONDAY' is not a number"),
        ("0 0 * *", "a cron expression has 5 fields"),
        ("0 0 * * * *", "this one has 6"),
        ("0 17-9 * * *", "hour range '17-9' runs backwards"),
        ("*/0 * * * *", "minute step '/0' in '*/0' must be from 1 to 60"),
        ("0 0 L * *", "day of month 'L' is not a number"),
        ("0 0 * * 5#3", "is not '*', a value, a range"),
        ("0 0 30 2 *", "never occurs in month '2'"),
        ("@fortnightly", "unknown preset '@fortnightly'; use one of @once"),
        ("soon", "'soon' is not an interval; give a duration above zero such as '15m'"),
        ("0m", "'0m' is not an interval"),
    ],
)
def test_a_bad_schedule_is_refused_with_file_key_value_and_fix(make_project, schedule, says):
    msg = refusal(make_project, {"orders": pipeline(schedule=schedule)})
    assert "orders.yaml: scheduling.schedule:" in msg
    assert says in msg
    assert f"(got {schedule!r})" in msg


# ------------------------------------------------------------------ the other keys


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("retries", -1, "retries must be 0 or more"),
        ("retries", True, "retries must be a whole number"),
        ("retries", 2.5, "retries must be a whole number"),
        ("retry_delay", "soon", "not a duration; give one like '30s', '5m'"),
        ("retry_delay", -5, "not a duration"),
        ("timeout", "0s", "must be above zero"),
        ("deadline", "2 hours", "not a duration"),
        ("owner", "", "owner must be a name of 1 to 100 characters"),
        ("owner", "a\nb", "owner must be a name"),
        ("tags", ["ok", "not ok"], "tag 'not ok' is not a short label"),
        ("tags", ["daily", "daily"], "tag 'daily' is listed twice; list each tag once"),
        ("tags", ["x" * 101], "at most 100 characters"),
        ("retry_exponential_backoff", "sometimes", "valid boolean"),
    ],
)
def test_a_bad_value_is_refused_with_file_key_value_and_fix(make_project, key, value, says):
    msg = refusal(make_project, {"orders": pipeline(**{key: value})})
    assert f"orders.yaml: scheduling.{key}" in msg
    assert says in msg
    assert repr(value)[:40] in msg


def test_an_unknown_key_is_refused_with_the_allowed_keys(make_project):
    msg = refusal(make_project, {"orders": pipeline(retry=3)})
    assert "orders.yaml: scheduling.retry: unknown key" in msg
    assert "retries, retry_delay, retry_exponential_backoff, max_retry_delay, timeout, deadline, owner, tags" in msg


def test_max_retry_delay_needs_backoff_and_at_least_the_retry_delay(make_project):
    msg = refusal(make_project, {"orders": pipeline(retry_delay="5m", max_retry_delay="1h")})
    assert "orders.yaml: scheduling:" in msg and "set retry_exponential_backoff: true" in msg
    msg = refusal(make_project, {"orders": pipeline(retry_delay="5m", retry_exponential_backoff=True, max_retry_delay="1m")})
    assert "max_retry_delay '1m' is shorter than retry_delay '5m'; make it at least as long" in msg


def test_a_full_block_becomes_airflow_arguments(make_project):
    body = pipeline(
        schedule="0 6 * * *",
        retries=3,
        retry_delay="2m",
        retry_exponential_backoff=True,
        max_retry_delay="30m",
        timeout="1h",
        deadline="3h",
        owner="data-team",
        tags=["shop", "daily"],
    )
    scheduling = load_project(make_project({"orders": body}), env={}).pipeline("orders").scheduling
    assert airflow_args(scheduling) == {
        "schedule": "0 6 * * *",
        "tags": ["shop", "daily"],
        "default_args": {
            "owner": "data-team",
            "retries": 3,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=30),
            "execution_timeout": timedelta(hours=1),
        },
        "deadline": timedelta(hours=3),
    }


def test_no_block_leaves_every_argument_to_the_scheduler(make_project):
    body = {"source": dict(FILES_SOURCE), "target": dict(TARGET)}
    scheduling = load_project(make_project({"orders": body}), env={}).pipeline("orders").scheduling
    assert airflow_args(scheduling) == {"default_args": {}}


def test_durations_take_numbers_of_seconds():
    args = airflow_args(SchedulingConfig(retry_delay=90, timeout=3600.5))  # type: ignore[arg-type]
    assert args["default_args"] == {"retry_delay": timedelta(seconds=90), "execution_timeout": timedelta(seconds=3600.5)}


# ------------------------------------------------------------------ the project's defaults


def test_pipelines_inherit_the_projects_defaults_key_by_key(make_project):
    project = {"name": "p", "scheduling": {"schedule": "@daily", "retries": 2, "retry_delay": "1m", "owner": "data-team", "tags": ["shop"]}}
    loaded = load_project(
        make_project(
            {"orders": pipeline(retries=5, tags=["orders"]), "plain": {"source": dict(FILES_SOURCE), "target": {"table": "shop.plain"}}},
            project=project,
        ),
        env={},
    )
    orders = airflow_args(loaded.pipeline("orders").scheduling)
    assert orders["schedule"] == "@daily"
    assert orders["tags"] == ["orders"]  # a pipeline's list replaces the project's
    assert orders["default_args"] == {"owner": "data-team", "retries": 5, "retry_delay": timedelta(minutes=1)}
    plain = airflow_args(loaded.pipeline("plain").scheduling)
    assert plain["tags"] == ["shop"] and plain["default_args"]["retries"] == 2


def test_a_pipeline_opts_out_of_the_projects_schedule_with_none(make_project):
    root = make_project({"orders": pipeline(schedule=None)}, project={"name": "p", "scheduling": {"schedule": "@hourly"}})
    assert airflow_args(load_project(root, env={}).pipeline("orders").scheduling)["schedule"] is None


def test_a_bad_project_default_names_the_project_file(make_project):
    msg = refusal(make_project, {}, project={"name": "p", "scheduling": {"retries": -2}})
    assert "icefield.yaml: scheduling.retries: retries must be 0 or more" in msg and "(got -2)" in msg


def test_a_pipeline_that_clashes_with_the_defaults_names_both(make_project):
    project = {"name": "p", "scheduling": {"retry_delay": "10m", "retry_exponential_backoff": True}}
    msg = refusal(make_project, {"orders": pipeline(max_retry_delay="5m")}, project=project)
    assert "orders.yaml: scheduling (with the defaults of icefield.yaml's scheduling):" in msg
    assert "max_retry_delay '5m' is shorter than retry_delay '10m'" in msg and "(got {'max_retry_delay': '5m'})" in msg
    # The default's backoff counts: the pipeline need not repeat it.
    root = make_project({"orders": pipeline(max_retry_delay="1h")}, project=project)
    args = airflow_args(load_project(root, env={}).pipeline("orders").scheduling)["default_args"]
    assert args["retry_exponential_backoff"] is True and args["max_retry_delay"] == timedelta(hours=1)


def test_an_environment_variable_sets_a_default(make_project):
    root = make_project({"orders": pipeline()})
    loaded = load_project(root, env={"ICEFIELD__SCHEDULING__RETRIES": "4"})
    assert airflow_args(loaded.pipeline("orders").scheduling)["default_args"] == {"retries": 4}
    msg = refusal(make_project, {"orders": pipeline()}, env={"ICEFIELD__SCHEDULING__RETRIES": "-1"})
    assert "ICEFIELD__SCHEDULING__RETRIES: scheduling.retries: retries must be 0 or more" in msg


def test_an_unquoted_cron_expression_is_refused_with_the_quoting_fix(make_project):
    root = make_project({"orders": {"source": dict(FILES_SOURCE), "target": dict(TARGET)}})
    (root / "pipelines" / "orders.yaml").write_text(
        "name: orders\nsource: {type: files, path: 'landing/*.csv'}\ntarget: {table: shop.orders}\n"
        "scheduling:\n  schedule: */15 * * * *\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    msg = str(info.value)
    assert "orders.yaml: not valid YAML" in msg and "*/15 * * * *" in msg
    assert "must be quoted: schedule: \"*/15 * * * *\"" in msg
