"""The observers a project's ``icefield.yaml`` asks for, built for the entry points (``icefield run``, the
Airflow task) that register them on their runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.config import Project
    from icefield.observe.events import Observer

__all__ = ["configured_observers"]


def configured_observers(project: Project) -> list[Observer]:
    """The observers of ``project``'s config: the OpenLineage observer when it has a ``lineage:`` section
    (:mod:`icefield.observe.lineage`). Raises :class:`ConfigError` when that section is set but the
    ``lineage`` extra (openlineage-python) is not installed."""
    if project.config.lineage is None:
        return []
    try:
        from icefield.observe.lineage import lineage_observer
    except ImportError as e:
        raise ConfigError(
            f"icefield.yaml has a lineage: section but openlineage-python cannot be imported ({e}); "
            "install it with pip install 'icefield[lineage]', or drop the section"
        ) from e
    observer = lineage_observer(project)
    return [observer] if observer is not None else []
