"""The ``hatwist`` command (tests: tests/test_cli_check_config.py).

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``run``; adding a sub-command is one more entry in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

from hatwist import _cli_check, _cli_demo, _cli_lab, _cli_queue, _cli_status

_COMMANDS = (
    _cli_check.register, _cli_status.register, _cli_queue.register, _cli_demo.register,
    _cli_lab.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hatwist",
        description="Outbound SMTP relay through an HAProxy PROXY-protocol hop.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
