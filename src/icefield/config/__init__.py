"""Project configuration: ``icefield.yaml``, pipelines, models, profiles, overrides and secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from icefield.config.secrets import redact, resolve

if TYPE_CHECKING:
    from icefield.config.loader import PROJECT_FILE, Project, find_project_root, load_project, read_model
    from icefield.config.models import (
        CatalogConfig,
        FilesSourceConfig,
        KafkaSourceConfig,
        ModelConfig,
        PipelineConfig,
        ProjectConfig,
        SqlSourceConfig,
        TargetConfig,
    )
    from icefield.config.scheduling import SchedulingConfig, airflow_args

__all__ = [
    "PROJECT_FILE",
    "CatalogConfig",
    "FilesSourceConfig",
    "KafkaSourceConfig",
    "ModelConfig",
    "PipelineConfig",
    "Project",
    "ProjectConfig",
    "SchedulingConfig",
    "SqlSourceConfig",
    "TargetConfig",
    "airflow_args",
    "find_project_root",
    "load_project",
    "read_model",
    "redact",
    "resolve",
]

# The loader and the typed settings (pydantic) are imported when first used: modules that only redact
# or resolve secrets (logging, the CLI's output) do not load them.
_LAZY = {
    **dict.fromkeys(["PROJECT_FILE", "Project", "find_project_root", "load_project", "read_model"], "icefield.config.loader"),
    **dict.fromkeys(
        ["CatalogConfig", "FilesSourceConfig", "KafkaSourceConfig", "ModelConfig", "PipelineConfig", "ProjectConfig", "SqlSourceConfig", "TargetConfig"],
        "icefield.config.models",
    ),
    **dict.fromkeys(["SchedulingConfig", "airflow_args"], "icefield.config.scheduling"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icefield.config' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
