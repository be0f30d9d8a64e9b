"""What the CLI prints and returns: secrets redacted at every output boundary, text from data never read
as Rich markup, one JSON document per command, exit codes scripts can trust, and no library noise.

Finding ids (issue 13) are in each test's docstring."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from icefield.cli import cli

# The exit codes as documented (README): literal here, so that a change of them fails this test.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSIENT, EXIT_INTERRUPTED = 0, 1, 2, 75, 130

CANARY = "CANARY_cli_7f3a91"


def _project(root: Path, rows: str = '{"id": 1, "v": "x"}\n{"id": null, "v": "z"}\n') -> Path:
    res = CliRunner().invoke(cli, ["init", str(root)])
    assert res.exit_code == 0, res.output
    (root / "data" / "events" / "a.jsonl").write_text(rows, encoding="utf-8")
    return root


def _pipeline(root: Path, name: str, body: str) -> None:
    (root / "pipelines" / f"{name}.yaml").write_text(textwrap.dedent(body), encoding="utf-8")


def _icefield(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``icefield ARGS`` in a real process (the entry point, its handlers and its streams)."""
    return subprocess.run(
        [sys.executable, "-m", "icefield.cli", *args],
        capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout,
    )


def _one_document(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON document, got {len(lines)}: {stdout[:2000]}"
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


# ------------------------------------------------------------------ F7: redaction at every boundary


def test_the_run_error_line_and_its_json_document_are_redacted(tmp_path: Path) -> None:
    """F7: the `run` error line printed the SQLite path held in ${env:}, in text and in the first of two
    --json documents. Now both are redacted, --json prints one document, and the exit code is 2."""
    root = _project(tmp_path / "p")
    _pipeline(root, "sqlitemissing", """\
        name: sqlitemissing
        source: {type: sql, url: "sqlite:///${env:SQLITE_NAME}", table: orders, cursor: updated_at}
        target: {table: raw.orders}
    """)
    env = {"SQLITE_NAME": f"{CANARY}.db"}
    text = _icefield("--project", str(root), "run", "sqlitemissing", env=env)
    assert text.returncode == EXIT_USAGE, text.stderr
    assert "source.url: the SQLite database" in text.stderr and "does not exist" in text.stderr
    assert CANARY not in text.stdout + text.stderr
    as_json = _icefield("--project", str(root), "--json", "run", "sqlitemissing", env=env)
    assert as_json.returncode == EXIT_USAGE
    doc = _one_document(as_json.stdout)
    assert doc["status"] == "failed" and doc["type"] == "ConfigError" and "does not exist" in doc["error"]
    assert doc["results"][0]["status"] == "failed"
    assert CANARY not in as_json.stdout + as_json.stderr


def test_a_refused_kafka_property_does_not_print_its_secret_value(tmp_path: Path) -> None:
    """F7: the message refusing a Kafka property icefield forces (enable.auto.commit...) echoed its
    resolved value."""
    root = _project(tmp_path / "p")
    _pipeline(root, "k", """\
        name: k
        source: {type: kafka, bootstrap_servers: "127.0.0.1:1", topic: t, properties: {enable.auto.commit: "${env:AUTO}"}}
        target: {table: raw.k}
    """)
    proc = _icefield("--project", str(root), "run", "k", env={"AUTO": f"true-{CANARY}"})
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "enable.auto.commit='***' is not allowed" in " ".join(proc.stderr.split())
    assert CANARY not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ F8: a password with URL characters


@pytest.mark.parametrize("password", [f"{CANARY}@LEAKEDTAIL77", f"{CANARY}/p:q#r%s?t@u"])
def test_a_password_with_url_characters_stays_the_password(tmp_path: Path, password: str) -> None:
    """F8: a password holding `@` (or `/ : # % ?`) substituted raw into the URL was split by SQLAlchemy at
    the first `@`, its tail printed as a host name ("could not translate host name LEAKEDTAIL77@..."), and
    the run exited 75. Quoted, the URL reaches 127.0.0.1 (closed port: unreachable, 75) and no part of the
    password is printed."""
    root = _project(tmp_path / "p")
    _pipeline(root, "pg", """\
        name: pg
        source: {type: sql, url: "postgresql+psycopg2://app:${env:PG_PW}@127.0.0.1:1/shop", table: orders, cursor: id}
        target: {table: raw.orders}
    """)
    proc = _icefield("--project", str(root), "--json", "run", "pg", env={"PG_PW": password})
    doc = _one_document(proc.stdout)
    assert proc.returncode == EXIT_TRANSIENT, doc
    assert "127.0.0.1" in doc["error"] and "translate host name" not in doc["error"]
    tails = {password.split("@", 1)[1], *re.split(r"[@/:#%?]", password)}
    for part in (p for p in tails if len(p) >= 4):
        assert part not in proc.stdout + proc.stderr


def test_a_catalog_uri_password_with_an_at_sign_stays_the_password(tmp_path: Path) -> None:
    """F8, the catalog URI: the tail of the password was printed as a host name."""
    root = _project(tmp_path / "p")
    env = {
        "PG_PW": f"{CANARY}@LEAKEDTAIL77",
        "ICEFIELD__CATALOG__URI": "postgresql+psycopg2://app:${env:PG_PW}@127.0.0.1:1/lake",
    }
    proc = _icefield("--project", str(root), "--json", "tables", env=env)
    assert proc.returncode != EXIT_OK
    doc = _one_document(proc.stdout)
    assert "translate host name" not in doc["error"]
    assert "LEAKEDTAIL77" not in proc.stdout + proc.stderr and CANARY not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ F9, F19: whatever ends a command

_BOOM = """\
import os, sys
import icefield.catalog
import icefield.pipeline.runner as runner
from icefield.config.secrets import resolve
from icefield.errors import SourceError

def boom(*args, **kwargs):
    raise ValueError("unexpected state near " + os.environ["SECRET_DB"])

def wrapped(*args, **kwargs):
    try:
        raise ValueError("unexpected state near " + resolve("${env:SECRET_DB}"))
    except ValueError as e:
        raise SourceError("the catalog failed") from e

runner._run_batch = boom
if os.environ["BOOM"] == "wrapped":
    icefield.catalog.open_catalog = wrapped
from icefield.cli import main
main()  # reads sys.argv[1:]
"""


def _boom(root: Path, *args: str, kind: str = "internal") -> subprocess.CompletedProcess[str]:
    """Run icefield with a failure planted after a secret was resolved: an exception icefield does not
    expect in the runner (``internal``), or an icefield error wrapping a foreign exception whose message
    holds the secret when the catalog opens (``wrapped``: the cause shows in the traceback)."""
    return subprocess.run(
        [sys.executable, "-c", _BOOM, "--project", str(root), *args],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "SECRET_DB": f"{CANARY}.db", "BOOM": kind},
    )


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Path:
    import sqlite3

    root = _project(tmp_path / "p")
    db = root / f"{CANARY}.db"
    con = sqlite3.connect(db)
    con.execute("create table orders (id integer primary key, v text)")
    con.execute("insert into orders values (1, 'a'), (2, 'b')")
    con.commit()
    con.close()
    _pipeline(root, "orders", """\
        name: orders
        source: {type: sql, url: "sqlite:///${env:SECRET_DB}", table: orders, cursor: id}
        target: {table: raw.orders}
    """)
    return root


