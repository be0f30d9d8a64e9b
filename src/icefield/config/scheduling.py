"""When and how a pipeline runs under a scheduler: the ``scheduling:`` block of a pipeline file and of
``icefield.yaml`` (the project's defaults), validated here without any scheduler installed.

A schedule is a cron expression of five fields (``30 6 * * MON-FRI``), a preset (``@daily``, ``@once``,
``@continuous``...), an interval (``15m``, ``1h``, ``1d``: the grammar of :mod:`icefield.config.ages`) or
``none`` (runs only when triggered). :func:`airflow_args` turns a block into the plain values of Airflow's
DAG arguments and ``default_args``, so the DAG factory parses nothing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["PRESETS", "SchedulingConfig", "airflow_args", "check_cron", "merge_scheduling", "schedule_kind"]

PRESETS: dict[str, str] = {
    "@once": "@once",
    "@continuous": "@continuous",
    "@hourly": "@hourly",
    "@daily": "@daily",
    "@midnight": "@daily",
    "@weekly": "@weekly",
    "@monthly": "@monthly",
    "@quarterly": "@quarterly",
    "@yearly": "@yearly",
    "@annually": "@yearly",
}
"""The presets a schedule may be, each to the spelling Airflow 3 takes (``@annually`` is ``@yearly``)."""

MANUAL = "none"
"""The schedule of a pipeline that runs only when triggered (by hand, the API or a backfill)."""

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, lowest, highest, names): the five fields of a cron expression, in order.
_FIELDS: list[tuple[str, int, int, dict[str, int]]] = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_DAYS)}),  # 0 and 7 are both Sunday
]
_DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
_ITEM = re.compile(r"^(?:(\*)|([A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?)(?:/(\d+))?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
TAG_MAX = 100
"""Longest tag Airflow stores (its ``dag_tag.name`` column)."""
OWNER_MAX = 100


def check_cron(expression: str) -> list[set[int]]:
    """The values each of the five fields of ``expression`` selects (minute, hour, day of month, month,
    day of week with 7 read as 0); raises ValueError naming the field, the part and the fix."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), this one has {len(fields)}; "
            "write e.g. '30 6 * * MON-FRI', or use a preset (@daily, @hourly...) or an interval ('15m', '1h')"
        )
    selected = [_cron_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True)]
    dom, months, dow = selected[2], selected[3], selected[4]
    # A day of month no chosen month has never comes (30 2 * is February 30th), unless the day of week
    # is restricted too: cron then runs on either.
    if fields[4] == "*" and fields[2] != "*" and min(dom) > max(_DAYS_IN_MONTH[m - 1] for m in months):
        raise ValueError(
            f"day of month {fields[2]!r} never occurs in month {fields[3]!r}, so the schedule never runs; "
            "pick days that month has"
        )
    selected[4] = {d % 7 for d in dow}
    return selected


def _cron_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    def value(token: str) -> int:
        if token.isdigit():
            n = int(token)
        elif token.upper() in names:
            n = names[token.upper()]
        else:
            spelled = f" or a name ({', '.join(names)})" if names else ""
            raise ValueError(f"{name} {token!r} is not a number from {low} to {high}{spelled}")
        if not low <= n <= high:
            raise ValueError(f"{name} {n} is out of range: give {low} to {high}")
        return n

    out: set[int] = set()
    for item in text.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(
                f"{name} field {text!r}: {item!r} is not '*', a value, a range 'a-b' or either with a step '/n'; "
                "list several with commas (L, W, # and ? are not supported)"
            )
        star, first, last, step = m.groups()
        start, end = (low, high) if star else (value(first), value(last) if last else (high if step else value(first)))
        if start > end:
            raise ValueError(f"{name} range {item!r} runs backwards; write it low to high, or as two parts '{first}-{high},{low}-{last}'")
        by = int(step) if step else 1
        if by < 1 or by > high - low + 1:
            raise ValueError(f"{name} step '/{step}' in {item!r} must be from 1 to {high - low + 1}")
        out.update(range(start, end + 1, by))
    return out


def _seconds(value: object) -> float | None:
    from icefield.config.ages import seconds_in

    return seconds_in(value)


def schedule_kind(schedule: str) -> str:
    """``"manual"``, ``"preset"``, ``"interval"`` or ``"cron"``: what a validated schedule is."""
    if schedule == MANUAL:
        return "manual"
    if schedule.startswith("@"):
        return "preset"
    if len(schedule.split()) == 1:
        return "interval"
    return "cron"


