"""Backfill by date window: the ``window:`` block of a pipeline file, and the intervals a run is given.

A pipeline that declares ``window: {column: updated_at, size: 1d}`` can be run for an interval
``[start, end)`` (``icefield run NAME --window 2026-01-01..2026-01-08``, or
``run_pipeline(..., window=Window(start, end))``): the run reads exactly the rows whose ``column`` lies in
the interval, ignoring the regular run's position, and replaces exactly those rows of the table. The
interval must be aligned to ``size`` (its start and end fall on multiples of ``size`` counted from
1970-01-01T00:00Z: midnight UTC for ``1d``, the hour for ``1h``); it is split into windows of ``size``,
each replaced in one Iceberg commit of its own. An interval that is not aligned is refused (widening it
would replace rows that were not asked for). Bounds are UTC: a date is its midnight, a timestamp without
an offset is read as UTC. See ``docs/backfill.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["DAY", "SUMMARY_WINDOW", "SUMMARY_WINDOW_COLUMN", "Window", "WindowConfig", "parse_window", "size_seconds"]

DAY = 86_400
SUMMARY_WINDOW = "icefield.window"
"""The snapshot summary entry of a window's commit: the window it replaced (``2026-01-01..2026-01-02``)."""
SUMMARY_WINDOW_COLUMN = "icefield.window-column"
"""The snapshot summary entry naming the column the window was cut on."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def size_seconds(size: str) -> int:
    """Whole seconds in a window size (``1d``, ``6h``, ``15m``); raises ValueError naming the fix when it is
    not a duration above zero that divides a day or is a whole number of days."""
    from icefield.config.ages import seconds_in

    seconds = seconds_in(size)
    if seconds is None or isinstance(size, bool):
        raise ValueError(f"size {size!r} is not a duration; give one like '1d', '6h' or '1h'")
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"size {size!r} must be a whole number of seconds above zero, e.g. '1d' or '1h'")
    n = int(seconds)
    if DAY % n and n % DAY:
        raise ValueError(
            f"size {size!r} neither divides a day nor is a whole number of days, so windows would not fall on "
            "day boundaries; use e.g. '1h', '6h', '1d' or '7d'"
        )
    return n


class WindowConfig(BaseModel):
    """The ``window:`` block: ``column`` is the date or timestamp column a window is cut on (it must exist
    in the source and the table with a date or timestamp type: checked when a window runs); ``size`` the
    length of one window and of the alignment of the intervals a run accepts (default ``1d``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    size: str = "1d"

    @field_validator("column")
    @classmethod
    def _column(cls, v: str) -> str:
        if not _COLUMN.match(v):
            raise ValueError(f"column {v!r} is not a column name: letters, digits and '_' (e.g. updated_at)")
        return v

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError("size must be a duration such as '1d', '6h' or '1h'")
        size_seconds(str(v).strip())
        return str(v).strip()

    @property
    def seconds(self) -> int:
        return size_seconds(self.size)


@dataclass(frozen=True)
class Window:
    """An interval ``[start, end)`` of UTC instants (timezone-aware datetimes; a naive one is read as UTC,
    a :class:`~datetime.date` as its midnight). Build one from text with :func:`parse_window`."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _instant(self.start, "start"))
        object.__setattr__(self, "end", _instant(self.end, "end"))
        if self.end <= self.start:
            raise ValueError(
                f"window {self.label} is empty or backwards: its end must be after its start (the end is exclusive, "
                "e.g. 2026-01-01..2026-01-02 is the 1st of January)"
            )

    @property
    def label(self) -> str:
        """``start..end``: dates when both are midnights, else ISO timestamps in UTC (``Z``)."""
        return f"{_text(self.start, self.end)}..{_text(self.end, self.start)}"

    def mask(self, values: Any) -> Any:
        """Which of ``values`` (a pyarrow array or chunked array of dates or timestamps) lie in the window,
        as a boolean array without nulls (a null is in no window). A timestamp without time zone is compared
        as UTC wall-clock time, a date with the window's dates. Raises ValueError naming the fix when the
        values are not dates or timestamps, or are dates and the window cuts a day."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = values.type
        if pa.types.is_timestamp(t):
            lo: Any = self.start if t.tz is not None else self.start.replace(tzinfo=None)
            hi: Any = self.end if t.tz is not None else self.end.replace(tzinfo=None)
        elif pa.types.is_date(t):
            if self.start.time() != datetime.min.time() or self.end.time() != datetime.min.time():
                raise ValueError(f"the column holds dates, and window {self.label} cuts days; make window.size whole days (e.g. 1d)")
            lo, hi = self.start.date(), self.end.date()
        else:
            raise ValueError(f"the column is {t}, not a date or a timestamp: a window is cut on a date or timestamp column")
        inside = pc.fill_null(pc.and_(pc.greater_equal(values, pa.scalar(lo, type=t)), pc.less(values, pa.scalar(hi, type=t))), False)
        return inside.combine_chunks() if isinstance(inside, pa.ChunkedArray) else inside

    def split(self, size: int) -> list[Window]:
        """The windows of ``size`` seconds that make up this one, in order. Raises ValueError naming the
        nearest aligned bounds when the start or the end is not on a multiple of ``size`` (see the module)."""
        bad = [(name, t) for name, t in (("start", self.start), ("end", self.end)) if _since_epoch(t) % size or t.microsecond]
        if bad:
            def floor(t: datetime) -> datetime:
                return _EPOCH + timedelta(seconds=_since_epoch(t) // size * size)

            lo, hi = floor(self.start), floor(self.end)
            if hi < self.end:
                hi += timedelta(seconds=size)
            aligned = Window(lo, hi).label
            names = " and ".join(f"{n} {_text(t, t)}" for n, t in bad)
            raise ValueError(
                f"window {self.label} is not aligned to the pipeline's window size ({_duration(size)}): its {names} "
                f"falls inside a window; give bounds on window boundaries, e.g. {aligned}"
            )
        step = timedelta(seconds=size)
        out, t = [], self.start
        while t < self.end:
            out.append(Window(t, t + step))
            t += step
        return out


def parse_window(text: str) -> Window:
    """The interval of ``START..END`` (ISO dates or timestamps, end exclusive; a timestamp without an
    offset is UTC): ``2026-01-01..2026-01-08``, ``2026-01-01T06:00..2026-01-01T12:00``. Raises ValueError
    naming the value and the form to write."""
    parts = str(text).split("..")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(
            f"window {text!r} is not START..END; write two ISO dates or timestamps joined by '..', the end "
            "exclusive, e.g. 2026-01-01..2026-01-08"
        )
    bounds = []
    for name, part in zip(("start", "end"), parts, strict=True):
        p = part.strip()
        try:
            value: date | datetime = date.fromisoformat(p) if len(p) == 10 else datetime.fromisoformat(p.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"window {text!r}: {name} {p!r} is not an ISO date or timestamp; write e.g. 2026-01-01 or 2026-01-01T06:00:00Z"
            ) from None
        bounds.append(value)
    return Window(bounds[0], bounds[1])  # type: ignore[arg-type]


def _instant(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        # A plain datetime, whatever subclass came in (Airflow's data intervals are pendulum's).
        d = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"window {name} {value!r} is not a date or datetime")


def _since_epoch(t: datetime) -> int:
    """Whole seconds from 1970-01-01T00:00Z to ``t`` (its fraction of a second left out)."""
    delta = t - _EPOCH
    return delta.days * DAY + delta.seconds


def _text(t: datetime, other: datetime) -> str:
    if t.time() == datetime.min.time() and other.time() == datetime.min.time():
        return t.date().isoformat()
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "") + "Z"


def _duration(seconds: int) -> str:
    for unit, n in (("d", DAY), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"
