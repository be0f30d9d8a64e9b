"""Running pipelines and models."""

from __future__ import annotations

from icefield.pipeline.models import run_model
from icefield.pipeline.results import BatchResult, CheckResult, RunResult
from icefield.pipeline.runner import run_pipeline

__all__ = ["BatchResult", "CheckResult", "RunResult", "run_model", "run_pipeline"]
