"""Battery row of issue 13: a canary secret seeded into every kind of setting appears in no byte icefield
prints or writes.

Each setting that may hold a secret gets its own canary: a sql source URL (a SQLite path through
``${env:}``, and one that does not exist, so the run fails on it), ``${file:}`` secrets, the catalog URI
(a password holding ``@``), a Kafka bootstrap server and SASL password (a closed port: no broker),
``catalog.properties`` and ``target.properties``. icefield commands run as real processes, the failing
ones included (run, run --json, -v run, -vv --log-format json run, tables, show, quarantine list/show,
checks, sql); then stdout, stderr and every file the project holds (warehouse Parquet, Avro manifests,
metadata JSON, catalog database and WAL) are scanned for each canary in plain, hex, URL-encoded and
UTF-16 form: Parquet values and key-value metadata decoded, Avro blocks decompressed. The PostgreSQL
source (a password holding ``@``) is in ``tests/integration/test_canary_secrets_postgres.py``.

With the code before the fix, the run error line printed the SQLite path of a failing pipeline (F7) and
the catalog URI's password tail was printed as a host name (F8)."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

CANARIES = {
    "sql source path (${env:})": "CANARYsqlitepath0a1",
    "missing sql source path (${env:})": "CANARYsqlitemissing0b2",
    "catalog.properties (${file:})": "CANARYfilesecret0c3",
    "catalog.properties (${env:})": "CANARYcatalogprop1a8",
    "catalog URI password, before @": "CANARYcatalogpw0d4",
    "catalog URI password, after @": "CANARYcatalogtail0d5",
    "Kafka bootstrap host (${env:})": "canarykafkahost0e6",
    "Kafka SASL password (${file:})": "CANARYkafkasasl0f7",
    "target.properties (${env:})": "CANARYtargetprop2b9",
}
INPUTS = {"secrets"}
"""Folders of the project that hold the secrets as the user wrote them: not icefield's output."""


def forms(canary: str) -> dict[str, bytes]:
    """The byte forms a leaked canary may take in a file or a stream (a form equal to another once)."""
    every = {
        "plain": canary.encode(),
        "hex": canary.encode().hex().encode(),
        "HEX": canary.encode().hex().upper().encode(),
        "url-encoded": quote(canary, safe="").encode(),
        "utf-16-le": canary.encode("utf-16-le"),
        "utf-16-be": canary.encode("utf-16-be"),
    }
    unique: dict[str, bytes] = {}
    for form, needle in every.items():
        if needle not in unique.values():
            unique[form] = needle
    return unique


@dataclass
class Output:
    what: str
    data: bytes


def _avro_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed data blocks of an Avro container file (the header is in the raw bytes)."""
    from pyiceberg.avro.decoder import new_decoder
    from pyiceberg.avro.file import META_SCHEMA, SYNC_SIZE, AvroFileHeader
    from pyiceberg.avro.resolver import construct_reader

    decoder = new_decoder(path.read_bytes())
    header = construct_reader(META_SCHEMA, {-1: AvroFileHeader}).read(decoder)
    codec = header.compression_codec()
    while True:
        try:
            decoder.read_int()  # records in the block
        except EOFError:
            return
        block = decoder.read_bytes()
        yield codec.decompress(block) if codec else block
        decoder.read(SYNC_SIZE)


def _parquet_text(path: Path) -> bytes:
    """Every value, column name and key-value metadata entry of a Parquet file, as text."""
    import pyarrow.parquet as pq

    parts: list[str] = []
    meta = pq.read_metadata(path)
    for k, v in (meta.metadata or {}).items():
        parts += [k.decode("utf-8", "replace"), v.decode("utf-8", "replace")]
    table = pq.read_table(path)
    parts += table.schema.names
    for column in table.columns:
        for value in column.to_pylist():
            parts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(parts).encode("utf-8")


def written_files(root: Path) -> Iterator[Output]:
    """Every file under the project (inputs aside), raw, plus the decoded content of Parquet, Avro and
    compressed metadata files."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in INPUTS:
            continue
        data = path.read_bytes()
        yield Output(f"file {rel}", data)
        if path.suffix == ".parquet":
            yield Output(f"file {rel} (decoded values)", _parquet_text(path))
        elif path.suffix == ".avro":
            yield Output(f"file {rel} (decompressed blocks)", b"\n".join(_avro_blocks(path)))
        elif data[:2] == b"\x1f\x8b":
            yield Output(f"file {rel} (gunzipped)", gzip.decompress(data))