def test_an_unexpected_exception_is_one_redacted_internal_error_line(sqlite_project: Path) -> None:
    """F9/F19: an uncaught exception printed a raw Python traceback (unredacted) and exited 1 like any
    failed run. Now: one line "internal error: ...; please report", redacted, exit 1."""
    proc = _boom(sqlite_project, "run", "orders")
    assert proc.returncode == EXIT_FAILED
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: internal error: builtins.ValueError: unexpected state near ***") and "please report" in line
    assert CANARY not in proc.stdout + proc.stderr


def test_an_unexpected_exception_gives_one_json_document(sqlite_project: Path) -> None:
    proc = _boom(sqlite_project, "--json", "run", "orders")
    assert proc.returncode == EXIT_FAILED
    doc = _one_document(proc.stdout)
    assert doc["type"] == "InternalError" and doc["error"].startswith("internal error:")
    assert CANARY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_tracebacks_are_redacted_with_verbose(sqlite_project: Path, log_format: str) -> None:
    """F9: with -v the traceback is shown, redacted in the text format too (only JSON logs were)."""
    proc = _boom(sqlite_project, "-v", "--log-format", log_format, "run", "orders")
    assert proc.returncode == EXIT_FAILED
    assert "Traceback" in proc.stderr and "ValueError" in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_wrapped_cause_in_the_traceback_is_redacted_with_verbose(sqlite_project: Path, log_format: str) -> None:
    """F9: `guarded` logs an icefield error with its traceback under -v, and the text formatter printed
    exc_info (the wrapped cause's message included) without redaction; only the JSON formatter redacted."""
    proc = _boom(sqlite_project, "-v", "--log-format", log_format, "tables", kind="wrapped")
    assert proc.returncode == EXIT_FAILED
    assert "Traceback" in proc.stderr and "unexpected state near ***" in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr


