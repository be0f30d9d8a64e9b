"""What an engine's workers make of the files a ``files`` source chose (:func:`decode_files_in_engine`, run here
without an engine): one row per record, typed as the table or marked with the source's own reason, each with its
file and record index; a file whose bytes are not the fingerprinted ones, or that cannot be decoded whole, is
marked for the run to read itself. (Spark running it: ``tests/integration/test_spark_files.py``.)"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icefield.config.models import FilesSourceConfig
from icefield.engines.base import SUSPECT_COLUMN
from icefield.ingest.files import (
    ENGINE_CHECK,
    ENGINE_COORDS,
    ENGINE_FILE,
    ENGINE_RAW,
    ENGINE_REASON,
    ENGINE_RECORD,
    ENGINE_VALUE,
    _EngineSpec,
    decode_files_in_engine,
    files_engine_schema,
)

SCHEMA = pa.schema([("id", pa.int64()), ("kind", pa.large_string()), ("amount", pa.float64()), ("_source_file", pa.large_string())])


def _decode(files: dict[str, tuple[bytes, str]], fingerprinted: dict[str, bytes] | None = None) -> list[dict[str, Any]]:
    """Decode ``files`` (name -> (content, format)) as an engine's worker does; ``fingerprinted``: the bytes the
    source fingerprinted, when not the content."""
    table: dict[str, tuple[int, str, int, str, str]] = {}
    for i, (name, (content, fmt)) in enumerate(files.items()):
        seen = (fingerprinted or {}).get(name, content)
        table[f"/drop/{name}"] = (i, name, len(seen), f"{len(seen)}:{hashlib.sha256(seen).hexdigest()}", fmt)
    spec = _EngineSpec(FilesSourceConfig(type="files", path="drop/*"), None, SCHEMA, table)
    out = files_engine_schema({f.name: f.type for f in SCHEMA}, "_source_file")
    batch = pa.record_batch(
        {"path": [f"file:/drop/{n}" for n in files], "content": pa.array([c for c, _ in files.values()], pa.binary())}
    )
    rows = [rb.to_pylist() for rb in decode_files_in_engine(iter([batch]), spec, out)]
    return [r for part in rows for r in part]


def test_csv_records_are_typed_or_refused_with_the_sources_reasons() -> None:
    rows = _decode({"a.csv": (b"id,kind,amount\n1,a,1.5\n2,b,12abc\n3,c\n4,d,-2\n", "csv")})
    assert [(r[ENGINE_FILE], r[ENGINE_RECORD]) for r in rows] == [(0, -1), (0, 0), (0, 3), (0, 1), (0, 2)]
    good = [r for r in rows if not r[SUSPECT_COLUMN]]
    assert [(r["id"], r["kind"], r["amount"], r["_source_file"], r[ENGINE_COORDS]) for r in good] == [
        (1, "a", 1.5, "a.csv", "a.csv:row 1"),
        (4, "d", -2.0, "a.csv", "a.csv:row 4"),
    ]
    assert json.loads(good[1][ENGINE_RAW]) == {"id": "4", "kind": "d", "amount": "-2"}  # for a check that refuses it
    refused = {r[ENGINE_COORDS]: (r[ENGINE_CHECK], r[ENGINE_REASON]) for r in rows if r[ENGINE_REASON] is not None}
    assert refused["a.csv:row 3"] == ("decode", "decode: expected 3 fields, got 2")
    assert refused["a.csv:row 2"][0] == "type" and "12abc" in refused["a.csv:row 2"][1]


def test_json_lines_records_the_table_cannot_take_keep_their_bytes_for_the_run() -> None:
    content = b'{"id": 1, "kind": "a", "amount": 1}\n\n{"id": 2, "note": "new"}\nnot json\n'
    rows = _decode({"e.jsonl": (content, "jsonl")})[1:]
    assert [(r[ENGINE_RECORD], r[ENGINE_COORDS], r[SUSPECT_COLUMN]) for r in rows] == [
        (0, "e.jsonl:1", False),
        (1, "e.jsonl:3", True),  # a key the table lacks: decoded again where the table evolves
        (2, "e.jsonl:4", True),
    ]
    assert (rows[0]["id"], rows[0]["amount"]) == (1, 1.0)
    assert [r[ENGINE_VALUE] for r in rows[1:]] == [b'{"id": 2, "note": "new"}\n', b"not json\n"]


def test_parquet_rows_are_cast_to_the_tables_types() -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [7, 8], "kind": ["x", "y"], "amount": ["2.5", "oops"]}), buf)
    rows = _decode({"p.parquet": (buf.getvalue(), "parquet")})[1:]
    assert [(r["id"], r["amount"], r[ENGINE_COORDS], r[ENGINE_CHECK]) for r in rows] == [
        (7, 2.5, "p.parquet#0", None),
        (None, None, "p.parquet#1", "type"),
    ]


def test_a_file_not_as_fingerprinted_or_not_decodable_whole_is_left_to_the_run() -> None:
    rows = _decode(
        {"a.csv": (b"id,kind,amount\n1,a,2.5\n", "csv"), "b.parquet": (b"PAR1 not parquet", "parquet")},
        fingerprinted={"a.csv": b"id,kind,amount\n9,z,9.5\n"},
    )
    # Each file has its row of record -1 (it was read) and one of file -ordinal - 1 (read it in the run).
    assert [(r[ENGINE_FILE], r[ENGINE_RECORD]) for r in rows] == [(0, -1), (-1, -1), (1, -1), (-2, -1)]
