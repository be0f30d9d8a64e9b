"""Typed gates: dataset checks a pipeline runs on the snapshot it just wrote (``docs/architecture.md``,
"The write path", rule 6).

Each gate is a mapping with exactly one kind key (``row_count``, ``freshness``, ...) plus the optional
keys ``severity`` (``error``, the default, or ``warn``) and ``name``::

    gates:
      - row_count: {min: 1}
      - null_ratio: {column: email, max: 0.01}
        severity: warn
      - references: {column: customer_id, to: shop.customers.customer_id}
      - sql: {query: "select * from {table} where amount < 0"}
        name: no_negative_amounts

A pipeline with at least one ``error`` gate writes each batch to an audit branch and publishes it to
``main`` only when every ``error`` gate passes (write-audit-publish).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icefield.config.ages import seconds_in

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ratio(v: float | None, key: str) -> float | None:
    if v is not None and not 0 <= v <= 1:
        raise ValueError(f"{key} is a ratio between 0 and 1, got {v!r}")
    return v


def duration_seconds(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds or ``<n><unit>`` with unit s, m, h, d or w (``90m``).
    Raises ValueError naming the value."""
    seconds = seconds_in(value)
    if seconds is None or (isinstance(value, str) and not value.strip()[-1:].isalpha()):  # a string names its unit
        raise ValueError(f"max_age must be a duration like '30m', '2h', '1d' or a number of seconds, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"max_age must be positive, got {value!r}")
    return seconds


# ---------------------------------------------------------------------------------------- specs


class RowCountSpec(_Spec):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> RowCountSpec:
        if self.min is None and self.max is None:
            raise ValueError("row_count needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"row_count: min {self.min} is above max {self.max}")
        return self


class FreshnessSpec(_Spec):
    column: str
    max_age: str | int | float

    @field_validator("max_age")
    @classmethod
    def _duration(cls, v: str | int | float) -> str | int | float:
        duration_seconds(v)
        return v

    @property
    def seconds(self) -> float:
        return duration_seconds(self.max_age)


class NullRatioSpec(_Spec):
    column: str
    max: float = 0.0

    @field_validator("max")
    @classmethod
    def _is_ratio(cls, v: float) -> float:
        _ratio(v, "max")
        return v


class DistinctRatioSpec(_Spec):
    """Distinct values over non-null rows (all columns non-null for several). ``min: 1`` = unique."""

    column: str | list[str]
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> DistinctRatioSpec:
        _ratio(self.min, "min")
        _ratio(self.max, "max")
        if self.min is None and self.max is None:
            raise ValueError("distinct_ratio needs 'min' (1 means unique), 'max' or both")
        if isinstance(self.column, list) and not self.column:
            raise ValueError("distinct_ratio: 'column' names at least one column")
        return self

    @property
    def columns(self) -> list[str]:
        return [self.column] if isinstance(self.column, str) else list(self.column)


class AcceptedValuesGateSpec(_Spec):
    column: str
    values: list[str | int | float | bool]
    max: int = Field(0, ge=0)

    @field_validator("values")
    @classmethod
    def _not_empty(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("accepted_values needs at least one value in 'values'")
        return v


class ReferencesSpec(_Spec):
    """Every non-null ``column`` value must exist in ``to`` (``namespace.table.column``)."""

    column: str
    to: str
    max: int = Field(0, ge=0)

    @field_validator("to")
    @classmethod
    def _qualified(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) < 3 or not all(IDENT.match(p) for p in parts):
            raise ValueError(f"'to' must be 'namespace.table.column', got {v!r}")
        return v

    @property
    def ref_table(self) -> str:
        return self.to.rsplit(".", 1)[0]

    @property
    def ref_column(self) -> str:
        return self.to.rsplit(".", 1)[1]


class SqlSpec(_Spec):
    """A DuckDB query over the snapshot (``{table}`` names it; other tables by ``namespace.table``).
    With ``min`` and/or ``max`` the query returns one number that must lie within them; without, it
    returns the failing rows and passes when it returns none."""

    query: str
    min: float | None = None
    max: float | None = None

    @property
    def scalar(self) -> bool:
        return self.min is not None or self.max is not None


class RowCountChangeSpec(_Spec):
    """Row count of the new snapshot against the snapshot before it (what ``main`` held)."""

    max_drop: float | None = None
    max_growth: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> RowCountChangeSpec:
        _ratio(self.max_drop, "max_drop")
        if self.max_drop is None and self.max_growth is None:
            raise ValueError("row_count_change needs 'max_drop' (0.5 = fail when the count halves), 'max_growth' or both")
        return self


class ExpectationsSpec(_Spec):
    """A Great Expectations (1.x) suite file, relative to the project folder."""

    suite: str


# ---------------------------------------------------------------------------------------- gates


class _Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""

    severity: Literal["error", "warn"] = "error"
    name: str | None = None

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)

    def default_name(self) -> str:
        column = getattr(self.spec, "column", None)
        if isinstance(column, list):
            column = ",".join(column)
        return f"{self.kind}({column})" if column else self.kind


class RowCountGate(_Gate):
    kind: ClassVar[str] = "row_count"
    row_count: RowCountSpec


class FreshnessGate(_Gate):
    kind: ClassVar[str] = "freshness"
    freshness: FreshnessSpec


class NullRatioGate(_Gate):
    kind: ClassVar[str] = "null_ratio"
    null_ratio: NullRatioSpec


class DistinctRatioGate(_Gate):
    kind: ClassVar[str] = "distinct_ratio"
    distinct_ratio: DistinctRatioSpec


class AcceptedValuesGate(_Gate):
    kind: ClassVar[str] = "accepted_values"
    accepted_values: AcceptedValuesGateSpec


class ReferencesGate(_Gate):
    kind: ClassVar[str] = "references"
    references: ReferencesSpec


class SqlGate(_Gate):
    kind: ClassVar[str] = "sql"
    sql: SqlSpec

    @field_validator("sql", mode="before")
    @classmethod
    def _query_string(cls, v: Any) -> Any:
        return {"query": v} if isinstance(v, str) else v


class RowCountChangeGate(_Gate):
    kind: ClassVar[str] = "row_count_change"
    row_count_change: RowCountChangeSpec


class ExpectationsGate(_Gate):
    kind: ClassVar[str] = "expectations"
    expectations: ExpectationsSpec

    def default_name(self) -> str:
        return f"expectations({self.expectations.suite})"


GATE_TYPES: dict[str, type[_Gate]] = {
    g.kind: g
    for g in (
        RowCountGate,
        FreshnessGate,
        NullRatioGate,
        DistinctRatioGate,
        AcceptedValuesGate,
        ReferencesGate,
        SqlGate,
        RowCountChangeGate,
        ExpectationsGate,
    )
}

GateConfig = (
    RowCountGate
    | FreshnessGate
    | NullRatioGate
    | DistinctRatioGate
    | AcceptedValuesGate
    | ReferencesGate
    | SqlGate
    | RowCountChangeGate
    | ExpectationsGate
)

_COMMON_KEYS = {"severity", "name"}


def parse_gates(value: Any) -> Any:
    """Dispatch each raw gate mapping to its model by its one kind key (a pydantic before-validator).
    Names default to ``kind(column)``; duplicates get ``#2``, ``#3``; two gates given the same name
    raise ValueError naming it."""
    if not isinstance(value, list):
        return value
    out: list[_Gate] = []
    for i, item in enumerate(value):
        if isinstance(item, _Gate):
            out.append(item)
            continue
        kinds = [k for k in item if k not in _COMMON_KEYS] if isinstance(item, dict) else []
        if not isinstance(item, dict) or len(kinds) != 1:
            raise ValueError(
                f"gates[{i}] must be a mapping with one gate key of {sorted(GATE_TYPES)} "
                f"(plus optional 'severity' and 'name'), got {item!r}"
            )
        (kind,) = kinds
        if kind not in GATE_TYPES:
            raise ValueError(f"gates[{i}]: unknown gate {kind!r}; use one of {sorted(GATE_TYPES)}")
        out.append(GATE_TYPES[kind].model_validate(item))
    seen: dict[str, int] = {}
    named: list[_Gate] = []
    explicit = [g.name for g in out if g.name]
    dup = sorted({n for n in explicit if explicit.count(n) > 1})
    if dup:
        raise ValueError(f"gates: the name(s) {dup} are given to more than one gate; gate names must be unique")
    taken = set(explicit)
    for g in out:
        if g.name is None:
            base = g.default_name()
            n = seen.get(base, 0) + 1
            name = base if n == 1 else f"{base}#{n}"
            while name in taken:
                n += 1
                name = f"{base}#{n}"
            seen[base] = n
            taken.add(name)
            g = g.model_copy(update={"name": name})
        named.append(g)
    return named


def blocking(gates: list[Any]) -> bool:
    """True when a failing gate must hold the batch (some gate has severity ``error``)."""
    return any(g.severity == "error" for g in gates)
