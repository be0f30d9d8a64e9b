"""The ``window:`` block of a pipeline and the intervals a backfill takes: what they accept, how a refusal
reads (file, key, value, fix), how an interval splits into windows, and ``--window`` on the command line."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from icefield import ConfigError, load_project
from icefield.config.window import Window, parse_window

FILES_SOURCE = {"type": "files", "path": "landing/*.csv"}
TARGET = {"table": "shop.orders"}


def pipeline(window: Any, source: dict[str, Any] | None = None, target: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"source": source or dict(FILES_SOURCE), "target": target or dict(TARGET), "window": window}


def refusal(make_project, body: dict[str, Any]) -> str:
    root = make_project({"orders": body})
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    return str(info.value)


# ------------------------------------------------------------------ the window block


@pytest.mark.parametrize(("size", "seconds"), [("1d", 86_400), ("6h", 21_600), ("1h", 3_600), ("15m", 900), ("7d", 604_800), (None, 86_400)])
def test_a_window_has_a_column_and_a_size_that_falls_on_day_boundaries(make_project, size, seconds):
    window = {"column": "updated_at"} if size is None else {"column": "updated_at", "size": size}
    project = load_project(make_project({"orders": pipeline(window)}), env={})
    declared = project.pipeline("orders").window
    assert declared is not None and declared.column == "updated_at" and declared.seconds == seconds


def test_a_pipeline_without_a_window_has_none(make_project):
    project = load_project(make_project({"orders": {"source": dict(FILES_SOURCE), "target": dict(TARGET)}}), env={})
    assert project.pipeline("orders").window is None


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ({"column": "updated_at", "size": "5x"}, ["window.size", "'5x'", "'1d'"]),
        ({"column": "updated_at", "size": "7h"}, ["window.size", "'7h'", "divides a day"]),
        ({"column": "updated_at", "size": "36h"}, ["window.size", "'36h'", "whole number of days"]),
        ({"column": "updated_at", "size": 0}, ["window.size", "above zero"]),
        ({"column": "updated_at", "size": True}, ["window.size", "duration"]),
        ({"column": "updated at"}, ["window.column", "'updated at'", "letters, digits"]),
        ({"size": "1d"}, ["window.column"]),
        ({"column": "updated_at", "every": "1d"}, ["window.every"]),
    ],
)
def test_invalid_window_values_are_refused_with_file_key_value_and_fix(make_project, window, words):
    message = refusal(make_project, pipeline(window))
    assert "orders.yaml" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ({"type": "kafka", "bootstrap_servers": "127.0.0.1:9092", "topic": "t"}, TARGET),
        ({"type": "debezium", "path": "cdc/*.jsonl"}, {"table": "shop.orders", "keys": ["id"]}),
    ],
)
def test_a_stream_or_change_log_source_cannot_declare_a_window(make_project, source, target):
    message = refusal(make_project, pipeline({"column": "updated_at"}, source=source, target=dict(target)))
    assert "orders.yaml: window:" in message and f"a {source['type']} source cannot be read again by date" in message
    assert "remove the window key" in message


@pytest.mark.parametrize("target", [{"table": "shop.orders", "mode": "merge", "keys": ["id"]}, {"table": "shop.orders", "mode": "overwrite"}])
def test_only_an_append_target_can_declare_a_window(make_project, target):
    message = refusal(make_project, pipeline({"column": "updated_at"}, source={"type": "sql", "url": "sqlite:///x.db", "table": "t", "cursor": "id"}, target=target))
    assert f"target.mode is {target['mode']!r}" in message and "use target.mode append" in message


# ------------------------------------------------------------------ intervals


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-01-01..2026-01-08", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 8, tzinfo=UTC)),
        ("2026-01-01T06:00..2026-01-01T12:00", datetime(2026, 1, 1, 6, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T06:00:00Z..2026-01-02", datetime(2026, 1, 1, 6, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
        ("2026-01-01T01:00:00+01:00..2026-01-02T01:00:00+01:00", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_an_interval_is_two_iso_dates_or_timestamps_in_utc(text, start, end):
    w = parse_window(text)
    assert (w.start, w.end) == (start, end)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2026-01-01", ["START..END", "2026-01-01..2026-01-08"]),
        ("2026-01-01..", ["START..END"]),
        ("2026-13-01..2026-01-08", ["start '2026-13-01'", "ISO date"]),
        ("2026-01-01..tomorrow", ["end 'tomorrow'", "ISO date"]),
        ("2026-01-08..2026-01-01", ["empty or backwards", "end is exclusive"]),
        ("2026-01-01..2026-01-01", ["empty or backwards"]),
    ],
)
def test_a_bad_interval_is_refused_with_the_form_to_write(text, words):
    with pytest.raises(ValueError) as info:
        parse_window(text)
    for word in words:
        assert word in str(info.value)


def test_an_aligned_interval_splits_into_windows_of_the_size():
    days = parse_window("2026-01-01..2026-01-04").split(86_400)
    assert [w.label for w in days] == ["2026-01-01..2026-01-02", "2026-01-02..2026-01-03", "2026-01-03..2026-01-04"]
    hours = parse_window("2026-01-01T06:00..2026-01-01T12:00").split(6 * 3600)
    assert [w.label for w in hours] == ["2026-01-01T06:00:00Z..2026-01-01T12:00:00Z"]


@pytest.mark.parametrize(
    ("text", "size", "suggested"),
    [
        ("2026-01-01T06:00..2026-01-03", 86_400, "2026-01-01..2026-01-03"),
        ("2026-01-01..2026-01-02T01:00", 86_400, "2026-01-01..2026-01-03"),
        ("2026-01-01T00:30..2026-01-01T02:00", 3_600, "2026-01-01T00:00:00Z..2026-01-01T02:00:00Z"),
        ("2026-01-01T00:00:00.5..2026-01-02", 86_400, "2026-01-01..2026-01-02"),
    ],
)
def test_an_interval_not_on_window_boundaries_is_refused_naming_aligned_bounds(text, size, suggested):
    with pytest.raises(ValueError) as info:
        parse_window(text).split(size)
    assert "not aligned" in str(info.value) and f"e.g. {suggested}" in str(info.value)


def test_a_window_from_dates_or_naive_datetimes_is_utc():
    assert Window(date(2026, 1, 1), date(2026, 1, 2)) == Window(datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC))


def test_the_mask_keeps_start_leaves_end_and_nulls_out():
    import pyarrow as pa

    w = parse_window("2026-01-02..2026-01-03")
    naive = pa.array([datetime(2026, 1, 2), datetime(2026, 1, 2, 23, 59, 59, 999_999), datetime(2026, 1, 3), None], pa.timestamp("us"))
    assert w.mask(naive).to_pylist() == [True, True, False, False]
    aware = pa.array([datetime(2026, 1, 2, 0, 30, tzinfo=UTC), datetime(2026, 1, 1, 23, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    assert w.mask(aware).to_pylist() == [True, False]
    dates = pa.array([date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)], pa.date32())
    assert w.mask(dates).to_pylist() == [False, True, False]
    with pytest.raises(ValueError, match="cuts days"):
        parse_window("2026-01-02T06:00..2026-01-02T12:00").mask(dates)
    with pytest.raises(ValueError, match="not a date or a timestamp"):
        w.mask(pa.array(["2026-01-02"]))


# ------------------------------------------------------------------ the command line


def cli(*args: str) -> Any:
    from icefield.cli import cli as main

    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    ("value", "words"),
    [("2026-01-08..2026-01-01", ["empty or backwards"]), ("last-week", ["START..END"]), ("2026-01-01..2026-02-30", ["end '2026-02-30'"])],
)
def test_a_bad_window_on_the_command_line_exits_2_before_anything_runs(make_project, value, words):
    root = make_project({"orders": pipeline({"column": "updated_at"})})
    res = cli("--project", str(root), "run", "orders", "--window", value)
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.output


@pytest.mark.parametrize("names", [(), ("orders", "refunds"), ("nope",)])
def test_a_window_backfills_exactly_one_named_pipeline(make_project, names):
    refunds = pipeline({"column": "updated_at"}, target={"table": "shop.refunds"})
    root = make_project({"orders": pipeline({"column": "updated_at"}), "refunds": refunds})
    res = cli("--project", str(root), "run", *names, "--window", "2026-01-01..2026-01-08")
    assert res.exit_code == 2, res.output
    assert "--window backfills one pipeline" in res.output


def test_a_window_of_datetime_subclasses_holds_plain_utc_datetimes():
    """Airflow hands its data interval as pendulum datetimes (a subclass): the window holds plain ones."""
    from datetime import timedelta, timezone

    class Stamp(datetime):
        pass

    tokyo = timezone(timedelta(hours=9))
    w = Window(Stamp(2026, 1, 2, 9, tzinfo=tokyo), Stamp(2026, 1, 3, 9, tzinfo=tokyo))
    assert type(w.start) is datetime and type(w.end) is datetime
    assert w.label == "2026-01-02..2026-01-03" and w.split(86_400) == [w]
