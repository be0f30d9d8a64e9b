"""Process-wide settings icefield makes when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import icefield, os, pyarrow as pa; print(os.environ['MIMALLOC_PURGE_DELAY'], pa.default_memory_pool().backend_name)"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout.split()[0]


def test_importing_icefield_keeps_freed_arrow_pages_for_reuse_unless_the_environment_says_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    # Set before pyarrow loads, so mimalloc (Arrow's allocator here) reads it.
    assert _run(env) == "-1"
    assert _run({**env, "MIMALLOC_PURGE_DELAY": "10"}) == "10"
