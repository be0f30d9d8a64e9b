"""Project configuration: ``icefield.yaml``, pipelines, models, profiles, overrides and secrets."""

from __future__ import annotations

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
from icefield.config.secrets import redact, resolve

__all__ = [
    "PROJECT_FILE",
    "CatalogConfig",
    "FilesSourceConfig",
    "KafkaSourceConfig",
    "ModelConfig",
    "PipelineConfig",
    "Project",
    "ProjectConfig",
    "SqlSourceConfig",
    "TargetConfig",
    "find_project_root",
    "load_project",
    "read_model",
    "redact",
    "resolve",
]
