"""The ``deepmetric`` command line: one module per group of commands, each adding its sub-commands.

Errors a user can fix (a bad config key, a missing file, wrong shapes) are printed as one line naming
the problem, with exit status 2; ``--debug`` shows the traceback instead. A new command is one module
here with a ``register(subparsers)`` function, listed in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deepmetric.cli.common import demo_config_path
from deepmetric.training.config import ConfigError

# Order of the commands in ``deepmetric --help``.
COMMAND_MODULES = ("train", "evaluate", "shards", "bench", "listing")

__all__ = ["build_parser", "demo_config_path", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmetric", description="Deep metric learning and image retrieval."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, OSError, KeyboardInterrupt) as error:
        if args.debug:
            raise
        if isinstance(error, KeyboardInterrupt):
            print("interrupted: resume with --resume", file=sys.stderr)
            return 130
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
