"""`pip install .` alone, without any extra, gives a working icefield: a clean virtual environment runs
`icefield demo` to its end. Developers and `make test` have every extra installed, which is how a core
install that could not run went unnoticed (numpy was imported but not declared). The demo needs none of
the heavy extras: pyspark, Great Expectations and confluent-kafka are not even installed here.

It builds the environment under ``tmp_path`` from a copy of the source tree (a build writes into the tree
it builds) and installs from PyPI through pip's cache (about 30 s when the cache is warm)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip")
"""pip's cache, read when the module is collected: the tests run with a temporary HOME, and the install
would otherwise download every wheel again."""

NOT_IN_THE_CORE = ("pyspark", "great_expectations", "confluent_kafka", "psycopg2", "adbc_driver_postgresql", "openlineage")
"""Modules of the extras (spark, gx, kafka, postgres, lineage)."""

BUILD_LEFTOVERS = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".icefield", ".stack")


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_clean_virtual_environment_with_pip_install_dot_alone_runs_the_demo(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    venv = tmp_path / "venv"
    # Nothing of this interpreter's environment leaks in: no PYTHONPATH to a checkout, no active venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MIMALLOC_PURGE_DELAY")}
    env.update(PIP_CACHE_DIR=PIP_CACHE, PIP_DISABLE_PIP_VERSION_CHECK="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    _run([sys.executable, "-m", "venv", str(venv)], env, 300)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", str(source)], env, 1500)

    probe = (
        "import importlib.util, json, icefield, pyarrow as pa; "
        f"print(json.dumps([icefield.__file__, [m for m in {NOT_IN_THE_CORE!r} if importlib.util.find_spec(m)], "
        "pa.default_memory_pool().backend_name]))"
    )
    where, extras, allocator = json.loads(_run([python, "-c", probe], env, 120, cwd=tmp_path).stdout)
    assert Path(where).is_relative_to(venv), f"icefield imported from {where}, not from the clean environment"
    assert extras == [], f"installed without being asked for: {extras}"

    # The console script, as a user runs it; MIMALLOC_VERBOSE=1 has Arrow's allocator print the options it
    # read: the program tuned its process before pyarrow loaded.
    demo = _run([str(venv / "bin" / "icefield"), "demo", "--dir", str(tmp_path / "demo")], {**env, "MIMALLOC_VERBOSE": "1"}, 600, cwd=tmp_path)
    assert any(line.startswith("Demo ok") for line in demo.stdout.splitlines()), demo.stdout[-3000:]
    if allocator == "mimalloc":
        assert re.findall(r"option 'purge_delay': (-?\d+)", demo.stderr) == ["-1"], demo.stderr[-3000:]