def leaks(outputs: list[Output], canaries: dict[str, str]) -> list[str]:
    found = []
    for out in outputs:
        for setting, canary in canaries.items():
            for form, needle in forms(canary).items():
                if needle in out.data:
                    at = out.data.index(needle)
                    context = out.data[max(0, at - 80) : at + len(needle) + 40]
                    found.append(f"{setting} canary ({form}) in {out.what}: ...{context!r}...")
    return found


# ------------------------------------------------------------------ the project


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def _project(root: Path) -> dict[str, str]:
    """The project with a canary in each setting; returns the environment its commands need."""
    import sqlite3

    src = root / "src" / f"{CANARIES['sql source path (${env:})']}.db"
    src.parent.mkdir(parents=True)
    con = sqlite3.connect(src)
    con.execute("create table orders (id integer primary key, v text)")
    con.executemany("insert into orders values (?, ?)", [(i, None if i == 3 else f"v{i}") for i in range(1, 11)])
    con.commit()
    con.close()
    _write(root / "secrets" / "catprop", CANARIES["catalog.properties (${file:})"] + "\n")
    _write(root / "secrets" / "kafka_pw", CANARIES["Kafka SASL password (${file:})"] + "\n")
    # Absolute ${file:} paths: these settings are resolved without the project folder (a relative path
    # would be read from the working directory).
    _write(root / "icefield.yaml", f"""\
        name: canary
        catalog:
          name: icefield
          properties:
            canary.token: "${{env:CANARY_CATPROP}}"
            canary.secret: "${{file:{root / 'secrets' / 'catprop'}}}"
        warehouse: .icefield/warehouse
    """)
    _write(root / "pipelines" / "orders.yaml", """\
        name: orders
        source: {type: sql, url: "sqlite:///${env:CANARY_SQLITE}", table: orders, cursor: id}
        target: {table: raw.orders}
        checks:
          - not_null: [v]
        gates:
          - row_count: {min: 1}
    """)
    _write(root / "pipelines" / "missing.yaml", """\
        name: missing
        source: {type: sql, url: "sqlite:///${env:CANARY_MISSING}", table: orders, cursor: id}
        target: {table: raw.missing}
    """)
    _write(root / "pipelines" / "k.yaml", f"""\
        name: k
        source:
          type: kafka
          bootstrap_servers: "${{env:CANARY_KAFKA_BOOT}}:1"
          topic: events
          properties:
            security.protocol: SASL_PLAINTEXT
            sasl.mechanism: PLAIN
            sasl.username: icefield
            sasl.password: "${{file:{root / 'secrets' / 'kafka_pw'}}}"
        target: {{table: raw.k}}
    """)
    return {
        "CANARY_SQLITE": f"src/{CANARIES['sql source path (${env:})']}.db",
        "CANARY_MISSING": f"src/{CANARIES['missing sql source path (${env:})']}.db",
        "CANARY_CATPROP": CANARIES["catalog.properties (${env:})"],
        "CANARY_KAFKA_BOOT": CANARIES["Kafka bootstrap host (${env:})"],
    }


def _icefield(root: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[bytes], list[Output]]:
    proc = subprocess.run(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), *args],
        capture_output=True, check=False, env={**os.environ, **env}, timeout=300,
    )
    what = "icefield " + " ".join(args)
    return proc, [Output(f"stdout of `{what}`", proc.stdout), Output(f"stderr of `{what}`", proc.stderr)]


