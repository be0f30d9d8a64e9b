"""How the CLI shows things: rich tables and progress for people, one JSON document for machines."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


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


def _console(stderr: bool) -> Console:
    c = Console(stderr=stderr)
    # Rich assumes 80 columns without a terminal (make, CI logs); tables of paths need more.
    return c if c.is_terminal else Console(stderr=stderr, width=140)


@dataclass
class Output:
    as_json: bool = False
    verbose: bool = False
    project_dir: Path | None = None
    profile: str | None = None
    console: Console = field(default_factory=lambda: _console(stderr=False))
    err_console: Console = field(default_factory=lambda: _console(stderr=True))

    def project(self) -> Any:
        from icefield.config import load_project

        return load_project(self.project_dir, profile=self.profile)

    def emit(self, doc: Any) -> None:
        """Write a JSON document to stdout (only in --json mode)."""
        sys.stdout.write(json.dumps(doc, default=_json_default, indent=None, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def error(self, message: str, kind: str, result: dict[str, Any] | None = None) -> None:
        if self.as_json:
            self.emit({"status": "error", "error": message, "type": kind, "result": result})
        else:
            self.err_console.print(f"[bold red]error[/]: {message}", markup=True, highlight=False)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if not self.as_json:
            self.console.print(*args, **kwargs)

    def table(self, title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
        if self.as_json:
            return
        t = Table(title=title, title_justify="left", show_lines=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*["" if v is None else str(v) for v in r])
        self.console.print(t)
