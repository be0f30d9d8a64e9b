"""Running pipelines and models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icefield.pipeline.models import run_model
    from icefield.pipeline.plan import Node, Plan, PlanResult, build_plan, run_plan
    from icefield.pipeline.results import BatchResult, CheckResult, RunResult
    from icefield.pipeline.runner import run_pipeline

__all__ = [
    "BatchResult",
    "CheckResult",
    "Node",
    "Plan",
    "PlanResult",
    "RunResult",
    "build_plan",
    "run_model",
    "run_pipeline",
    "run_plan",
]

# Imported when first used: importing one module of the package (``icefield.pipeline.results``, say)
# does not load the runner and everything it needs.
_LAZY = {
    "run_model": "icefield.pipeline.models",
    "Node": "icefield.pipeline.plan",
    "Plan": "icefield.pipeline.plan",
    "PlanResult": "icefield.pipeline.plan",
    "build_plan": "icefield.pipeline.plan",
    "run_plan": "icefield.pipeline.plan",
    "BatchResult": "icefield.pipeline.results",
    "CheckResult": "icefield.pipeline.results",
    "RunResult": "icefield.pipeline.results",
    "run_pipeline": "icefield.pipeline.runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icefield.pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
