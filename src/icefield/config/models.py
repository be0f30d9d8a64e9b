"""Typed project and pipeline configuration (pydantic, unknown keys refused)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DEFAULT_CATALOG_NAME = "icefield"
DEFAULT_BATCH_SIZE = 100_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- project (icefield.yaml)


class CatalogConfig(_Model):
    """Where table metadata lives. ``uri`` is a SQLAlchemy URL (SQLite or PostgreSQL)."""

    type: Literal["sql"] = "sql"
    name: str = DEFAULT_CATALOG_NAME
    uri: str | None = None  # default: sqlite under <project>/.icefield/catalog.db
    properties: dict[str, str] = Field(default_factory=dict)


class ProjectConfig(_Model):
    """The contents of ``icefield.yaml`` after profiles and environment overrides are applied."""

    name: str = "icefield"
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    warehouse: str = ".icefield/warehouse"
    engine: Literal["local"] = "local"
    namespace: str = "default"
    batch_size: int = Field(DEFAULT_BATCH_SIZE, gt=0)
    target_file_size_mb: int = Field(128, gt=0)
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
    """CSV, JSON Lines or Parquet files matched by a glob; incremental by the set of files loaded."""

    type: Literal["files"]
    path: str
    format: Literal["csv", "jsonl", "parquet", "auto"] = "auto"
    columns: dict[str, str] | None = None
    delimiter: str = ","
    file_column: str | None = "_source_file"

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError(f"delimiter must be one character, got {v!r}")
        return v


SourceConfig = Annotated[SqlSourceConfig | FilesSourceConfig, Field(discriminator="type")]


# ---------------------------------------------------------------- target


class TargetConfig(_Model):
    """The Iceberg table a pipeline writes and how."""

    table: str
    mode: Literal["append", "merge", "overwrite"] = "append"
    keys: list[str] = Field(default_factory=list)
    partition_by: list[str] = Field(default_factory=list)
    overwrite: Literal["partitions", "table"] | None = None
    order_by: str | None = None
    delete_column: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    # Schema contract (DESIGN.md rule 5, icefield.quality.contracts): ``evolve`` adds new columns, promotes
    # types Iceberg can widen and keeps dropped columns (nulls); ``additive-only`` adds columns only;
    # ``freeze`` refuses any change. Type changes are refused under every contract.
    contract: Literal["evolve", "additive-only", "freeze"] = "evolve"

    @field_validator("table")
    @classmethod
    def _qualified(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) < 2 or not all(IDENTIFIER.match(p) for p in parts):
            raise ValueError(f"table must be 'namespace.name' of letters, digits and '_', got {v!r}")
        return v

    @model_validator(mode="after")
    def _keys_for_merge(self) -> TargetConfig:
        if self.mode == "merge" and not self.keys:
            raise ValueError("mode 'merge' needs 'keys' (the columns that identify a row)")
        if self.mode != "merge" and (self.delete_column or self.order_by):
            raise ValueError("'delete_column' and 'order_by' only apply to mode 'merge'")
        return self


# ---------------------------------------------------------------- row checks


class RangeSpec(_Model):
    column: str
    min: float | int | str | None = None
    max: float | int | str | None = None


class AcceptedValuesSpec(_Model):
    column: str
    values: list[Any]


class RegexSpec(_Model):
    column: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression: {e}") from None
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
    """Rows for which the SQL expression is false are dropped and counted as ``filtered``."""

    filter: str


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
    batch_size: int | None = Field(None, gt=0)

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


class ModelConfig(_Model):
    """A SQL model: ``models/*.sql`` with a header naming its target table and mode."""

    name: str
    sql: str
    target: TargetConfig
    path: str