def _slow_project(root: Path) -> Path:
    _project(root, rows="")
    for i in range(400):
        (root / "data" / "events" / f"f{i:04d}.jsonl").write_text(f'{{"id": {i}, "v": "x"}}\n', encoding="utf-8")
    text = (root / "icefield.yaml").read_text(encoding="utf-8")
    (root / "icefield.yaml").write_text(text + "batch_size: 1\n", encoding="utf-8")
    return root


def test_sigint_during_a_run_exits_130_with_one_json_document(tmp_path: Path) -> None:
    """F19: Ctrl-C during `run` printed "Aborted!", exited 1 and left stdout empty with --json."""
    root = _slow_project(tmp_path / "p")
    proc = subprocess.Popen(
        [sys.executable, "-m", "icefield.cli", "--project", str(root), "--json", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((root / ".icefield" / "warehouse").rglob("*.parquet")):  # the run has committed a batch
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, (out, err)
    doc = _one_document(out)
    assert doc["status"] == "interrupted" and doc["type"] == "InterruptedRunError"
    assert "Traceback" not in err and "Aborted" not in err


# ------------------------------------------------------------------ F19: exit codes


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """F19, F22: a missing table for `checks` (it said "No gate results", exit 0), a query with a syntax
    error, an unknown column or table (exit 1: "a run failed"), a table argument that is not
    namespace.table, negative counts and sizes: all usage errors (exit 2), each one line."""
    root = _project(tmp_path / "p")
    assert _icefield("--project", str(root), "run").returncode == EXIT_OK
    cases = {
        ("checks", "raw.nope"): "no table 'raw.nope'",
        ("sql", "selec 1"): "syntax error",
        ("sql", "select nope from raw.events"): '"nope" not found',
        ("sql", "select * from raw.nope"): "raw.nope",
        ("show", "notqualified"): "not a table name",
        ("show", "raw.events", "--snapshots", "-1"): "--snapshots",
        ("compact", "raw.events", "--target-file-size", "-1"): "--target-file-size",
        ("compact", "raw.events", "--target-file-size", "0"): "--target-file-size",
    }
    for args, expected in cases.items():
        proc = _icefield("--project", str(root), *args)
        assert proc.returncode == EXIT_USAGE, (args, proc.stdout, proc.stderr)
        assert expected in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_sql_source_errors_are_configuration_errors(sqlite_project: Path) -> None:
    """F19, F22: a bad source query exited 1, a missing SQLite source file 1, a missing table was reported
    under source.url: each is a configuration error (exit 2) naming the setting to fix."""
    root = sqlite_project
    env = {"SECRET_DB": f"{CANARY}.db"}
    _pipeline(root, "badquery", """\
        name: badquery
        source: {type: sql, url: "sqlite:///${env:SECRET_DB}", query: "selec id from orders", cursor: id}
        target: {table: raw.bq}
    """)
    _pipeline(root, "notable", """\
        name: notable
        source: {type: sql, url: "sqlite:///${env:SECRET_DB}", table: nope, cursor: id}
        target: {table: raw.nt}
    """)
    _pipeline(root, "nocolumn", """\
        name: nocolumn
        source: {type: sql, url: "sqlite:///${env:SECRET_DB}", query: "select id, nope from orders", cursor: id}
        target: {table: raw.nc}
    """)
    _pipeline(root, "mysql", """\
        name: mysql
        source: {type: sql, url: "mysql://u:p@127.0.0.1:1/shop", table: orders, cursor: id}
        target: {table: raw.my}
    """)
    expected = {
        "badquery": "badquery.yaml: source.query: the source database refused the query",
        "notable": "notable.yaml: source.table: no table 'nope'",
        "nocolumn": "nocolumn.yaml: source.query: the source database refused the query",
        "mysql": "is not installed; run `pip install mysqlclient`",
    }
    for name, message in expected.items():
        proc = _icefield("--project", str(root), "run", name, env=env)
        assert proc.returncode == EXIT_USAGE, (name, proc.stderr)
        assert message in " ".join(proc.stderr.split()), (name, proc.stderr)
        assert CANARY not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ F15: text from data is not markup

EVIL = "[/evil]"
STYLED = "[bold red]pwn[/] [link=https://evil.example]click[/link] [postgres]"


def test_quarantine_show_prints_markup_in_bad_rows_as_it_is(tmp_path: Path) -> None:
    """F15: a quarantined row holding `[/evil]` crashed `quarantine show` with a MarkupError."""
    root = _project(tmp_path / "p", rows=json.dumps({"id": None, "v": f"{EVIL} [red]r[/] [postgres]"}) + "\n")
    assert _icefield("--project", str(root), "run").returncode == EXIT_OK
    proc = _icefield("--project", str(root), "quarantine", "show", "raw.events")
    assert proc.returncode == EXIT_OK, proc.stderr
    for token in (EVIL, "[red]r[/]", "[postgres]"):  # the table wraps cells at spaces
        assert token in proc.stdout, token


def test_show_and_sql_print_markup_in_names_and_values_as_they_are(tmp_path: Path) -> None:
    """F15: a JSON key `[/x]` crashed `show` and `sql`; `[red]`, `[link=...]` and `[postgres]` in values
    were swallowed."""
    root = _project(tmp_path / "p", rows=json.dumps({"id": 1, "[/x]": STYLED}) + "\n")
    assert _icefield("--project", str(root), "run").returncode == EXIT_OK
    show = _icefield("--project", str(root), "show", "raw.events")
    assert show.returncode == EXIT_OK, show.stderr
    assert "[/x]" in show.stdout
    sql = _icefield("--project", str(root), "sql", f"select \"[/x]\", '{EVIL}' as \"[red]c\" from raw.events")
    assert sql.returncode == EXIT_OK, sql.stderr
    for text in ("[/x]", EVIL, "[red]c", *STYLED.split()):
        assert text in sql.stdout, text
    assert "\x1b]8;" not in sql.stdout  # no terminal hyperlink


def test_error_messages_print_markup_as_it_is(tmp_path: Path) -> None:
    """F15: the error printer read messages as markup: `[/b]` in a table name or a new column crashed it
    (losing the real message), and `[postgres]` vanished from a `pip install icefield[postgres]` hint."""
    root = _project(tmp_path / "p", rows='{"id": 1}\n')
    proc = _icefield("--project", str(root), "show", "raw.x[/b]")
    assert proc.returncode == EXIT_USAGE and "no table 'raw.x[/b]'" in proc.stderr, proc.stderr

    _pipeline(root, "events", """\
        name: events
        source: {type: files, path: "data/events/*.jsonl"}
        target: {table: raw.events, contract: freeze}
    """)
    assert _icefield("--project", str(root), "run").returncode == EXIT_OK
    (root / "data" / "events" / "b.jsonl").write_text('{"id": 2, "[/x]": 1}\n', encoding="utf-8")
    proc = _icefield("--project", str(root), "run")
    assert proc.returncode != EXIT_OK
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr
    assert "[/x]" in proc.stderr

    _pipeline(root, "pg", """\
        name: pg
        source: {type: sql, url: "postgresql+nosuchdriver://u@127.0.0.1:1/x", table: t, cursor: id}
        target: {table: raw.pg}
    """)
    proc = _icefield("--project", str(root), "run", "pg")
    assert proc.returncode == EXIT_USAGE and "postgresql+nosuchdriver" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ F21: noise


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI's logging set up in this process by the test, and undone afterwards."""
    import logging

    names = ["", "icefield", "icefield.ingest.kafka.client", "pyiceberg", "sqlglot"]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    yield
    for n, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


@pytest.mark.usefixtures("cli_logging")
def test_library_warnings_are_shown_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """F21: pyiceberg's commit-retry warnings and sqlglot's "unsupported syntax" warnings were printed
    without -v. Now pyiceberg's need -v and sqlglot's -vv."""
    import logging

    import sqlglot

    from icefield.cli import _configure_logging, _LogFlags

    def emitted(verbose: int) -> str:
        _configure_logging(_LogFlags(verbose=verbose))
        logging.getLogger("pyiceberg.table").warning("Commit failed due to a concurrent update, retrying (1/10)")
        sqlglot.parse_one("LOAD httpfs", read="duckdb")
        return capsys.readouterr().err

    quiet, one, two = emitted(0), emitted(1), emitted(2)
    assert quiet == ""
    assert "Commit failed" in one and "unsupported syntax" not in one
    assert "Commit failed" in two and "unsupported syntax" in two


@pytest.mark.usefixtures("cli_logging")
def test_librdkafka_lines_are_shown_only_with_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    """F21: with an unreachable broker, a run without -v printed about 900 `ERROR icefield.ingest.kafka:
    FAIL ...` lines (librdkafka's log and error callback) in 30 s. Now none without -v; the error that
    ends the read carries the client's last complaint."""
    pytest.importorskip("confluent_kafka")
    from icefield.cli import _configure_logging, _LogFlags
    from icefield.errors import TransientError
    from icefield.ingest.kafka import KafkaReader

    def attempt(verbose: int) -> tuple[str, str]:
        _configure_logging(_LogFlags(verbose=verbose))
        reader = KafkaReader({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}, ["t"], timeout=3)
        with pytest.raises(TransientError) as info:
            reader.open(None)
        return capsys.readouterr().err, str(info.value)

    quiet, message = attempt(0)
    loud, _ = attempt(1)
    assert quiet == ""
    assert "Connection refused" in message
    assert loud.count("\n") >= 2 and "icefield.ingest.kafka.client" in loud


def test_a_command_stopped_by_a_signal_in_process_gives_back_the_handlers_it_installed(tmp_path: Path) -> None:
    """`icefield run --follow` and `icefield metrics serve` stop gracefully on SIGINT or SIGTERM through
    handlers of their own; run in-process (a test's CliRunner, a program calling the CLI), they left them
    installed, so a later Ctrl-C in that process set a forgotten event instead of interrupting (a later test's
    SIGINT then failed its run instead of interrupting it)."""
    import threading

    root = _project(tmp_path / "p")
    assert CliRunner().invoke(cli, ["--project", str(root), "run"]).exit_code == EXIT_OK
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        res = CliRunner().invoke(cli, ["--project", str(root), "metrics", "serve", "--port", "0", "--cost-every", "0"])
    finally:
        timer.cancel()
    assert res.exit_code == EXIT_OK and "Serving table statistics" in res.output, res.output
    assert {sig: signal.getsignal(sig) for sig in before} == before
