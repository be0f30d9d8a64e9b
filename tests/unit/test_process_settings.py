"""Process-wide settings: importing icefield changes none; the icefield program tunes its own process
(icefield.process.tuned) and gives everything back when it leaves."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

PURGE = "MIMALLOC_PURGE_DELAY"
MIMALLOC = pa.default_memory_pool().backend_name == "mimalloc"
needs_mimalloc = pytest.mark.skipif(not MIMALLOC, reason="pyarrow's default allocator here is not mimalloc")


def _env(**extra: str) -> dict[str, str]:
    """This environment without a purge delay of its own; MIMALLOC_VERBOSE=1 has mimalloc print the options
    it read when pyarrow loaded (``option 'purge_delay': -1``) on stderr."""
    env = {k: v for k, v in os.environ.items() if k != PURGE}
    return {**env, "MIMALLOC_VERBOSE": "1", **extra}


def _purge_delay(stderr: str) -> str:
    found = re.findall(r"option 'purge_delay': (-?\d+)", stderr)
    assert len(found) == 1, stderr[-2000:]
    return found[0]


SHOW = """
import gc, json, os
before = [gc.get_threshold(), gc.get_freeze_count(), dict(os.environ)]
import icefield
from icefield import load_project, run_pipeline  # the pipeline, pyarrow and pyiceberg load here
import pyarrow as pa
pa.allocate_buffer(1 << 20)
after = [gc.get_threshold(), gc.get_freeze_count(), dict(os.environ)]
print(json.dumps([before, after]))
"""


@needs_mimalloc
def test_importing_icefield_changes_nothing_in_the_process() -> None:
    """Importing icefield used to set MIMALLOC_PURGE_DELAY=-1 in the environment (so that Arrow's allocator,
    loaded next, kept freed pages): a library a service or an Airflow worker imports must not."""
    proc = subprocess.run([sys.executable, "-c", SHOW], env=_env(), capture_output=True, text=True, check=True)
    before, after = json.loads(proc.stdout)
    assert after[:2] == before[:2], "the garbage collector's thresholds and frozen objects"
    changed = {k: after[2].get(k) for k in {*before[2], *after[2]} if before[2].get(k) != after[2].get(k)}
    assert changed == {}, "the environment"
    assert _purge_delay(proc.stderr) != "-1"


def _project(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(100)))
    (root / "icefield.yaml").write_text(yaml.safe_dump({"name": "tuning"}))
    pipe = {"name": "ev", "source": {"type": "files", "path": "data/*.jsonl", "format": "jsonl"}, "target": {"table": "raw.ev"}}
    (root / "pipelines" / "ev.yaml").write_text(yaml.safe_dump(pipe))
    return root


@needs_mimalloc
def test_the_icefield_program_keeps_freed_arrow_pages_unless_the_environment_says_otherwise(tmp_path: Path) -> None:
    """The program (``python -m icefield``, the ``icefield`` script's own entry point) enters the tuning
    before pyarrow loads, so mimalloc reads the purge delay of -1 (freed pages kept for reuse: a CDC run
    spent 12% of its CPU zeroing pages again); a delay set in the environment wins."""

    def run(root: Path, **extra: str) -> str:
        cmd = [sys.executable, "-m", "icefield", "--project", str(_project(root)), "run"]
        proc = subprocess.run(cmd, env=_env(**extra), capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return _purge_delay(proc.stderr)

    assert run(tmp_path / "a") == "-1"
    assert run(tmp_path / "b", MIMALLOC_PURGE_DELAY="10") == "10"


TUNED = """
import json, os
from icefield.process import tuned
with tuned():
    inside = os.environ.get("MIMALLOC_PURGE_DELAY")
    import pyarrow as pa
    pa.allocate_buffer(1 << 20)
print(json.dumps([inside, os.environ.get("MIMALLOC_PURGE_DELAY")]))
"""


@needs_mimalloc
def test_the_allocator_setting_is_in_the_environment_only_while_tuned() -> None:
    from icefield import process

    proc = subprocess.run([sys.executable, "-c", TUNED], env=_env(), capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [process.KEEP_FREED_PAGES, None]
    assert _purge_delay(proc.stderr) == process.KEEP_FREED_PAGES
    proc = subprocess.run([sys.executable, "-c", TUNED], env=_env(MIMALLOC_PURGE_DELAY="10"), capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == ["10", "10"]
    assert _purge_delay(proc.stderr) == "10"


def test_tuning_entered_by_two_threads_lasts_until_the_last_leaves_and_gives_the_collector_back() -> None:
    """Two runs in one process each enter the tuning; the first to leave must neither end it under the other
    nor leave the process tuned when the other leaves after it (a run used to save and restore the
    thresholds on its own: the second to start restored the first one's tuned thresholds for good)."""
    from icefield import process

    before, env = gc.get_threshold(), dict(os.environ)
    assert gc.get_freeze_count() == 0 and not process.is_tuned()
    entered, first_left, second_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[int, tuple[int, int, int]]] = {}

    def first() -> None:
        with process.tuned():
            entered.wait(10)
        first_left.set()

    def second() -> None:
        with process.tuned():
            entered.set()
            first_left.wait(10)
            seen["after the first left"] = (gc.get_freeze_count(), gc.get_threshold())
        second_left.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    while not process.is_tuned():
        threading.Event().wait(0.01)
    threads[1].start()
    for t in threads:
        t.join(20)
    assert second_left.is_set()
    frozen, threshold = seen["after the first left"]
    assert frozen > 0 and threshold == (max(before[0], process.YOUNG_COLLECTION_EVERY), *before[1:])
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0 and not process.is_tuned()
    assert dict(os.environ) == env


def _frozen(obj: object) -> bool:
    """Whether ``obj`` (a container the collector tracks) sits in the permanent generation: the collector's
    generations list every tracked object but the frozen ones."""
    assert gc.is_tracked(obj)
    return not any(o is obj for o in gc.get_objects())


def test_tuning_leaves_objects_someone_else_froze_frozen() -> None:
    """A program that froze objects itself (a forking server does before it forks) keeps them frozen: the
    tuning then neither freezes nor unfreezes. (Asked of marker objects, not of the frozen count, which
    drops whenever a frozen object of another test's leftover thread is freed.)"""
    from icefield import process

    theirs = [object()]
    gc.freeze()
    try:
        with process.tuned():
            ours = [object()]
            process.freeze()
            assert _frozen(theirs), "entering the tuning unfroze what the program froze"
            assert not _frozen(ours), "the tuning froze objects though the program manages freezing itself"
        assert _frozen(theirs), "leaving the tuning unfroze what the program froze"
        assert not _frozen(ours)
    finally:
        gc.unfreeze()
