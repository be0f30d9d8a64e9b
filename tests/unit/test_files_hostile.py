"""The files source against hostile or odd input (issue 13: F12, F14, F22).

- Where it may read (F12): only the project folder and declared ``roots``; a glob that climbs out, an
  absolute one, or a link out of the glob's folder is refused with a clear error; icefield's own state
  (``.icefield/``: catalog, metadata, Parquet) is never read.
- Odd files (F14): each lands, or goes to the quarantine (a record, or the whole file as one ``decode``
  row), never failing the run nor holding up a later file, and conservation is exact.
- F22: a UTF-8 byte order mark does not cost a JSON Lines file its first record, and a file appended to
  while it is read leaves no stale quarantine row of its half-written last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icefield import ConfigError
from icefield.config import load_project
from icefield.iceberg.history import read_position

TABLE = "raw.ev"


def files_pipeline(path: str = "drop/*", **source: Any) -> dict[str, Any]:
    target = source.pop("target", {"table": TABLE})
    return {"source": {"type": "files", "path": path, **source}, "target": target}


def write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def quarantine(lk: Any) -> list[dict[str, Any]]:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        rows = lk.table(TABLE + "__quarantine").scan().to_arrow().to_pylist()
    except NoSuchTableError:
        return []
    return sorted(rows, key=lambda r: r["source"])


def conserved(res: Any) -> None:
    assert res.status == "success"
    assert res.rows_in == res.rows_committed + res.rows_quarantined + res.rows_filtered
    assert res.conserved


# ---------------------------------------------------------------------------------------- F12: where


@pytest.mark.parametrize("path", ["../../../etc/passw?", "/etc/hostname", "data/../../outside/*.jsonl"])
def test_a_glob_out_of_the_project_is_refused_when_the_project_loads(make_project, path):
    """F12: ``../`` and absolute globs read files outside the project (all of /etc/passwd landed in the
    quarantine); refused at load, naming the path and the fix (``roots``)."""
    root = make_project({"ev": files_pipeline(path, format="jsonl")})
    with pytest.raises(ConfigError) as info:
        load_project(root, env={})
    msg = str(info.value)
    assert repr(path) in msg and "outside the project folder" in msg and "roots" in msg


def test_a_link_out_of_the_globs_folder_is_refused_and_nothing_is_read(lake):
    """F12: a link in the drop folder to ``secrets/token`` put the secret in the quarantine. A match is
    resolved and must stay in the folder the glob matches in (or a declared root)."""
    lk = lake({"ev": files_pipeline("drop/*.jsonl")})
    write(lk.root, "secrets/token", "CANARY_FILESECRET_12\n")
    write(lk.root, "drop/a.jsonl", '{"id": 1}\n')
    (lk.root / "drop" / "link.jsonl").symlink_to("../secrets/token")
    with pytest.raises(ConfigError) as info:
        lk.run("ev")
    msg = str(info.value)
    assert "drop/link.jsonl" in msg and "secrets/token" in msg and "source.roots" in msg
    assert "CANARY_FILESECRET_12" not in msg
    assert all("CANARY" not in json.dumps(r, default=str) for r in quarantine(lk))


def test_a_link_out_of_the_project_is_refused(lake, tmp_path):
    lk = lake({"ev": files_pipeline("**/*.jsonl")})
    outside = write(tmp_path, "elsewhere/secret.jsonl", '{"secret": "CANARY"}\n')
    write(lk.root, "drop/a.jsonl", '{"id": 1}\n')
    (lk.root / "drop" / "b.jsonl").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"outside the project folder"):
        lk.run("ev")
    assert quarantine(lk) == []


def test_a_link_inside_the_globs_folder_is_read_once(lake):
    lk = lake({"ev": files_pipeline("drop/**/*.jsonl")})
    write(lk.root, "drop/sub/a.jsonl", '{"id": 1}\n')
    (lk.root / "drop" / "link.jsonl").symlink_to("sub/a.jsonl")
    res = lk.run("ev")
    conserved(res)
    assert [(r["id"], r["_source_file"]) for r in lk.rows(TABLE)] == [(1, "drop/sub/a.jsonl")]


def test_declared_roots_are_read_and_their_files_named_as_written(lake, tmp_path):
    """Files outside the project are read only from a declared root; their name (position, file column)
    is the root as written plus the path inside it."""
    shared = tmp_path / "shared"
    write(shared, "a.jsonl", '{"id": 1}\n')
    write(shared, "b.jsonl", '{"id": 2}\n')
    lk = lake({"ev": files_pipeline("../shared/*.jsonl", roots=["../shared"]), "abs": {
        **files_pipeline(f"{shared.as_posix()}/b.jsonl", roots=[shared.as_posix()]), "target": {"table": "raw.abs"}}})
    conserved(lk.run("ev"))
    conserved(lk.run("abs"))
    assert [(r["id"], r["_source_file"]) for r in lk.rows(TABLE, "id")] == [(1, "../shared/a.jsonl"), (2, "../shared/b.jsonl")]
    assert [(r["id"], r["_source_file"]) for r in lk.rows("raw.abs")] == [(2, f"{shared.as_posix()}/b.jsonl")]
    assert sorted(read_position(lk.table(TABLE), "ev")["files"]) == ["../shared/a.jsonl", "../shared/b.jsonl"]


def test_a_file_a_position_names_by_its_absolute_path_is_not_loaded_again(lake, tmp_path):
    """Before roots, a file outside the project was named by its absolute path in the position: such a
    position is still honoured (the file is not reloaded)."""
    shared = tmp_path / "shared"
    a = write(shared, "a.jsonl", '{"id": 1}\n')
    lk = lake({"ev": files_pipeline("../shared/*.jsonl", roots=["../shared"])})
    lk.run("ev")
    table = lk.table(TABLE)
    state = read_position(table, "ev")
    legacy = {"files": {a.resolve().as_posix(): state["files"]["../shared/a.jsonl"]}}
    with table.transaction() as tx:
        tx.set_properties({"icefield.state.ev": json.dumps(legacy)})
    res = lk.run("ev")
    assert res.batches == [] and len(lk.rows(TABLE)) == 1


@pytest.mark.parametrize("project", [None, {"name": "p", "catalog": {"uri": "sqlite:///catalog.db"}, "warehouse": "lake"}])
def test_icefield_state_and_warehouse_are_never_read(lake, project):
    """F12: ``path: "**/*"`` ingested the project's own ``.icefield/`` (catalog DB, WAL, Avro manifests,
    Parquet, metadata JSON), more of it at every run; nor are a catalog database or a warehouse kept
    elsewhere in the project."""
    lk = lake({"ev": files_pipeline("**/*", format="jsonl")}, project)
    write(lk.root, "drop/a.jsonl", '{"id": 1}\n')
    for _ in range(2):
        conserved(lk.run("ev"))
        write(lk.root, f"drop/{time.monotonic_ns()}.jsonl", '{"id": 2}\n')
    names = set(read_position(lk.table(TABLE), "ev")["files"]) | {r["source"] for r in quarantine(lk)}
    assert not [n for n in names if n.startswith((".icefield", "catalog.db", "lake/"))]
    assert "drop/a.jsonl" in names
    if project:
        assert (lk.root / "catalog.db").is_file() and list((lk.root / "lake").rglob("*.parquet"))


# ---------------------------------------------------------------------------------------- F12: debezium files


CDC_PIPE = {"source": {"type": "debezium", "path": "cdc/*.jsonl"}, "target": {"table": "cdc.users", "keys": ["id"]}}


@pytest.mark.parametrize("path", ["../../../etc/passw?", "/etc/hostname"])
def test_a_debezium_glob_out_of_the_project_is_refused_when_the_project_loads(make_project, path):
    """The debezium source reads change-event files too: the same confinement as a files source."""
    root = make_project({"users": {**CDC_PIPE, "source": {"type": "debezium", "path": path}}})
    with pytest.raises(ConfigError, match="outside the project folder"):
        load_project(root, env={})


def test_a_debezium_files_link_out_of_its_folder_is_refused_and_icefield_state_never_read(lake):
    lk = lake({"users": CDC_PIPE})
    write(lk.root, "secrets/token", "CANARY_FILESECRET_13\n")
    write(lk.root, "cdc/0001.jsonl", "null\n")
    (lk.root / "cdc" / "link.jsonl").symlink_to("../secrets/token")
    with pytest.raises(ConfigError) as info:
        lk.run("users")
    assert "cdc/link.jsonl" in str(info.value) and "CANARY" not in str(info.value)
    (lk.root / "cdc" / "link.jsonl").unlink()
    lk2 = lake({"users": {**CDC_PIPE, "source": {"type": "debezium", "path": "**/*"}}})
    write(lk2.root, "cdc/0001.jsonl", "null\n")
    lk2.run("users")
    lk2.run("users")  # the first run made .icefield/ (catalog, metadata): never read as change events
    files = read_position(lk2.table("cdc.users"), "users")["files"] if lk2.catalog.table_exists("cdc.users") else {}
    assert not [n for n in files if n.startswith(".icefield")]


# ------------------------------------------------------------------------------------- F14: odd files


def _two_files(lk: Any, name: str, first: bytes | str) -> Any:
    """Run with the odd file ``name`` and a good JSON Lines file after it (later in name order)."""
    write(lk.root, f"drop/{name}", first)
    write(lk.root, "drop/zz.jsonl", '{"id": 99}\n')
    res = lk.run("ev")
    conserved(res)
    assert 99 in [r["id"] for r in lk.rows(TABLE)], "the later file is loaded"
    return res


def test_a_header_only_csv_as_the_first_file_of_a_new_table(lake):
    """F14: ``Null type (pa.null()) is not supported``: the table was to be created with untyped columns."""
    lk = lake({"ev": files_pipeline()})
    res = _two_files(lk, "a.csv", "id,name\n")
    assert res.rows_in == 1
    write(lk.root, "drop/zzz.csv", "id,name\n7,x\n")
    conserved(lk.run("ev"))
    assert lk.table(TABLE).schema().as_arrow().field("id").type == pa.int64()


@pytest.mark.parametrize(
    ("header", "columns"),
    [
        ("id,name,name\n1,a,b\n", ["id", "name", "name_2"]),
        ("id,,x\n1,a,b\n", ["id", "column_2", "x"]),
        ("id,name,name,name_2\n1,a,b,c\n", ["id", "name", "name_3", "name_2"]),
    ],
)
def test_duplicate_and_empty_csv_headers_are_renamed(lake, header, columns):
    """F14: ``Field "name" exists 2 times`` / ``Can not validate empty avro name``: an empty header is
    ``column_<position>``, a repeated one ``<name>_<n>`` (the next n not taken)."""
    lk = lake({"ev": files_pipeline()})
    _two_files(lk, "a.csv", header)
    (row,) = [r for r in lk.rows(TABLE) if r["id"] == 1]
    assert [row[c] for c in columns[1:]] == list("abc")[: len(columns) - 1]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ('{"id": 1, "": "x"}', "key '' is empty"),
        ('{"id": 1, "__icefield_del": true}', "key '__icefield_del' starts with '__icefield_'"),
        ('{"id": 1, "_source_file": "x"}', "has the name of the file column"),
    ],
)
def test_a_json_key_that_cannot_be_a_column_quarantines_its_record(lake, record, reason):
    """F14: keys ``""`` and ``_source_file`` crashed the run; now the record goes to the quarantine."""
    lk = lake({"ev": files_pipeline()})
    res = _two_files(lk, "a.jsonl", record + '\n{"id": 2}\n')
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (3, 2, 1)
    (q,) = quarantine(lk)
    assert q["check"] == "decode" and reason in q["reason"] and q["source"] == "drop/a.jsonl:1"
    assert json.loads(q["raw"]) == json.loads(record)


def test_a_csv_column_named_like_the_file_column_quarantines_the_file(lake):
    lk = lake({"ev": files_pipeline()})
    res = _two_files(lk, "a.csv", "id,_source_file\n1,x\n")
    assert (res.rows_in, res.rows_quarantined) == (2, 1)
    (q,) = quarantine(lk)
    assert q["check"] == "decode" and q["source"] == "drop/a.csv" and "source.file_column" in q["reason"]
    assert "the whole file is quarantined" in q["reason"] and q["raw"] == "id,_source_file\n1,x\n"


def test_columns_named_like_icefields_working_columns_merge(lake):
    """F14: a JSON key ``__del`` with mode merge crashed (``Field "__del" exists 2 times``): icefield's
    working columns live in the reserved ``__icefield_`` namespace, so any other name is the data's."""
    lk = lake({"ev": files_pipeline(target={"table": TABLE, "mode": "merge", "keys": ["__pos"]})})
    write(lk.root, "drop/a.jsonl", '{"__pos": 1, "__del": true, "__file": "a", "__row": 1}\n{"__pos": 2, "__del": false}\n')
    conserved(lk.run("ev"))
    write(lk.root, "drop/b.jsonl", '{"__pos": 1, "__del": false, "__file": "b", "__row": 2}\n')
    conserved(lk.run("ev"))
    rows = [(r["__pos"], r["__del"], r["__file"], r["__row"]) for r in lk.rows(TABLE, "__pos")]
    assert rows == [(1, False, "b", 2), (2, False, None, None)]


