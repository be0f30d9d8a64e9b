"""icefield: an open-source lakehouse data platform that lands data in Apache Iceberg.

The public surface is small on purpose; everything else lives in private-by-convention modules.
Importing icefield changes nothing in the process and loads neither pyarrow nor pyiceberg: the names
below load their modules when first used (a program tunes its process with :mod:`icefield.process`,
which has to come before pyarrow loads).
"""

from __future__ import annotations

import importlib
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
    from icefield.config.window import Window
    from icefield.pipeline import BatchResult, CheckResult, RunResult, run_model, run_pipeline

__version__ = "0.1.0"

_LAZY = {
    "Project": "icefield.config",
    "load_project": "icefield.config",
    "BatchResult": "icefield.pipeline",
    "CheckResult": "icefield.pipeline",
    "RunResult": "icefield.pipeline",
    "run_model": "icefield.pipeline",
    "run_pipeline": "icefield.pipeline",
    "Window": "icefield.config.window",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icefield' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "Window",
    "__version__",
    "load_project",
    "run_model",
    "run_pipeline",
]
