"""How the CLI shows things: rich tables and progress for people, one JSON document for machines.

Every byte the CLI prints goes through :class:`Output`, and :class:`Output` is where two promises are
kept for all of it:

- **Secrets are redacted** (:func:`icefield.config.secrets.redact`) in every message, table cell and
  JSON document, whatever built the text.
- **Text from data is never read as Rich markup.** Table cells, titles and headers are plain text;
  messages are icefield's own markup templates whose ``{fields}`` are escaped
  (``out.print("[bold]{table}[/]", table=name)``). A ``[/x]`` in a row, a column name or an error
  prints as it is, instead of crashing the command or restyling the terminal.
"""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from icefield.config.secrets import has_secrets, redact


def _json_default(v: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def redact_doc(doc: Any) -> Any:
    """``doc`` (JSON-able: dicts, lists, scalars) with every secret removed from its strings, keys too."""
    if not has_secrets():
        return doc
    if isinstance(doc, str):
        return redact(doc)
    if isinstance(doc, Mapping):
        return {redact_doc(k) if isinstance(k, str) else k: redact_doc(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [redact_doc(v) for v in doc]
    if isinstance(doc, (bool, int, float)) or doc is None:
        return doc
    return redact_doc(_json_default(doc))


class _EscapingFormatter(string.Formatter):
    """``str.format`` whose fields are redacted and escaped after formatting (``{rows:,}`` still works)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return escape(redact(super().format_field(value, format_spec)))


_FORMATTER = _EscapingFormatter()


def markup(template: str, /, **values: Any) -> str:
    """Icefield's own Rich markup ``template`` with ``{name}`` fields filled from ``values``, each
    redacted and escaped: data can never open, close or inject a tag."""
    return _FORMATTER.format(template, **values) if values else template


def plain(value: Any) -> Text:
    """``value`` as plain, redacted text (no markup, no emoji codes)."""
    if isinstance(value, Text):
        clean = redact(value.plain)
        # A styled cell of icefield's own (a gate status) keeps its style; spans would not fit a redacted text.
        return value if clean == value.plain else Text(clean, style=value.style)
    return Text("" if value is None else redact(str(value)))


def _console(stderr: bool) -> Console:
    c = Console(stderr=stderr, emoji=False)
    # Rich assumes 80 columns without a terminal (make, CI logs); tables of paths need more.
    return c if c.is_terminal else Console(stderr=stderr, width=140, emoji=False)


@dataclass
class Output:
    as_json: bool = False
    verbose: bool = False
    project_dir: Path | None = None
    profile: str | None = None
    console: Console = field(default_factory=lambda: _console(stderr=False))
    err_console: Console = field(default_factory=lambda: _console(stderr=True))
    emitted: bool = False
    """True once a JSON document was written (a command prints at most one)."""
    on_project: Callable[[Any], None] | None = None
    """Called with each project :meth:`project` loads (the CLI applies its ``logs:`` settings)."""

    def project(self) -> Any:
        from icefield.config import load_project

        project = load_project(self.project_dir, profile=self.profile)
        if self.on_project is not None:
            self.on_project(project)
        return project

    def emit(self, doc: Any) -> None:
        """Write a JSON document to stdout, secrets redacted."""
        text = json.dumps(redact_doc(doc), default=_json_default, indent=None, ensure_ascii=False)
        sys.stdout.write(redact(text) + "\n")
        sys.stdout.flush()
        self.emitted = True

    def write(self, text: str) -> None:
        """Write ``text`` to stdout as it is (CSV, raw output), secrets redacted."""
        sys.stdout.write(redact(text))
        sys.stdout.flush()

    def error(self, message: str, kind: str, result: dict[str, Any] | None = None, **extra: Any) -> None:
        """Report an error: one JSON document with --json, else one ``error: ...`` line on stderr."""
        if self.as_json:
            self.emit({"status": "error", "error": message, "type": kind, "result": result, **extra})
        else:
            self.err_console.print(Text.assemble(("error", "bold red"), ": ", plain(message)), highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A plain line on stderr (also in --json mode: stdout stays one document)."""
        self.err_console.print(plain(message), highlight=False, soft_wrap=True)

    def print(self, template: Any = "", /, **values: Any) -> None:
        """Print icefield's markup ``template`` (``{fields}`` from ``values`` are escaped, see
        :func:`markup`) or a Rich renderable. Nothing in --json mode."""
        if self.as_json:
            return
        if isinstance(template, str):
            self.console.print(redact(markup(template, **values)), highlight=False)
        else:
            self.console.print(template)

    def table(self, title: str | None, columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
        """A table of plain-text cells (a :class:`rich.text.Text` cell keeps its style). Nothing in
        --json mode."""
        if self.as_json:
            return
        t = Table(title=plain(title) if title is not None else None, title_justify="left", show_lines=False)
        for c in columns:
            t.add_column(plain(c), overflow="fold")
        for r in rows:
            t.add_row(*[plain(v) for v in r])
        self.console.print(t)