def test_a_utf16_csv_is_decoded(lake):
    """F14: ``UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff``: a CSV file that starts with a
    UTF-16 (or UTF-32) byte order mark is read in that encoding."""
    lk = lake({"ev": files_pipeline()})
    _two_files(lk, "a.csv", "id,name\n1,été\n2,日本\n".encode("utf-16"))
    write(lk.root, "drop/b.csv", "id,name\n3,x\n".encode("utf-32"))
    conserved(lk.run("ev"))
    assert [(r["id"], r["name"]) for r in lk.rows(TABLE, "id")] == [(1, "été"), (2, "日本"), (3, "x"), (99, None)]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("a.txt", "hello\n", "cannot tell the format of 'a.txt'"),
        ("a.parquet", b"PAR1 not parquet at all", "not a readable Parquet file"),
        ("a.csv", "id,__icefield_x\n1,2\n", "'__icefield_x' starts with '__icefield_'"),
    ],
)
def test_a_file_that_cannot_be_decoded_is_one_quarantine_row(lake, name, data, reason):
    lk = lake({"ev": files_pipeline()})
    res = _two_files(lk, name, data)
    assert res.rows_quarantined == 1
    (q,) = quarantine(lk)
    assert (q["check"], q["source"]) == ("decode", f"drop/{name}") and reason in q["reason"]
    assert lk.run("ev").batches == [], "the file is recorded: not tried again until it changes"


