"""icefield: an open-source lakehouse data platform that lands data in Apache Iceberg.

The public surface is small on purpose; everything else lives in private-by-convention modules.
"""

from __future__ import annotations

import os

# Arrow's allocator (mimalloc) hands freed pages back to the system 10 ms after they are freed. A pipeline
# frees and allocates batch-sized buffers all the time, and a CDC run spent 12% of its CPU in the kernel
# zeroing the pages it got back. They are kept for reuse instead (the process keeps its peak); a value set in
# the environment wins. mimalloc reads it once, when pyarrow loads: import icefield first.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from icefield.config import Project, load_project
    from icefield.pipeline import BatchResult, CheckResult, RunResult, run_model, run_pipeline

__version__ = "0.1.0"

# Imported when first used: a command that never runs a pipeline (``icefield sql``) never loads the
# pipeline's libraries (pyiceberg, SQLAlchemy, Arrow).
_LAZY = {
    "Project": "icefield.config",
    "load_project": "icefield.config",
    "BatchResult": "icefield.pipeline",
    "CheckResult": "icefield.pipeline",
    "RunResult": "icefield.pipeline",
    "run_model": "icefield.pipeline",
    "run_pipeline": "icefield.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icefield' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

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
