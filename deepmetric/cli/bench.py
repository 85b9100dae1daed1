"""``deepmetric bench``: run a benchmark suite (methods x varied settings x seeds)."""

from __future__ import annotations

import argparse
from typing import Any

from deepmetric.cli.common import comma_list
from deepmetric.training.config import ConfigError


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run a benchmark suite and write its results table."""
    from deepmetric.suites import run_suite

    seeds = comma_list(args.seeds)
    try:
        seed_list = [int(s) for s in seeds] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    return run_suite(
        args.suite,
        out_dir=args.out,
        only=comma_list(args.only),
        seeds=seed_list,
        compare_pml=args.compare_pml,
        select=not args.no_select,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite: methods x seeds, mean ± std table")
    p.add_argument("suite", help="suite YAML file (see benchmarks/suites/)")
    p.add_argument("--out", help="output folder (default: bench/<suite name>)")
    p.add_argument("--only", help="comma-separated method names to run")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--compare-pml", action="store_true", help="also run pytorch-metric-learning's losses")
    p.add_argument("--no-select", action="store_true", help="skip validation selection (use saved choices)")
    p.set_defaults(func=cmd_bench)
