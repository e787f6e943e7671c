"""The ``hangar`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from registry import cli as registry_cli

    parser = argparse.ArgumentParser(
        prog="hangar",
        description="Hangar: a self-hosted model registry, its client and a local runtime.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registry_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
