"""Battery row of issue 13: a hostile-input corpus runs with 0 tracebacks, exit codes as documented and
conservation exact.

``icefield --json run`` runs as a subprocess, as a scheduler would run it:

- the data corpus: one project whose pipelines each read one odd file shape (every shape of F14/F22 and
  the malformed inputs the files source already handled) followed by a good file. Exit 0; for every
  pipeline, rows in = committed + quarantined + filtered, in the JSON document and in the tables (table
  rows and quarantine rows); every later good file loaded; a second run commits nothing;
- the configuration corpus: the probe's configurations that cannot work (F12 paths, F17, F18, F20, F22's
  table properties), one project each. Exit 2 (an unreachable catalog: 75), nothing written;
- always: no ``Traceback`` on stderr and exactly one JSON document on stdout.
"""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

EXIT_OK, EXIT_USAGE, EXIT_TRANSIENT = 0, 2, 75
GOOD = b'{"id": 99, "name": "good"}\n'


def _parquet(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return bytes(buf.getvalue().to_pybytes())


# name -> (file name, bytes, extra pipeline settings)
DATA_SHAPES: dict[str, tuple[str, bytes, dict[str, Any]]] = {
    # F14
    "header_only_csv": ("a.csv", b"id,name\n", {}),
    "duplicate_headers": ("a.csv", b"id,name,name\n1,a,b\n", {}),
    "empty_header": ("a.csv", b"id,,x\n1,a,b\n", {}),
    "json_empty_key": ("a.jsonl", b'{"id": 1, "": "x"}\n{"id": 2}\n', {}),
    "json_file_column_key": ("a.jsonl", b'{"id": 1, "_source_file": "x"}\n{"id": 2}\n', {}),
    "csv_file_column_header": ("a.csv", b"id,_source_file\n1,x\n", {}),
    "json_internal_names_merge": ("a.jsonl", b'{"id": 1, "__del": true, "__pos": 3}\n{"id": 2, "__del": false}\n', {"mode": "merge"}),
    "json_reserved_key": ("a.jsonl", b'{"id": 1, "__icefield_del": true}\n{"id": 2}\n', {}),
    "csv_reserved_header": ("a.csv", b"id,__icefield_idx\n1,2\n", {}),
    "utf16_csv": ("a.csv", "id,name\n1,été\n".encode("utf-16"), {}),
    "utf16be_csv": ("a.csv", codecs.BOM_UTF16_BE + "id,name\n1,x\n".encode("utf-16-be"), {}),
    "utf32_csv": ("a.csv", "id,name\n1,x\n".encode("utf-32"), {}),
    "bad_utf16_csv": ("a.csv", codecs.BOM_UTF16_LE + b"i\x00d\x00\n\x00\x00\xd8", {}),
    "unknown_extension": ("a.txt", b"just text\n", {}),
    "broken_parquet": ("a.parquet", b"PAR1 this is not parquet", {}),
    "empty_parquet_file": ("a.parquet", b"", {}),
    "null_typed_parquet": ("a.parquet", _parquet(pa.table({"id": [1, 2], "nothing": pa.nulls(2)})), {}),
    # F22
    "json_bom": ("a.jsonl", b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n', {}),
    "json_no_final_newline": ("a.jsonl", b'{"id": 1}\n{"id": 2}', {}),
    # malformed input the source already handled
    "csv_bom_crlf": ("a.csv", b"\xef\xbb\xbfid,name\r\n1,x\r\n", {}),
    "csv_latin1_row": ("a.csv", b"id,name\n1,caf\xe9\n2,ok\n", {}),
    "csv_wrong_shape": ("a.csv", b"id,name\n1\n2,b,c\n3,c\n", {}),
    "csv_broken_quote": ("a.csv", b'id,name\n1,"open\n2,b\n', {}),
    "empty_csv": ("a.csv", b"", {}),
    "empty_jsonl": ("a.jsonl", b"", {}),
    "json_truncated": ("a.jsonl", b'{"id": 1}\n{"id": 2, "na\n', {}),
    "json_invalid_utf8": ("a.jsonl", b'{"id": 1, "name": "\xff\xfe"}\n{"id": 2}\n', {}),
    "json_not_objects": ("a.jsonl", b'[1, 2]\n"text"\n42\nnull\n{"id": 2}\n', {}),
    "json_deep": ("a.jsonl", b'{"id": 1, "d": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", {}),
    "json_nan_and_huge_int": ("a.jsonl", b'{"id": NaN}\n{"id": 123456789012345678901234567890}\n{"id": 3}\n', {}),
    "json_wrong_type": ("a.jsonl", b'{"id": 1}\n{"id": "one"}\n', {}),
}
LINKED = "link_inside_glob_folder"


def _pipeline(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = {"table": f"raw.{name}"}
    if extra.get("mode") == "merge":
        target.update(mode="merge", keys=["id"])
    return {"name": name, "source": {"type": "files", "path": f"d/{name}/**/*"}, "target": target}


def _write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _project(root: Path, pipelines: list[dict[str, Any]], project: dict[str, Any] | None = None) -> Path:
    _write(root, "icefield.yaml", yaml.safe_dump(project or {"name": "hostile"}))
    for p in pipelines:
        _write(root, f"pipelines/{p['name']}.yaml", yaml.safe_dump(p, sort_keys=False))
    return root


def _run(root: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, list[Any], str]:
    """``icefield --json run`` in a subprocess: exit code, the JSON documents on stdout, stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ICEFIELD", "PYICEBERG"))}
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "--json", "run"],
        capture_output=True, text=True, timeout=600, env=environ, cwd=cwd or root,
    )
    docs: list[Any] = []
    decoder, text, at = json.JSONDecoder(), done.stdout, 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return done.returncode, docs, done.stderr


def _counts(root: Path, table: str) -> tuple[int, int]:
    """Rows of ``table`` and of its quarantine, read back through the project's catalog."""
    from pyiceberg.exceptions import NoSuchTableError

    from icefield import load_project
    from icefield.catalog import open_catalog

    catalog = open_catalog(load_project(root, env={}))
    try:
        out = []
        for name in (table, table + "__quarantine"):
            try:
                out.append(len(catalog.load_table(name).scan().to_arrow()))
            except NoSuchTableError:
                out.append(0)
        return out[0], out[1]
    finally:
        catalog.engine.dispose()


def test_the_data_corpus_lands_or_is_quarantined_with_exact_conservation(tmp_path):
    root = tmp_path / "data corpus"  # a space: the warehouse must stay in the project (F6)
    pipelines = [_pipeline(name, extra) for name, (_, _, extra) in DATA_SHAPES.items()]
    pipelines.append(_pipeline(LINKED, {}))
    _project(root, pipelines)
    for name, (file, data, _) in DATA_SHAPES.items():
        _write(root, f"d/{name}/{file}", data)
        _write(root, f"d/{name}/zz.jsonl", GOOD)
    _write(root, f"d/{LINKED}/real/a.jsonl", '{"id": 1}\n')
    (root / "d" / LINKED / "link.jsonl").symlink_to("real/a.jsonl")
    _write(root, f"d/{LINKED}/zz.jsonl", GOOD)

    code, docs, stderr = _run(root)
    assert "Traceback" not in stderr
    assert len(docs) == 1, f"one JSON document on stdout, got {len(docs)}"
    assert code == EXIT_OK, docs[0]
    results = {r["pipeline"]: r for r in docs[0]["results"]}
    assert sorted(results) == sorted([*DATA_SHAPES, LINKED])
    for name, r in results.items():
        assert r["status"] == "success", (name, r["error"])
        assert r["rows_in"] == r["rows_committed"] + r["rows_quarantined"] + r["rows_filtered"], name
        assert r["conserved"], name
        rows, quarantined = _counts(root, f"raw.{name}")
        assert (rows, quarantined) == (r["rows_committed"], r["rows_quarantined"]), name
        assert r["rows_committed"] >= 1, f"{name}: the good file after the odd one is loaded"
    assert not [p for p in tmp_path.rglob("*.parquet") if not p.resolve().is_relative_to(root.resolve())]

    code, docs, stderr = _run(root)
    assert (code, len(docs), "Traceback" in stderr) == (EXIT_OK, 1, False)
    assert all(r["rows_in"] == 0 and r["snapshots"] == [] for r in docs[0]["results"]), "a rerun commits nothing"


def _files(path: str = "d/*.jsonl", **source: Any) -> dict[str, Any]:
    return {"type": "files", "path": path, **source}


# name -> (pipeline source, target, checks, icefield.yaml, environment, setup)
CONFIG_CASES: dict[str, dict[str, Any]] = {
    # F12
    "path_climbs_out": {"source": _files("../../../etc/passw?", format="jsonl")},
    "absolute_path": {"source": _files("/etc/hostname", format="jsonl")},
    "link_to_secret": {"setup": "link_secret"},
    "link_out_of_project": {"setup": "link_out"},
    # F17
    "bucket_too_wide": {"target": {"partition_by": ["bucket(99999999999999999999, id)"]}},
    "bucket_zero": {"target": {"partition_by": ["bucket(0, id)"]}},
    "partition_injection": {"target": {"partition_by": ["day(id); drop"]}},
    "duplicate_partition": {"target": {"partition_by": ["id", "id"]}},
    "day_of_a_long": {"target": {"partition_by": ["day(id)"]}},
    "hour_of_a_string": {"target": {"partition_by": ["hour(name)"]}},
    "merge_key_not_in_data": {"target": {"mode": "merge", "keys": ["nope"]}},
    "regex_lookahead": {"checks": [{"regex": {"column": "name", "pattern": "(?=a)"}}]},
    "regex_backreference": {"checks": [{"regex": {"column": "name", "pattern": r"(a)\1"}}]},
    "accepted_values_mixed": {"checks": [{"accepted_values": {"column": "id", "values": ["1", 2]}}]},
    "nested_namespace": {"target": {"table": "a.b.t"}},
    "catalog_is_text": {"project": {"catalog": {"uri": "sqlite:///notes.txt"}}, "setup": "text_file"},
    "catalog_is_folder": {"project": {"catalog": {"uri": "sqlite:///d"}}},
    # F18
    "catalog_foreign_db": {"project": {"catalog": {"uri": "sqlite:///app.db"}}, "setup": "app_db"},
    "catalog_in_memory": {"project": {"catalog": {"uri": "sqlite:///:memory:"}}},
    "catalog_default_memory": {"project": {"catalog": {"uri": "sqlite://"}}},
    # F20
    "check_on_missing_column": {"checks": [{"not_null": ["nope"]}]},
    # F22
    "secret_in_table_properties": {"target": {"properties": {"custom.token": "${env:CANARY_PROP}"}}, "env": {"CANARY_PROP": "CANARY_PROP_VALUE_7"}},
    # F6
    "unresolvable_warehouse": {"project": {"warehouse": "${env:ICEFIELD_TEST_NO_SUCH_VAR}"}},
}


def _config_case(root: Path, case: dict[str, Any]) -> Path:
    pipe = {
        "name": "p",
        "source": case.get("source", _files()),
        "target": {"table": "raw.t", **case.get("target", {})},
        "checks": case.get("checks", []),
    }
    _project(root, [pipe], {"name": "cfg", **case.get("project", {})})
    _write(root, "d/a.jsonl", '{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n')
    setup = case.get("setup")
    if setup == "link_secret":
        _write(root, "secrets/token", "CANARY_FILESECRET_12\n")
        (root / "d" / "link.jsonl").symlink_to("../secrets/token")
    elif setup == "link_out":
        (root / "d" / "link.jsonl").symlink_to(_write(root.parent / "outside", "x.jsonl", '{"secret": 1}\n'))
    elif setup == "text_file":
        _write(root, "notes.txt", "hello\n")
    elif setup == "app_db":
        import sqlite3

        con = sqlite3.connect(root / "app.db")
        con.execute("CREATE TABLE users (id INTEGER)")
        con.commit()
        con.close()
    return root


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_configuration_that_cannot_work_exits_2_and_writes_nothing(tmp_path, name):
    root = _config_case(tmp_path / "proj", CONFIG_CASES[name])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, docs, stderr = _run(root, env=CONFIG_CASES[name].get("env"), cwd=elsewhere)
    assert "Traceback" not in stderr
    assert code == EXIT_USAGE, (code, docs)
    assert all(canary not in json.dumps(docs) + stderr for canary in ("CANARY_FILESECRET_12", "CANARY_PROP_VALUE_7"))
    assert len(docs) == 1, f"one JSON document on stdout, got {len(docs)}: {docs}"
    assert docs[0]["status"] in ("error", "failed")
    assert not list(root.rglob("*.parquet")), "nothing written"
    assert list(elsewhere.iterdir()) == [], "nothing written in the current directory"


def test_an_unreachable_catalog_server_exits_75(tmp_path):
    root = _config_case(tmp_path / "proj", {})
    code, docs, stderr = _run(root, env={"ICEFIELD__CATALOG__URI": "postgresql+psycopg2://icefield:pw@127.0.0.1:1/lake"})
    assert "Traceback" not in stderr
    assert (code, len(docs)) == (EXIT_TRANSIENT, 1)
