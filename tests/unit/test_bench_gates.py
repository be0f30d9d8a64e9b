"""The gates benchmark harness (bench/gates.py) on a tiny table: icefield's gate set and the hand-written
DuckDB SQL measure the same things, so the benchmark compares like with like."""

from __future__ import annotations

from pathlib import Path

from bench import gates


def test_icefield_and_the_duckdb_limit_report_the_same_measures(tmp_path: Path) -> None:
    doc = gates.prepare(tmp_path, 2_000)
    assert gates.prepare(tmp_path, 2_000) == doc  # made once
    ice = gates._peer_icefield(tmp_path, doc)["result"]
    duck = gates._peer_duckdb(tmp_path, doc)["result"]
    assert ice["gates"] == len(gates.GATES) and ice["statuses"] == ["pass"]
    assert {k: ice[k] for k in duck} == duck
    assert duck["rows"] == duck["distinct_keys"] == 2_000
