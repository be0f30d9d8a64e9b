"""The ``icefield`` command line. Exit codes scripts can trust:

0 success; 1 a run failed (data or write error; fix and rerun), or an internal error (a bug: the
message starts with ``internal error`` and asks to report it); 2 bad usage or configuration; 75 a
transient failure (a retry may succeed); 130 interrupted by SIGINT (Ctrl-C).

Whatever ends a command, it ends with one redacted line on stderr (one JSON document on stdout with
``--json``), never a raw traceback: ``-v`` adds the traceback, redacted too.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from icefield.cli.output import Output
from icefield.config.levels import LEVELS
from icefield.config.secrets import redact
from icefield.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRANSIENT,
    EXIT_USAGE,
    IcefieldError,
    InterruptedRunError,
)

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TRANSIENT", "EXIT_USAGE", "cli", "guarded", "main"]

log = logging.getLogger("icefield.cli")

INTERRUPTED = (
    "interrupted (SIGINT): committed batches stay committed; a batch in flight stays pending and the next run "
    "retries it"
)

_current: Output | None = None
"""The Output of the command being run, for the last-resort handler of :func:`main`."""


def internal_error_message(e: BaseException) -> str:
    """The one line an unexpected exception (a bug) is reported with."""
    return (
        f"internal error: {type(e).__module__}.{type(e).__qualname__}: {e}; this is a bug in icefield, please report "
        "it with the output of the same command run with -v"
    )


def report_internal_error(out: Output | None, e: BaseException, verbose: bool) -> None:
    """Report an unexpected exception: one redacted line (a JSON document with --json); the redacted
    traceback on stderr too with -v."""
    out = out or Output()
    message = internal_error_message(e)
    if verbose:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        sys.stderr.write(redact(tb))
    if out.as_json and not out.emitted:
        out.emit({"status": "error", "error": message, "type": "InternalError", "exception": type(e).__name__})
    else:
        out.error(message, kind="InternalError")


def report_error(out: Output, e: IcefieldError, **extra: Any) -> None:
    """Report an icefield error: one line on stderr, or one JSON document (unless one was printed)."""
    result = getattr(e, "result", None)
    if out.as_json and out.emitted:
        out.warn(f"error: {e}")  # stdout already holds this command's one document
        return
    out.error(str(e), kind=type(e).__name__, result=result.to_dict() if result is not None else None, **extra)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn whatever ends a command into one clear, redacted line on stderr (a JSON document with --json)
    and a trustworthy exit code: an icefield error its ``exit_code``; SIGINT 130; anything else is an
    internal error (exit 1), reported as such."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        out: Output = ctx.obj
        try:
            return fn(*args, **kwargs)
        except IcefieldError as e:
            report_error(out, e)
            if out.verbose:
                log.error("details", exc_info=e)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            report_error(out, InterruptedRunError(INTERRUPTED))
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            raise
        except Exception as e:
            report_internal_error(out, e, out.verbose)
            ctx.exit(EXIT_FAILED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", "project_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Project folder (default: the nearest folder holding icefield.yaml).")
@click.option("--profile", default=None, help="Profile of icefield.yaml to apply (or ICEFIELD_PROFILE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Format of the log lines: text, or JSON lines with run_id, pipeline, batch_id (default: logs.format of icefield.yaml, else text).")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None, help="Level of icefield's log lines (wins over -v and logs.level; default warning).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append the log lines to this file instead of stderr (default: logs.file).")
@click.option("--log-ship", "log_ship", default=None, metavar="URL", help="Also ship the log lines, as JSON, to the VictoriaLogs server at URL (default: logs.ship.url).")
@click.version_option(package_name="icefield")
@click.pass_context
def cli(
    ctx: click.Context, project_dir: Path | None, profile: str | None, as_json: bool, verbose: int,
    log_format: str | None, log_level: str | None, log_file: Path | None, log_ship: str | None,
) -> None:
    """icefield: land data in Apache Iceberg, incrementally and exactly once."""
    global _current
    flags = _LogFlags(verbose, log_format, log_level.lower() if log_level else None, log_file, log_ship)
    try:
        _configure_logging(flags)
    except IcefieldError as e:  # a bad --log-ship or --log-file: a usage error (exit 2)
        raise click.UsageError(str(e), ctx) from None
    ctx.obj = _current = Output(
        as_json=as_json, verbose=verbose > 0, project_dir=project_dir, profile=profile,
        on_project=lambda project: _configure_logging(flags, project),
    )


KAFKA_CLIENT_LOGGER = "icefield.ingest.kafka.client"
"""The logger of librdkafka's own lines (``icefield.ingest.kafka.client_log``; hundreds a minute while a
broker is down): shown with -v only. Named here so that the CLI starts without importing the source."""


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (like logging's last-resort handler)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr


@dataclass(frozen=True)
class _LogFlags:
    """The logging options of the command line (None: not given)."""

    verbose: int = 0
    format: str | None = None
    level: str | None = None
    file: Path | None = None
    ship: str | None = None


def _configure_logging(flags: _LogFlags, project: Any = None) -> None:
    """One handler on the root logger (stderr, or ``--log-file``/``logs.file``), plus the shipper to
    VictoriaLogs with ``--log-ship``/``logs.ship``, so that every library's records are redacted and formatted
    too. Called at start with the flags, and again with the project's ``logs:`` once it is loaded: a flag wins
    over its key. Levels: icefield WARNING (``-v`` INFO, ``-vv`` DEBUG, or ``--log-level``/``logs.level``); the
    run's events and librdkafka's lines from INFO; pyiceberg's warnings (commit retries) from INFO; sqlglot's
    parser warnings at DEBUG only. Raises ConfigError for a bad ``--log-ship`` URL or a file that cannot be
    opened."""
    from icefield.errors import ConfigError
    from icefield.observe.logs import LogSettings, install_handlers

    cfg = project.config.logs if project is not None else None
    level_name = flags.level or {1: "info"}.get(flags.verbose) or ("debug" if flags.verbose >= 2 else None)
    level_name = level_name or (cfg.level if cfg is not None else "warning")
    level = getattr(logging, level_name.upper())
    file = flags.file.absolute() if flags.file is not None else None
    if file is None and cfg is not None and cfg.file is not None:
        file = Path(cfg.file).expanduser()
        file = file if file.is_absolute() else project.root / file
    if flags.ship is not None:
        from icefield.config.logs import check_ship_url  # pydantic: only when a URL is given

        try:
            check_ship_url(flags.ship, "--log-ship")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    settings = LogSettings(
        format=flags.format or (cfg.format if cfg is not None else "text"),
        level=level,
        file=file,
        ship=cfg.ship if cfg is not None else None,
        ship_url=flags.ship,
        base_dir=project.root if project is not None else None,
    )
    handler = _StderrHandler()
    install_handlers(settings.handlers(handler))
    ours = logging.getLogger("icefield")
    ours.handlers[:] = [h for h in ours.handlers if not getattr(h, "_icefield", False)]
    ours.setLevel(level)
    ours.propagate = True
    logging.getLogger(KAFKA_CLIENT_LOGGER).setLevel(level if level <= logging.INFO else logging.CRITICAL + 1)
    # The run's events (icefield.observe.events) from INFO only: below it the command prints the results
    # and the error itself, once.
    logging.getLogger("icefield.events").setLevel(level if level <= logging.INFO else logging.CRITICAL + 1)
    logging.getLogger("pyiceberg").setLevel(logging.WARNING if level <= logging.INFO else logging.ERROR)
    logging.getLogger("sqlglot").setLevel(logging.WARNING if level <= logging.DEBUG else logging.ERROR)


# Register the commands (each module adds its own to ``cli``).
from icefield.cli import catalog_commands as _catalog_commands  # noqa: E402,F401
from icefield.cli import commands as _commands  # noqa: E402,F401
from icefield.cli import cost_commands as _cost_commands  # noqa: E402,F401


def _thread_excepthook(args: Any) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    verbose = _current is not None and _current.verbose
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(redact(f"error in thread {name}: {internal_error_message(args.exc_value)}\n"))
    if verbose:
        sys.stderr.write(redact("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))


def _unraisable_hook(unraisable: Any) -> None:
    if _current is not None and _current.verbose:
        tb = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        sys.stderr.write(redact(f"{unraisable.err_msg or 'exception ignored'}: {unraisable.object!r}\n{tb}"))


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    report_internal_error(_current, value, _current is not None and _current.verbose)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``icefield`` script: runs the command and exits with its code. The last line of
    defence: an exception no command handled is reported as an internal error, redacted (exit 1); SIGINT
    outside a command exits 130; click's usage errors keep click's message and exit 2."""
    import threading

    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisable_hook
    sys.excepthook = _excepthook
    logging.captureWarnings(True)  # warnings print through the redacting handler
    try:
        rv = cli.main(args=args, prog_name="icefield", standalone_mode=False)
        code = rv if isinstance(rv, int) else EXIT_OK
    except (KeyboardInterrupt, click.exceptions.Abort):
        report_error(_current or Output(), InterruptedRunError(INTERRUPTED))
        code = EXIT_INTERRUPTED
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except BrokenPipeError:
        # The reader went away (`icefield sql ... | head`): nothing left to tell it, and Python's flush of
        # stdout at exit must not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_FAILED
    except Exception as e:
        report_internal_error(_current, e, _current is not None and _current.verbose)
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
