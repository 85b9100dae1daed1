"""``deepmetric train``, ``run`` and ``demo``: training from a config."""

from __future__ import annotations

import argparse
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
    """Train (or resume) a run; under ``torchrun`` every process runs this and rank 0 writes the run
    and prints the final metrics."""
    from deepmetric.training import distributed, resume, train

    try:
        if args.config is None:
            if not (args.resume and args.out):
                raise ConfigError("give a CONFIG file, or --resume with --out RUN to continue a run")
            metrics = resume(args.out)
            names = list(metrics["trained"])
        else:
            config = load_config(args.config, args.overrides)
            run_dir = run_dir_of(config, args.out)
            metrics = resume(run_dir) if args.resume else train(config, run_dir)
            names = config.eval.metrics
        main = distributed.is_main()
    finally:
        distributed.teardown()
    if main:
        print_comparison(metrics, names)
    return metrics


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
    """Train the demo; a second demo replaces the run folder of an earlier one (and nothing else)."""
    from deepmetric.training import train
    from deepmetric.training.run_folder import RunFolder

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    config = load_config(str(demo_config_path()), overrides)
    run = RunFolder(run_dir_of(config, args.out), origin="demo")
    run_dir = run.path
    if run.holds_run():
        status = run.read_status()
        if status is None or status.get("origin") != "demo":
            raise FileExistsError(
                f"{run_dir} holds a run that `deepmetric demo` did not write; choose another --out folder"
            )
        print(f"replacing the earlier demo run in {run_dir}")
        run.clear()  # the demo's own files only: anything else in the folder stays
    print("deepmetric demo: scikit-learn digits, train on digits 0-4, retrieve among unseen digits 5-9")
    metrics = train(config, run)
    print_comparison(metrics, DEMO_METRICS)
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
