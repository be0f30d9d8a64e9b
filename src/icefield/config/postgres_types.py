"""PostgreSQL type names as a pipeline declares them (``source.postgres_types`` of a ``debezium`` source):
``numeric(10,2)``, ``timestamp(3) with time zone``, ``text[]``. Parsed when the configuration loads; what
the connector makes of each type is :mod:`icefield.ingest.debezium_pgtypes`."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PostgresType", "parse_postgres_type"]

# Canonical name -> the names PostgreSQL (and its users) spell it with.
_ALIASES = {
    "smallint": ("smallint", "int2", "smallserial"),
    "integer": ("integer", "int", "int4", "serial"),
    "bigint": ("bigint", "int8", "bigserial", "oid"),
    "real": ("real", "float4"),
    "double precision": ("double precision", "float8", "float"),
    "numeric": ("numeric", "decimal"),
    "money": ("money",),
    "boolean": ("boolean", "bool"),
    "text": ("text", "varchar", "character varying", "char", "character", "bpchar", "name", "citext",
             "inet", "cidr", "macaddr", "macaddr8", "tsvector", "ltree", "int4range", "int8range", "numrange",
             "tsrange", "tstzrange", "daterange"),
    "bytea": ("bytea",),
    "uuid": ("uuid",),
    "json": ("json", "jsonb"),
    "xml": ("xml",),
    "enum": ("enum",),
    "date": ("date",),
    "time": ("time", "time without time zone"),
    "timetz": ("timetz", "time with time zone"),
    "timestamp": ("timestamp", "timestamp without time zone"),
    "timestamptz": ("timestamptz", "timestamp with time zone"),
    "interval": ("interval",),
}  # fmt: skip
_CANONICAL = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_TYPE = re.compile(r"^\s*(?P<name>[a-z][a-z0-9 ]*)\s*(?:\(\s*(?P<args>[0-9 ,]*)\))?(?P<rest>[a-z ]*?)\s*(?P<array>(\[\s*\])*)\s*$")


@dataclass(frozen=True)
class PostgresType:
    """A parsed PostgreSQL type: its canonical ``name``, the modifiers (``numeric(p, s)``, ``time(p)``) and
    whether it is an array."""

    name: str
    args: tuple[int, ...] = ()
    array: bool = False


def parse_postgres_type(text: str) -> PostgresType:
    """``numeric(10,2)``, ``timestamp(3) with time zone``, ``text[]``... as a :class:`PostgresType`.
    Raises ValueError naming the type and the accepted names."""
    m = _TYPE.match(text.lower()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a PostgreSQL type name such as numeric(10,2), timestamp(3) or text[]")
    name = " ".join((m.group("name") + " " + (m.group("rest") or "")).split())
    args = tuple(int(a) for a in (m.group("args") or "").replace(" ", "").split(",") if a)
    canonical = _CANONICAL.get(name)
    if canonical is None:
        raise ValueError(f"PostgreSQL type {text!r} is not one icefield knows; use one of {', '.join(sorted(_CANONICAL))} (with [] for an array)")
    if canonical == "numeric" and (len(args) > 2 or (args and not (1 <= args[0] <= 1000 and (len(args) == 1 or 0 <= args[1] <= args[0])))):
        raise ValueError(f"PostgreSQL type {text!r}: numeric takes (precision) or (precision, scale) with 0 <= scale <= precision <= 1000")
    if canonical in ("time", "timetz", "timestamp", "timestamptz", "interval") and (len(args) > 1 or (args and args[0] > 6)):
        raise ValueError(f"PostgreSQL type {text!r}: a time precision is one number from 0 to 6")
    return PostgresType(canonical, args, bool(m.group("array")))
