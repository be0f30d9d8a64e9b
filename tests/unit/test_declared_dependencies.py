"""`pip install icefield` alone must run every command: each third-party module icefield imports is a
declared dependency (F13: numpy was imported by the local engine, the data-file writer and the
Debezium codec but declared nowhere, so a core install failed on `run`, `tables`, `sql` and `demo`).
Optional backends are imported lazily, inside the code that needs them, and are declared in an extra."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import icefield

SRC = Path(icefield.__file__).resolve().parent  # the icefield under test, and its checkout's pyproject.toml
ROOT = SRC.parents[1]
LAZY_EXTRAS = {"thrift", "pyspark", "confluent_kafka", "great_expectations", "psycopg2", "adbc_driver_postgresql", "adbc_driver_manager", "trino", "airflow", "openlineage", "attr"}
"""Modules of optional extras: imported only inside the functions that need them."""
EXTRA_PACKAGES = {"airflow": ("src/icefield/integrations/airflow/dags.py",)}
"""Modules that belong to an extra and import it at module level: nothing imports them but the extra's own entry
(Airflow's DAG file); their package's ``__init__`` imports them lazily, so ``import icefield.integrations.airflow``
works without the extra (checked below)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    m = re.match(r"[A-Za-z0-9._-]+", spec.strip())
    assert m, spec
    return _canonical(m.group(0))


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {_requirement_name(s) for specs in project.get("optional-dependencies", {}).values() for s in specs}
    return core, extras


def _imports() -> list[tuple[str, str, bool]]:
    """(top-level module, file, imported when the module is imported) for every third-party import."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        eager: set[int] = set()
        for node in tree.body:  # module level, outside `if TYPE_CHECKING:`
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    break
                eager.add(id(sub))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "icefield" and top not in sys.stdlib_module_names:
                    found.append((top, str(path.relative_to(ROOT)), id(node) in eager))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    dists = _providers().get(module)
    assert dists, f"{module} is imported by icefield but no installed distribution provides it"
    return {_canonical(d) for d in dists}


def test_every_import_outside_the_extras_is_a_core_dependency() -> None:
    core, _ = _declared()
    missing = sorted(
        {(module, where) for module, where, _eager in _imports() if module not in LAZY_EXTRAS and not _distributions(module) & core}
    )
    assert not missing, f"imported but not in [project] dependencies of pyproject.toml: {missing}"


def test_extras_are_declared_and_imported_lazily() -> None:
    _, extras = _declared()
    imports = [(m, w, eager) for m, w, eager in _imports() if m in LAZY_EXTRAS]
    undeclared = sorted({(m, w) for m, w, _ in imports if not _distributions(m) & extras})
    assert not undeclared, f"imported but in no optional extra of pyproject.toml: {undeclared}"
    eager = sorted({(m, w) for m, w, is_eager in imports if is_eager and w not in EXTRA_PACKAGES.get(m, ())})
    assert not eager, f"an optional extra imported at module level (a core install would fail to import it): {eager}"


def test_the_airflow_package_imports_without_airflow() -> None:
    """``icefield.integrations.airflow`` and its Airflow-free modules import with Airflow hidden."""
    import subprocess

    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "import icefield.integrations.airflow, icefield.integrations.airflow.pools, icefield.integrations.airflow.alerts\n"
        "import icefield.integrations.airflow.tasks\n"
        "try:\n    icefield.integrations.airflow.project_dags\nexcept ImportError:\n    print('needs airflow')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "needs airflow"
