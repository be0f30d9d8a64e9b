"""The ``icefield`` command line. Exit codes scripts can trust:

0 success; 1 a run failed (data or write error; fix and rerun); 2 bad usage or configuration;
75 a transient failure (a retry may succeed).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from icefield.cli.output import Output
from icefield.config.secrets import redact
from icefield.errors import ConfigError, IcefieldError, TransientError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSIENT = 0, 1, 2, 75


def _exit_code(e: IcefieldError) -> int:
    if isinstance(e, ConfigError):
        return EXIT_USAGE
    if isinstance(e, TransientError):
        return EXIT_TRANSIENT
    return EXIT_FAILED


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn icefield errors into one clear line on stderr (JSON with --json) and a trustworthy exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        out: Output = ctx.obj
        try:
            return fn(*args, **kwargs)
        except IcefieldError as e:
            code = _exit_code(e)
            result = getattr(e, "result", None)
            out.error(redact(str(e)), kind=type(e).__name__, result=result.to_dict() if result is not None else None)
            if out.verbose:
                logging.getLogger("icefield").exception("details")
            ctx.exit(code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", "project_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Project folder (default: the nearest folder holding icefield.yaml).")
@click.option("--profile", default=None, help="Profile of icefield.yaml to apply (or ICEFIELD_PROFILE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", help="Format of the logs on stderr.")
@click.version_option(package_name="icefield")
@click.pass_context
def cli(ctx: click.Context, project_dir: Path | None, profile: str | None, as_json: bool, verbose: int, log_format: str) -> None:
    """icefield: land data in Apache Iceberg, incrementally and exactly once."""
    _configure_logging(verbose, log_format)
    ctx.obj = Output(as_json=as_json, verbose=verbose > 0, project_dir=project_dir, profile=profile)


def _configure_logging(verbose: int, log_format: str) -> None:
    from icefield.observe import JsonFormatter, RedactingFilter

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("icefield")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # pyiceberg warns on every retried commit; keep its chatter at our level.
    logging.getLogger("pyiceberg").setLevel(max(level, logging.WARNING))


# Register the commands (each module adds its own to ``cli``).
from icefield.cli import commands as _commands  # noqa: E402,F401


def main() -> None:
    """Entry point of the ``icefield`` script."""
    cli(prog_name="icefield")


if __name__ == "__main__":  # pragma: no cover
    main()