def test_a_parquet_column_of_no_type_is_left_out(lake):
    lk = lake({"ev": files_pipeline()})
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [1, 2], "nothing": pa.nulls(2)}), buf)
    _two_files(lk, "a.parquet", buf.getvalue().to_pybytes())
    assert "nothing" not in lk.table(TABLE).schema().as_arrow().names


def test_a_file_removed_between_the_listing_and_the_read_is_skipped(lake, monkeypatch, caplog):
    """F14: a file removed mid-run crashed it with ``FileNotFoundError``; it is skipped with a warning,
    and read by a later run if it is back."""
    from icefield.ingest.files import FilesSource

    lk = lake({"ev": files_pipeline()})
    write(lk.root, "drop/b.jsonl", '{"id": 2}\n')
    listed = FilesSource.list_files
    monkeypatch.setattr(FilesSource, "list_files", lambda self: [lk.root.resolve() / "drop" / "a.jsonl", *listed(self)])
    res = lk.run("ev")
    conserved(res)
    assert [r["id"] for r in lk.rows(TABLE)] == [2]
    assert "drop/a.jsonl: cannot be read" in caplog.text
    write(lk.root, "drop/a.jsonl", '{"id": 1}\n')
    conserved(lk.run("ev"))
    assert [r["id"] for r in lk.rows(TABLE, "id")] == [1, 2]


