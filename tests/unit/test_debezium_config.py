"""The ``debezium`` source's type settings (issue 14): ``numeric`` (the type of unconstrained numeric
columns), ``connector`` (how the connector encodes values) and ``columns`` (PostgreSQL types for events
without the embedded schema), validated when the project loads, with errors that name the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from icefield import ConfigError, load_project


def source(**settings: Any) -> dict[str, Any]:
    return {"source": {"type": "debezium", "path": "cdc/*.jsonl", **settings}, "target": {"table": "cdc.t", "keys": ["id"]}}


def loaded(make_project: Any, **settings: Any) -> Any:
    return load_project(make_project({"t": source(**settings)}), env={}).pipeline("t").source


def refused(make_project: Any, **settings: Any) -> str:
    root: Path = make_project({"t": source(**settings)})
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    return str(info.value)


def test_defaults(make_project: Any) -> None:
    cfg = loaded(make_project)
    assert cfg.numeric.default == "decimal(38,18)" and cfg.numeric.columns == {}
    assert (cfg.connector.decimal_handling_mode, cfg.connector.time_precision_mode, cfg.connector.interval_handling_mode) == ("precise", "adaptive", "numeric")
    assert cfg.postgres_types == {} and cfg.connector.unavailable_value_placeholder == "__debezium_unavailable_value"


def test_settings_are_read_as_the_connector_spells_them(make_project: Any) -> None:
    cfg = loaded(
        make_project,
        numeric={"default": "String", "columns": {"ratio": "DECIMAL( 20 , 4 )"}},
        connector={"decimal.handling.mode": "string", "time.precision.mode": "connect", "interval.handling.mode": "string"},
        postgres_types={"amount": "numeric(10,2)", "at": "timestamp(3) with time zone", "tags": "text[]"},
    )
    assert cfg.numeric.default == "string" and cfg.numeric.columns == {"ratio": "decimal(20,4)"}
    assert (cfg.connector.decimal_handling_mode, cfg.connector.time_precision_mode) == ("string", "connect")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"numeric": {"default": "decimal(39,2)"}}, ["numeric", "'decimal(39,2)'", "1 <= P <= 38"]),
        ({"numeric": {"default": "double"}}, ["'double'", "'string'"]),
        ({"numeric": {"columns": {"ratio": "decimal(4,5)"}}}, ["ratio", "'decimal(4,5)'", "0 <= S <= P"]),
        ({"numeric": {"defualt": "string"}}, ["defualt"]),
        ({"connector": {"decimal.handling.mode": "exact"}}, ["decimal.handling.mode", "'precise', 'double' or 'string'"]),
        ({"connector": {"binary.handling.mode": "hex"}}, ["binary.handling.mode"]),
        ({"postgres_types": {"amount": "money(2)x"}}, ["amount", "money(2)x"]),
        ({"postgres_types": {"blob": "blob"}}, ["blob", "not one icefield knows", "bytea"]),
        ({"postgres_types": {"at": "timestamp(9)"}}, ["at", "from 0 to 6"]),
    ],
)
def test_bad_settings_are_refused_naming_the_key_the_value_and_the_fix(make_project: Any, settings: dict[str, Any], expected: list[str]) -> None:
    message = refused(make_project, **settings)
    for part in expected:
        assert part in message, message
