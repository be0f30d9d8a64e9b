"""Running pipelines and models."""

from __future__ import annotations

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