def test_a_file_removed_between_its_fingerprint_and_its_read_is_skipped(lake, monkeypatch, caplog):
    import icefield.ingest.files as files

    lk = lake({"ev": files_pipeline()})
    write(lk.root, "drop/a.jsonl", '{"id": 1}\n')
    write(lk.root, "drop/b.jsonl", '{"id": 2}\n')
    real = files._snapshot

    def snapshot_then_remove(path: Path, text: bool) -> Any:
        snap = real(path, text)
        if path.name == "a.jsonl":
            path.unlink()
        return snap

    monkeypatch.setattr(files, "_snapshot", snapshot_then_remove)
    conserved(lk.run("ev"))
    assert [r["id"] for r in lk.rows(TABLE)] == [2]
    assert "drop/a.jsonl: cannot be read" in caplog.text and "the next run tries it again" in caplog.text


# ------------------------------------------------------------------------------------------------- F22


def test_a_json_lines_file_with_a_byte_order_mark_loads_its_first_record(lake):
    """F22: ``Unexpected UTF-8 BOM``: the first, valid record was quarantined."""
    lk = lake({"ev": files_pipeline()})
    res = _two_files(lk, "a.jsonl", b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n')
    assert (res.rows_committed, res.rows_quarantined) == (3, 0)


_WRITER = """
import sys, time
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "ab", buffering=0) as f:
    for i in range(n):
        line = ('{"id": %d, "pad": "%s"}\\n' % (i, "x" * 40)).encode()
        f.write(line[:20])
        time.sleep(0.002)
        f.write(line[20:])
"""


def test_a_file_appended_while_read_leaves_no_stale_quarantine_row(lake):
    """F22: a file appended to (each line in two writes) while runs read it: a run read the half-written
    last line and quarantined it; the next run replaced the file's rows, but the stale quarantine row
    stayed (table plus quarantine one more than the lines). Only the fingerprinted bytes are read, and an
    unfinished last line of a growing file is left for the next run."""
    lk = lake({"ev": {**files_pipeline("drop/*.jsonl"), "batch_size": 100}})
    path = write(lk.root, "drop/a.jsonl", b"")
    n = 1500
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)])
    try:
        runs = 0
        while writer.poll() is None:
            conserved(lk.run("ev"))
            runs += 1
    finally:
        writer.wait(timeout=60)
    conserved(lk.run("ev"))
    assert runs >= 2
    ids = [r["id"] for r in lk.rows(TABLE, "id")]
    assert ids == list(range(n)), "each line once"
    assert quarantine(lk) == [], "no half-written line was quarantined"


def test_a_finished_file_without_a_final_line_end_loads_its_last_record(lake):
    lk = lake({"ev": files_pipeline()})
    path = write(lk.root, "drop/a.jsonl", '{"id": 1}\n{"id": 2}')
    old = time.time() - 5
    os.utime(path, (old, old))
    res = lk.run("ev")
    conserved(res)
    assert res.rows_committed == 2 and lk.run("ev").batches == []
