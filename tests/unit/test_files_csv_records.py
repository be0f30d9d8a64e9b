"""CSV files whose records are of the wrong shape, not UTF-8, or longer than Arrow's read block: no value
fails the file, every bad record is quarantined once with its coordinates and exact bytes, and a run
stopped between chunks resumes at the right record (positions count records, good or bad)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TABLE = "raw.items"


def _lake(lake: Any, batch_size: int = 4) -> Any:
    return lake(
        {
            "items": {
                "source": {"type": "files", "path": "data/*.csv", "columns": {"id": "long", "name": "string", "price": "double"}},
                "target": {"table": TABLE},
                "batch_size": batch_size,
                "checks": [{"not_null": ["id"]}],
            }
        }
    )


def _write(root: Path, lines: list[bytes]) -> Path:
    path = root / "data" / "items.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"id,name,price\n" + b"".join(line + b"\n" for line in lines))
    return path


def _records(tolerant: bool) -> tuple[list[bytes], dict[str, tuple[str, bytes]]]:
    """17 records: good ones (id = record number) and bad ones, by record number: expected (check, bytes)."""
    lines = [b"%d,n%d,%d.5" % (i, i, i) for i in range(1, 18)]
    bad = {
        3: ("decode", b"3,short"),
        4: ("decode", b"4,too,many,fields"),
        7: ("decode", b"7,ab\xffcd,1.0"),
        8: ("type", b"8,x,NaN"),
        11: ("not_null", b",no id,2.0"),
        12: ("type", b"12,x,12abc"),
    }
    if tolerant:
        # Arrow fails on a short record that is not UTF-8; the file is read on with Python's csv module.
        bad[6] = ("decode", b"6,\xff")
    for n, (_, data) in bad.items():
        lines[n - 1] = data
    return lines, {f"data/items.csv:row {n}": v for n, v in bad.items()}


def _exact(q: dict[str, Any]) -> bytes:
    import csv
    import io
    import json

    if q["raw_bytes"] is not None:
        return bytes(q["raw_bytes"])
    if q["check"] == "decode":
        return str(q["raw"]).encode()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if v is None else v for v in json.loads(q["raw"]).values()])
    return buf.getvalue().encode()


@pytest.mark.parametrize("tolerant", [False, True], ids=["arrow", "tolerant"])
@pytest.mark.parametrize("first_batches", [None, 1, 2, 3])
def test_bad_records_are_quarantined_once_across_stops(lake, tolerant, first_batches):
    lk = _lake(lake)
    lines, bad = _records(tolerant)
    _write(lk.root, lines)
    runs = [lk.run("items", max_batches=first_batches)] if first_batches else []
    runs.append(lk.run("items"))
    assert all(r.conserved for r in runs)
    assert sum(r.rows_in for r in runs) == 17
    assert sum(len(r.batches) for r in runs) == 5  # ceil(17 / 4) chunks of records, bad ones included
    good = sorted(n for n in range(1, 18) if f"data/items.csv:row {n}" not in bad)
    assert [r["id"] for r in lk.rows(TABLE, "id")] == good
    quarantine = lk.rows(TABLE + "__quarantine", "source")
    assert sorted(q["source"] for q in quarantine) == sorted(bad)
    for q in quarantine:
        check, data = bad[q["source"]]
        assert (q["check"], _exact(q)) == (check, data)
    assert lk.run("items").batches == []


def test_a_record_longer_than_a_read_block_is_loaded(lake, monkeypatch):
    from icefield.ingest import files

    monkeypatch.setattr(files, "_CSV_BLOCK", 1 << 20)  # Arrow reads 1 MB blocks at first
    lk = _lake(lake, batch_size=100)
    big = "x" * (3 << 20)
    _write(lk.root, [b"1,a,1.0", f"2,{big},2.0".encode(), b"3,short", b"4,d,4.0"])
    res = lk.run("items")
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (4, 3, 1)
    rows = lk.rows(TABLE, "id")
    assert [r["id"] for r in rows] == [1, 2, 4] and rows[1]["name"] == big
    (q,) = lk.rows(TABLE + "__quarantine")
    assert (q["source"], q["raw"]) == ("data/items.csv:row 3", "3,short")


def test_only_explicit_null_markers_are_null(lake):
    lk = _lake(lake, batch_size=100)
    _write(lk.root, [b"1,NA,1.0", b"2,N/A,", b"3,NULL,NULL", b"4,\\N,2.0", b"5,nan,NaN"])
    res = lk.run("items")
    assert (res.rows_committed, res.rows_quarantined) == (4, 1)
    assert [(r["id"], r["name"], r["price"]) for r in lk.rows(TABLE, "id")] == [
        (1, "NA", 1.0),
        (2, "N/A", None),
        (3, None, None),
        (4, None, 2.0),
    ]
    (q,) = lk.rows(TABLE + "__quarantine")
    assert q["source"] == "data/items.csv:row 5" and "not a finite number" in q["reason"]


def test_arrow_fails_in_the_middle_of_a_file_and_the_tolerant_reader_reads_on(lake, caplog, monkeypatch):
    """The bad record lies past Arrow's first block (1 MB here): the chunks before it come from Arrow, the
    rest from Python's csv module, which starts at the first record not yet handed out."""
    from icefield.ingest import files

    monkeypatch.setattr(files, "_CSV_BLOCK", 1 << 20)
    lk = _lake(lake, batch_size=20_000)
    lines = [b"%d,name-%d,%d.5" % (i, i, i) for i in range(1, 100_001)]
    lines[89_999] = b"90000,\xff"  # short and not UTF-8
    lines[94_999] = b"95000,short"
    _write(lk.root, lines)
    with caplog.at_level("INFO", logger="icefield.ingest.files"):
        res = lk.run("items")
    (switch,) = [r.getMessage() for r in caplog.records if "tolerant CSV reader" in r.getMessage()]
    assert "reading on from record 80001 " in switch  # after four chunks from Arrow
    assert (res.rows_in, res.rows_committed, res.rows_quarantined) == (100_000, 99_998, 2)
    assert [b.rows_in for b in res.batches] == [20_000] * 5
    ids = [r["id"] for r in lk.table(TABLE).scan(selected_fields=("id",)).to_arrow().to_pylist()]
    assert sorted(ids) == [i for i in range(1, 100_001) if i not in (90_000, 95_000)]
    quarantine = lk.rows(TABLE + "__quarantine", "source")
    assert [(q["source"], q["raw_bytes"]) for q in quarantine] == [
        ("data/items.csv:row 90000", b"90000,\xff"),
        ("data/items.csv:row 95000", None),
    ]