def test_no_canary_in_any_byte_printed_or_written(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    env = _project(root)
    outputs: list[Output] = []
    codes: dict[tuple[str, ...], int] = {}

    def run(*args: str, extra: dict[str, str] | None = None, label: tuple[str, ...] = ()) -> None:
        proc, printed = _icefield(root, {**env, **(extra or {})}, *args)
        codes[(*label, *args)] = proc.returncode
        outputs.extend(printed)

    run("run", "orders")  # creates the catalog before anything runs side by side
    # A broker that is down makes each Kafka run wait for its timeout: run them beside the rest.
    kafka_runs = [("run", "k"), ("-v", "run", "k"), ("-vv", "--log-format", "json", "--json", "run", "k")]
    with concurrent.futures.ThreadPoolExecutor(len(kafka_runs)) as pool:
        kafka = [pool.submit(_icefield, root, env, *args) for args in kafka_runs]
        for args in [
            ("--json", "run", "orders"),
            ("-v", "run", "orders"),
            ("-vv", "--log-format", "json", "run", "orders"),
            ("run", "missing"),
            ("--json", "run", "missing"),
            ("-v", "run", "missing"),
            ("-vv", "--log-format", "json", "--json", "run", "missing"),
            ("run",),
            ("tables",),
            ("--json", "tables"),
            ("show", "raw.orders"),
            ("--json", "show", "raw.orders"),
            ("show", "raw.orders__quarantine"),
            ("quarantine", "list"),
            ("quarantine", "show", "raw.orders"),
            ("--json", "quarantine", "show", "raw.orders"),
            ("checks", "raw.orders"),
            ("--json", "checks", "raw.orders"),
            ("sql", "select * from raw.orders"),
            ("sql", "select * from raw.orders", "--format", "csv"),
            ("--json", "sql", "select * from raw.orders"),
            ("sql", "select * from raw.nope"),
            ("show", "raw.nope"),
        ]:
            run(*args)
        for args, future in zip(kafka_runs, kafka, strict=True):
            proc, printed = future.result()
            codes[args] = proc.returncode
            outputs.extend(printed)

    # The catalog URI's password holds `@`; the server is down (a closed port).
    catalog = {
        "CANARY_CATPW": f"{CANARIES['catalog URI password, before @']}@{CANARIES['catalog URI password, after @']}",
        "ICEFIELD__CATALOG__URI": "postgresql+psycopg2://app:${env:CANARY_CATPW}@127.0.0.1:1/lake",
    }
    for args in [("tables",), ("--json", "tables"), ("-vv", "tables"), ("-vv", "--log-format", "json", "run", "orders")]:
        run(*args, extra=catalog, label=("catalog down",))

    outputs.extend(written_files(root))
    found = leaks(outputs, CANARIES)
    assert not found, "\n".join(found[:20])

    # The scenario really ran: the good pipeline committed and quarantined, every failure failed.
    for args in [("run", "orders"), ("tables",), ("show", "raw.orders"), ("quarantine", "show", "raw.orders"), ("checks", "raw.orders")]:
        assert codes[args] == 0, (args, codes)
    for args, code in codes.items():
        if "missing" in args or "k" in args or "raw.nope" in args or args[0] == "catalog down" or args == ("run",):
            assert code != 0, (args, codes)
    assert list((root / ".icefield" / "warehouse").rglob("*.parquet")), "nothing was written"
    assert list((root / ".icefield" / "warehouse").rglob("*.avro")), "no manifest was written"


def test_no_canary_from_target_properties(tmp_path: Path) -> None:
    """A secret reference in ``target.properties`` (table properties are stored in the table's metadata,
    which every engine reads) is never written resolved: either refused, or kept as the reference."""
    root = tmp_path / "proj"
    _write(root / "icefield.yaml", "name: canary\n")
    _write(root / "data" / "a.jsonl", '{"id": 1}\n')
    _write(root / "pipelines" / "p.yaml", """\
        name: p
        source: {type: files, path: "data/*.jsonl"}
        target: {table: raw.p, properties: {canary.token: "${env:CANARY_TARGET}"}}
    """)
    env = {"CANARY_TARGET": CANARIES["target.properties (${env:})"]}
    outputs: list[Output] = []
    for args in [("run",), ("--json", "run"), ("-vv", "--log-format", "json", "run"), ("show", "raw.p"), ("--json", "show", "raw.p")]:
        outputs.extend(_icefield(root, env, *args)[1])
    outputs.extend(written_files(root))
    found = leaks(outputs, {"target.properties (${env:})": CANARIES["target.properties (${env:})"]})
    assert not found, "\n".join(found[:20])
