"""Great Expectations suites as gates: a GX 1.x suite file run by GX's own library (extra ``gx``).

The snapshot under audit is handed to GX as a pandas DataFrame in an ephemeral, in-memory context (no
files, no analytics, no progress bars). Every expectation of the suite gives one :class:`Outcome`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icefield.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Outcome", "load_suite", "run_suite"]

_KWARGS_NOT_THRESHOLDS = {"column", "batch_id", "result_format", "catch_exceptions", "include_config"}


@dataclass(frozen=True)
class Outcome:
    """One expectation's result: ``name`` is ``type(column)`` (``#n`` when repeated); ``value`` the observed
    value when it is a number, else the count of unexpected rows; ``error`` when GX raised evaluating it."""

    name: str
    success: bool
    value: float | None
    threshold: str
    message: str
    error: bool = False


def _import_gx() -> Any:
    try:
        with warnings.catch_warnings():
            # GX imports deprecated stdlib modules; those warnings are GX's, not the caller's to fix.
            warnings.simplefilter("ignore")
            import great_expectations as gx
    except ImportError as e:
        raise MissingDependencyError(
            "an 'expectations' gate needs Great Expectations: pip install 'icefield[gx]'"
        ) from e
    return gx


def load_suite(path: Path) -> dict[str, Any]:
    """The suite document in ``path`` (GX 1.x JSON: ``name`` and ``expectations`` of ``type``/``kwargs``).
    Raises :class:`ConfigError` naming the file and what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"expectation suite {path} does not exist; fix the 'suite' path of the gate (relative to the project folder)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"expectation suite {path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("expectations"), list):
        raise ConfigError(f"expectation suite {path}: expected a JSON object with an 'expectations' list (GX 1.x format)")
    for i, item in enumerate(doc["expectations"]):
        if not isinstance(item, dict) or "type" not in item:
            hint = " (GX 0.x 'expectation_type' is now 'type')" if isinstance(item, dict) and "expectation_type" in item else ""
            raise ConfigError(f"expectation suite {path}: expectations[{i}] needs a 'type'{hint}")
    doc.setdefault("name", path.stem)
    return doc


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def run_suite(path: Path, data: pa.Table) -> list[Outcome]:
    """Validate ``data`` against the suite in ``path`` with Great Expectations. Returns one
    :class:`Outcome` per expectation, in the suite's order.

    Raises :class:`MissingDependencyError` without the ``gx`` extra and :class:`ConfigError` for a suite
    GX cannot load (unknown expectation type, bad arguments)."""
    doc = load_suite(path)
    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from great_expectations.core.expectation_suite import ExpectationSuite
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        try:
            suite = context.suites.add(ExpectationSuite(**{k: v for k, v in doc.items() if k in ("name", "expectations", "meta", "notes")}))
        except Exception as e:  # GX raises many types for a bad suite; all mean the same to the user
            raise ConfigError(f"expectation suite {path} cannot be loaded by Great Expectations: {e}") from e
        batch = context.data_sources.add_pandas("icefield").add_dataframe_asset("snapshot").add_batch_definition_whole_dataframe("all")
        validation = context.validation_definitions.add(gx.ValidationDefinition(name="icefield", data=batch, suite=suite))
        frame = data.to_pandas()
        result = validation.run(batch_parameters={"dataframe": frame})
    outcomes: list[Outcome] = []
    seen: dict[str, int] = {}
    for r in result.results:
        cfg = r.expectation_config
        kwargs = dict(cfg.kwargs)
        column = kwargs.get("column")
        base = f"{cfg.type}({column})" if column else cfg.type
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        threshold = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k not in _KWARGS_NOT_THRESHOLDS)
        res = dict(r.result or {})
        info = r.exception_info or {}
        raised = bool(info.get("raised_exception")) if isinstance(info, dict) else False
        observed = _number(res.get("observed_value"))
        unexpected = _number(res.get("unexpected_count"))
        if raised:
            message = f"Great Expectations raised: {info.get('exception_message')}"
        elif unexpected is not None:
            total = _number(res.get("element_count"))
            sample = res.get("partial_unexpected_list") or []
            of = f" of {int(total):,}" if total is not None else ""
            message = f"{int(unexpected):,} unexpected{of} values" + (f", e.g. {sample[:5]}" if sample else "")
        else:
            message = f"observed {res.get('observed_value')!r}"
        outcomes.append(
            Outcome(
                name=name,
                success=bool(r.success),
                value=observed if observed is not None else unexpected,
                threshold=threshold,
                message=message,
                error=raised,
            )
        )
    return outcomes
