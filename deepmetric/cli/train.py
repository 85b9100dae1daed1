"""``deepmetric train``, ``run`` and ``demo``: training from a config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deepmetric.cli.common import (
    add_config_args,
    demo_config_path,
    load_config,
    print_comparison,
    run_dir_of,
)
from deepmetric.training.config import ConfigError

DEMO_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) a run; under ``torchrun`` every process runs this and rank 0 writes the run."""
    from deepmetric.training import distributed, resume, train

    try:
        if args.config is None:
            if not (args.resume and args.out):
                raise ConfigError("give a CONFIG file, or --resume with --out RUN to continue a run")
            return resume(args.out)
        config = load_config(args.config, args.overrides)
        run_dir = run_dir_of(config, args.out)
        if args.resume:
            return resume(run_dir)
        return train(config, run_dir)
    finally:
        distributed.teardown()


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, embed, evaluate and report in one go."""
    from deepmetric.training import distributed, train
    from deepmetric.viz.report import write_report

    config = load_config(args.config, args.overrides)
    run_dir = run_dir_of(config, args.out)
    try:
        metrics = train(config, run_dir)
        main = distributed.is_main()
    finally:
        distributed.teardown()
    if main:  # under torchrun, rank 0 alone reports
        print_comparison(metrics, config.eval.metrics)
        print(f"report: {write_report(run_dir)}")
    return metrics


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from deepmetric.training import train
    from deepmetric.training.checkpoint import write_json

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    config = load_config(str(demo_config_path()), overrides)
    run_dir = Path(args.out) if args.out else Path(config.output_dir) / config.name
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a demo run; choose another --out folder")
    print("deepmetric demo: scikit-learn digits, train on digits 0-4, retrieve among unseen digits 5-9")
    metrics = train(config, run_dir)
    print_comparison(metrics, DEMO_METRICS)
    summary = {key: {m: metrics[key][m] for m in config.eval.metrics} for key in ("untrained", "trained")}
    write_json(run_dir / "metrics.json", {**metrics, **summary})
    try:
        from deepmetric.viz.report import write_report

        print(f"report: {write_report(run_dir)}")
    except ImportError as error:  # matplotlib missing: the metrics are still there
        print(f"no report ({error})")
    print(f"run folder: {run_dir}")
    return metrics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config")
    add_config_args(p, required=False)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the run folder from its last checkpoint"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="train, embed, evaluate and write the report in one go")
    add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the built-in demo on scikit-learn's digits (no download)")
    p.add_argument("overrides", nargs="*", help="config overrides such as loss.name=contrastive")
    p.add_argument("--out", help="run folder (default: runs/demo)")
    p.add_argument("--iterations", type=int, help="training iterations")
    p.set_defaults(func=cmd_demo)