class SchedulingConfig(BaseModel):
    """The ``scheduling:`` block. Every key is optional: a pipeline's keys win over the project's, key by
    key (``tags`` included: a pipeline's list replaces the project's), and a key set by neither is left to
    the scheduler's own default.

    ``schedule``: cron, preset, interval or ``none`` (see the module). ``retries``: further attempts after a
    failed run (a transient failure; a configuration error is never retried). ``retry_delay``: the wait
    before a retry; with ``retry_exponential_backoff`` it doubles at each attempt, up to
    ``max_retry_delay``. ``timeout``: the longest a run may take before it is stopped and failed.
    ``deadline``: the time after the run's scheduled time by which it must have finished, else an alert.
    ``owner``: who answers for the pipeline; ``tags``: labels to find it by. Durations are ``30s``, ``5m``,
    ``2h``, ``1d``, ``1w`` or a number of seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str | None = None
    retries: int | None = None
    retry_delay: str | None = None
    retry_exponential_backoff: bool | None = None
    max_retry_delay: str | None = None
    timeout: str | None = None
    deadline: str | None = None
    owner: str | None = None
    tags: list[str] | None = None

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, v: Any) -> Any:
        if v is None:
            return MANUAL  # an explicit null: runs only when triggered (an absent key inherits)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError(
                "schedule must be a cron expression ('30 6 * * *'), a preset (@daily...), an interval ('15m') or none"
            )
        text = str(v).strip()
        if text.lower() in (MANUAL, "manual"):
            return MANUAL
        if text.startswith("@"):
            if text.lower() not in PRESETS:
                raise ValueError(f"unknown preset {text!r}; use one of {', '.join(PRESETS)}, a cron expression or an interval")
            return PRESETS[text.lower()]
        if len(text.split()) == 1 and not text.startswith("*"):
            seconds = _seconds(text)
            if seconds is None or seconds <= 0:
                raise ValueError(
                    f"{text!r} is not an interval; give a duration above zero such as '15m', '1h' or '1d', "
                    "a cron expression of 5 fields, a preset (@daily...) or none"
                )
            return text
        check_cron(text)
        return " ".join(text.split())

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("retries must be a whole number of further attempts, 0 or more (e.g. 3)")
        return v

    @field_validator("retries")
    @classmethod
    def _not_negative(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("retries must be 0 or more (0: a failed run is not retried)")
        return v

    @field_validator("retry_delay", "max_retry_delay", "timeout", "deadline", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is None:
            return v
        seconds = _seconds(v)
        if seconds is None:
            raise ValueError("not a duration; give one like '30s', '5m', '2h', '1d' or a number of seconds")
        return str(v).strip()

    @field_validator("timeout", "deadline")
    @classmethod
    def _above_zero(cls, v: str | None) -> str | None:
        if v is not None and not _seconds(v):
            raise ValueError("must be above zero; give e.g. '30m' or '2h', or remove the key for none")
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or len(v) > OWNER_MAX or any(ord(c) < 32 for c in v)):
            raise ValueError(f"owner must be a name of 1 to {OWNER_MAX} characters on one line, e.g. data-team")
        return v.strip() if v is not None else v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for tag in v:
            if not _TAG.match(tag) or len(tag) > TAG_MAX:
                raise ValueError(
                    f"tag {tag!r} is not a short label: letters, digits and '_', '-', '.', ':', '/' "
                    f"(starting with a letter or digit, at most {TAG_MAX} characters)"
                )
        seen = [t for i, t in enumerate(v) if t in v[:i]]
        if seen:
            raise ValueError(f"tag {seen[0]!r} is listed twice; list each tag once")
        return v

    @model_validator(mode="after")
    def _delays(self) -> SchedulingConfig:
        _check_order(self)
        return self


def _check_order(s: SchedulingConfig) -> None:
    if s.max_retry_delay is not None and s.retry_delay is not None and (_seconds(s.max_retry_delay) or 0) < (_seconds(s.retry_delay) or 0):
        raise ValueError(
            f"max_retry_delay {s.max_retry_delay!r} is shorter than retry_delay {s.retry_delay!r}; "
            "make it at least as long as retry_delay"
        )


def check_delays(s: SchedulingConfig) -> None:
    """The keys that only make sense together, checked on a pipeline's effective block (its own keys over
    the project's defaults): raises ValueError with the fix."""
    _check_order(s)
    if s.max_retry_delay is not None and s.retry_exponential_backoff is not True:
        raise ValueError(
            "max_retry_delay caps the delays of retry_exponential_backoff; set retry_exponential_backoff: true, "
            "or remove max_retry_delay"
        )


def merge_scheduling(defaults: SchedulingConfig, own: SchedulingConfig) -> SchedulingConfig:
    """``own``'s keys over ``defaults``' (the project's), key by key; raises ValueError if the result does
    not hold together (see :func:`check_delays`)."""
    merged = SchedulingConfig.model_construct(**{**defaults.model_dump(exclude_unset=True), **own.model_dump(exclude_unset=True)})
    check_delays(merged)
    return merged


def airflow_args(s: SchedulingConfig) -> dict[str, Any]:
    """The values of Airflow 3's DAG arguments for ``s``, as plain Python (no Airflow import):

    - ``schedule``: the cron expression or preset as text, an interval as a :class:`~datetime.timedelta`,
      None for a manual pipeline; absent when ``s`` has no schedule (the caller's default applies);
    - ``tags``: a list (absent when none are set);
    - ``default_args``: ``owner``, ``retries``, ``retry_delay``, ``retry_exponential_backoff``,
      ``max_retry_delay``, ``execution_timeout`` (timedeltas for durations), only those that are set;
    - ``deadline``: a timedelta after the run's logical date (for a ``DeadlineAlert`` on
      ``DeadlineReference.DAGRUN_LOGICAL_DATE``), absent when none is set.
    """
    out: dict[str, Any] = {}
    if s.schedule is not None:
        kind = schedule_kind(s.schedule)
        out["schedule"] = None if kind == "manual" else _delta(s.schedule) if kind == "interval" else s.schedule
    if s.tags is not None:
        out["tags"] = list(s.tags)
    default_args: dict[str, Any] = {}
    if s.owner is not None:
        default_args["owner"] = s.owner
    if s.retries is not None:
        default_args["retries"] = s.retries
    if s.retry_delay is not None:
        default_args["retry_delay"] = _delta(s.retry_delay)
    if s.retry_exponential_backoff is not None:
        default_args["retry_exponential_backoff"] = s.retry_exponential_backoff
    if s.max_retry_delay is not None:
        default_args["max_retry_delay"] = _delta(s.max_retry_delay)
    if s.timeout is not None:
        default_args["execution_timeout"] = _delta(s.timeout)
    out["default_args"] = default_args
    if s.deadline is not None:
        out["deadline"] = _delta(s.deadline)
    return out


def _delta(duration: str) -> timedelta:
    seconds = _seconds(duration)
    assert seconds is not None  # validated
    return timedelta(seconds=seconds)
