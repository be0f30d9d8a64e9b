"""Ages such as ``7d``, ``12h``, ``30m`` (snapshot expiry, waits): parsed where the configuration is
validated and by the commands that take one, without loading the writer."""

from __future__ import annotations

import re

from icefield.errors import ConfigError

__all__ = ["DEFAULT_AGE", "DEFAULT_ORPHAN_AGE", "parse_age", "seconds_in"]

DEFAULT_AGE = "7d"
"""The age of the snapshots ``icefield expire`` removes when none is given."""

DEFAULT_ORPHAN_AGE = "3d"
"""The age guard of ``icefield orphans`` when none is given: far longer than any commit takes, so the files
of a commit in flight are never taken."""

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds_in(value: object) -> float | None:
    """Seconds in ``value``: a number of seconds (not negative) or ``<n><unit>`` with unit s, m, h, d or w
    (``90m``); None when it is neither. The one grammar of ages and durations (expiry, waits, gates)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    m = _AGE.match(str(value))
    return float(m.group(1)) * _UNIT[m.group(2)] if m is not None else None


def parse_age(value: str | int | float) -> float:
    """Seconds in an age such as ``7d``, ``12h``, ``30m``, ``0`` (a number alone is seconds)."""
    seconds = seconds_in(value)
    if seconds is None:
        raise ConfigError(f"older_than={value!r} is not an age; give one like '7d', '12h', '30m' or '0' (seconds)")
    return seconds
