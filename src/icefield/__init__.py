"""icefield: an open-source lakehouse data platform that lands data in Apache Iceberg.

The public surface is small on purpose; everything else lives in private-by-convention modules.
"""

from __future__ import annotations

from icefield.config import Project, load_project
from icefield.errors import (
    CommitConflictError,
    ConfigError,
    GateFailedError,
    IcefieldError,
    PublishConflictError,
    SchemaError,
    SecretError,
    SourceError,
    TerminalError,
    TransientError,
)
from icefield.pipeline import BatchResult, CheckResult, RunResult, run_model, run_pipeline

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "CheckResult",
    "CommitConflictError",
    "ConfigError",
    "GateFailedError",
    "IcefieldError",
    "Project",
    "PublishConflictError",
    "RunResult",
    "SchemaError",
    "SecretError",
    "SourceError",
    "TerminalError",
    "TransientError",
    "__version__",
    "load_project",
    "run_model",
    "run_pipeline",
]
