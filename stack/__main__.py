"""``python -m stack up|down|status [SERVICES...]``: start, stop and inspect the native services."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import SERVICES, Service, StackError, get_service


def _select(names: Sequence[str]) -> list[str]:
    """Return the requested service names in registry order (all when none are given)."""
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    return [name for name in SERVICES if not names or name in names]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="Start, stop and inspect native services on 127.0.0.1 "
        "(state under $ICEFIELD_STACK_DIR, default <repo>/.stack).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the launchers do")
    commands = parser.add_subparsers(dest="command", required=True)
    services_help = f"services to act on (default: all of {', '.join(SERVICES)})"

    up = commands.add_parser("up", help="start services and wait until they answer")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per service (120)")
    up.add_argument(
        "--fast", action="store_true", help="trade durability for speed (fsync off): throwaway data only"
    )

    down = commands.add_parser("down", help="stop services by pid")
    down.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)
    down.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per service (30)")

    status = commands.add_parser("status", help="show which services run")
    status.add_argument("services", nargs="*", metavar="SERVICE", help=services_help)

    capture = commands.add_parser(
        "capture", help="register a Debezium connector for tables of a database of the stack's PostgreSQL"
    )
    capture.add_argument("database", help="database name on the stack's PostgreSQL")
    capture.add_argument("tables", nargs="+", metavar="SCHEMA.TABLE", help="tables to capture, e.g. public.orders")
    capture.add_argument("--prefix", default=None, help="topic prefix (default: the database name)")
    capture.add_argument("--name", default=None, help="connector name (default: <prefix>-cdc)")
    capture.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until it runs (120)")
    capture.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a connector setting to add or override, e.g. --set interval.handling.mode=string (repeatable)",
    )
    catalog = commands.add_parser(
        "trino-catalog", help="write Trino's Iceberg catalog for an icefield project (loaded at Trino's next start)"
    )
    catalog.add_argument("project", help="the icefield project folder (its catalog must be on PostgreSQL)")
    catalog.add_argument("--name", default=None, help="the Trino catalog's name (default: the project's catalog.name)")
    return parser


def _trino_catalog(args: argparse.Namespace) -> None:
    trino = get_service("trino")
    path = trino.add_project_catalog(args.project, args.name)  # type: ignore[attr-defined]
    restart = " restart Trino to load it (python -m stack down trino; python -m stack up trino)" if trino.status().running else ""
    print(f"trino catalog {path.stem}: written to {path};{restart or ' loaded when Trino starts'}")


def _capture(args: argparse.Namespace) -> None:
    from stack.connect import debezium_postgres_config

    pg, connect = get_service("postgres"), get_service("connect")
    for svc in (pg, connect):
        if not svc.status().running:
            raise StackError(f"{svc.name} is not running; start it: python -m stack up postgres kafka connect")
    prefix = args.prefix or args.database
    name = args.name or f"{prefix}-cdc"
    slot = name.replace("-", "_").replace(".", "_")
    overrides = {}
    for setting in args.settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise StackError(f"--set {setting!r}: give KEY=VALUE, e.g. --set interval.handling.mode=string")
        overrides[key.strip()] = value
    config = debezium_postgres_config(
        pg.connection_info(args.database),  # type: ignore[attr-defined]
        args.tables,
        topic_prefix=prefix,
        slot_name=slot,
        **overrides,
    )
    connect.register_connector(name, config, timeout=args.timeout)  # type: ignore[attr-defined]
    print(f"connector {name}: RUNNING (slot {slot})")
    for table in args.tables:
        print(f"  {table} -> topic {prefix}.{table}")


def _up(service: Service, timeout: float) -> None:
    started = service.up(timeout)
    state = service.status()
    print(
        f"{service.name}: {'started' if started else 'already running'} on {state.host}:{state.port} (pid {state.pid})"
    )
    print(f"  url: {state.url}")
    print(f"  state: {state.state_dir}")


def _down(service: Service, timeout: float) -> None:
    pid = service.status().pid
    if service.stop(timeout):
        print(f"{service.name}: stopped (pid {pid})")
    else:
        print(f"{service.name}: not running")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return 0 on success, 1 when a launcher raised :class:`StackError`."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        if args.command == "capture":
            _capture(args)
            return 0
        if args.command == "trino-catalog":
            _trino_catalog(args)
            return 0
        names = _select(args.services)
        if args.command == "up":
            for name in names:
                _up(get_service(name, fast=args.fast), args.timeout)
        elif args.command == "down":
            for name in reversed(names):
                _down(get_service(name), args.timeout)
        else:
            for name in names:
                print(get_service(name).status().describe())
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
