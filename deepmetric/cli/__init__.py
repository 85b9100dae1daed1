"""The ``deepmetric`` command line: one module per group of commands, each adding its sub-commands.

Errors a user can fix (a bad config key, a missing file, wrong shapes) are printed as one line naming
the problem, with exit status 2; ``--debug`` shows the traceback instead. A new command is one module
here with a ``register(subparsers)`` function, listed in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
from pathlib import Path

from deepmetric.cli.common import demo_config_path
from deepmetric.extras import MissingDependencyError
from deepmetric.training.config import ConfigError

# Order of the commands in ``deepmetric --help``.
COMMAND_MODULES = ("train", "evaluate", "search", "shards", "bench", "listing", "doctor")

__all__ = ["build_parser", "demo_config_path", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error:`` line (exit status 2), like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deepmetric", description="Deep metric learning and image retrieval.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides anywhere on the line (also after options such as
    ``--out``, where argparse would refuse them), for the commands that accept overrides."""
    args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "overrides"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    # ``train --out RUN a=b`` (no CONFIG) puts the first override in the CONFIG slot
    config = getattr(args, "config", None)
    if config is not None and is_override(config):
        args.config, args.overrides = None, [config, *args.overrides]
    unknown = [token for token in extra if not is_override(token)]
    if any(token.startswith("-") for token in unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        parser.error(
            f"unrecognized argument {unknown[0]!r}: overrides look like key=value (e.g. loss.margin=0.2)"
        )
    args.overrides = [*args.overrides, *extra]
    return args


def is_override(token: str) -> bool:
    """``section.key=value`` (a file name holding ``=`` is not taken for one when it exists)."""
    key = token.split("=", 1)[0]
    return "=" in token and not token.startswith("-") and "/" not in key and not Path(token).exists()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        args.func(args)
    except (ConfigError, ValueError, OSError, MissingDependencyError, KeyboardInterrupt) as error:
        if args.debug:
            raise
        if isinstance(error, KeyboardInterrupt):
            print("interrupted: resume with --resume", file=sys.stderr)
            return 130
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
