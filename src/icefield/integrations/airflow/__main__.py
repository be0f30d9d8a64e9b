"""``python -m icefield.integrations.airflow pools [PROJECT] [--slots N]``: the project's pools per source
as the JSON ``airflow pools import FILE`` reads (the project: PROJECT, else ``ICEFIELD_PROJECT``)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from icefield.config import load_project
    from icefield.errors import IcefieldError
    from icefield.integrations.airflow.pools import DEFAULT_SLOTS, project_pools

    parser = argparse.ArgumentParser(prog="python -m icefield.integrations.airflow")
    sub = parser.add_subparsers(dest="command", required=True)
    pools = sub.add_parser("pools", help="print the project's Airflow pools (one per source) as `airflow pools import` JSON")
    pools.add_argument("project", nargs="?", help="the project folder (default: ICEFIELD_PROJECT)")
    pools.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help=f"runs at once per source (default {DEFAULT_SLOTS})")
    args = parser.parse_args(argv)
    import os

    try:
        project = load_project(args.project or os.environ.get("ICEFIELD_PROJECT") or None, engine_checks=False)
    except IcefieldError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    json.dump({p.name: p.to_airflow() for p in project_pools(project, args.slots)}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
