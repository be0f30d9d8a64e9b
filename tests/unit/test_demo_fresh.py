"""`icefield demo --fresh` deletes only a folder the demo created (F3: `--dir <a real project> --fresh`
replaced the project's files with the demo's, and `--dir .` deleted the folder it ran in, secrets/ included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from icefield.cli import cli
from icefield.demo import copy_example
from icefield.errors import ConfigError

DEMO_MARKER = ".icefield-demo"  # the marker file, as documented


def _real_project(root: Path) -> dict[Path, bytes]:
    """A project made by `icefield init`, with data and a secret: every file and its bytes."""
    assert CliRunner().invoke(cli, ["init", str(root)]).exit_code == 0
    (root / "data" / "events" / "precious.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    (root / "secrets").mkdir()
    (root / "secrets" / "pg").write_text("hunter2-secret\n", encoding="utf-8")
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icefield.cli", "demo", *args], cwd=cwd, capture_output=True, text=True, check=False,
        env=dict(os.environ), timeout=300,
    )


@pytest.mark.parametrize("fresh", [True, False])
def test_the_demo_never_touches_a_real_project(tmp_path: Path, fresh: bool) -> None:
    root = tmp_path / "realproj"
    before = _real_project(root)
    proc = _demo("--dir", str(root), *(["--fresh"] if fresh else []), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert str(root.resolve()) in message and DEMO_MARKER in message and "--dir" in message
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_the_demo_never_deletes_the_folder_it_runs_in(tmp_path: Path) -> None:
    root = tmp_path / "realproj"
    before = _real_project(root)
    proc = _demo("--dir", ".", "--fresh", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_fresh_deletes_a_folder_the_demo_made(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    copy_example(folder, fresh=False)
    assert (folder / DEMO_MARKER).is_file() and (folder / "icefield.yaml").is_file()
    (folder / "leftover.txt").write_text("from the last demo", encoding="utf-8")
    copy_example(folder, fresh=True)
    assert not (folder / "leftover.txt").exists() and (folder / DEMO_MARKER).is_file()


def test_an_empty_folder_is_used_and_marked(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    copy_example(folder, fresh=True)
    assert (folder / DEMO_MARKER).is_file() and (folder / "icefield.yaml").is_file()


def test_a_demo_folder_that_is_the_working_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "demo"
    copy_example(folder, fresh=False)
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match="would delete the folder this command runs in"):
        copy_example(Path("."), fresh=True)
    assert (folder / DEMO_MARKER).is_file()
