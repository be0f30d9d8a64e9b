"""Running pipelines and models."""

from __future__ import annotations

from icefield.pipeline.models import run_model
from icefield.pipeline.results import BatchResult, RunResult
from icefield.pipeline.runner import run_pipeline

__all__ = ["BatchResult", "RunResult", "run_model", "run_pipeline"]
