"""The ``deepmetric`` command line: train, embed, evaluate, run, report, demo, list.

Errors a user can fix (a bad config key, a missing file, wrong shapes) are printed as one line naming
the problem, with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.training.config import ConfigError

DEMO_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")


def _config(path: str | None, overrides: list[str]):
    from deepmetric.training.config import load_config

    return load_config(path, overrides)


def _run_dir(config, out: str | None) -> Path:
    return Path(out) if out else Path(config.output_dir) / config.name


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) a run; under ``torchrun`` every process runs this and rank 0 writes the run."""
    from deepmetric.training import distributed, resume, train

    try:
        if args.config is None:
            if not (args.resume and args.out):
                raise ConfigError("give a CONFIG file, or --resume with --out RUN to continue a run")
            return resume(args.out)
        config = _config(args.config, args.overrides)
        run_dir = _run_dir(config, args.out)
        if args.resume:
            return resume(run_dir)
        return train(config, run_dir)
    finally:
        distributed.teardown()


def cmd_embed(args: argparse.Namespace) -> None:
    from deepmetric.training.config import load_config
    from deepmetric.training.data import build_data
    from deepmetric.training.embed import embed_dataset, load_model

    run_dir = Path(args.run)
    config = load_config(run_dir / "config.yaml")
    model = load_model(run_dir, args.checkpoint)
    data = build_data(config, model.backbone, "cpu")
    folder = run_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    for name, dataset in data.evaluation.items():
        split = config.data.test_split if name == "test" else name
        embeddings = embed_dataset(
            model,
            dataset,
            batch_size=config.eval.batch_size,
            features=data.features,
            binarize=config.eval.binarize,
        )
        np.save(folder / f"{split}_embeddings.npy", embeddings)
        np.save(folder / f"{split}_labels.npy", np.asarray(dataset.labels))
        print(f"{split}: {embeddings.shape[0]} x {embeddings.shape[1]} -> {folder}/{split}_embeddings.npy")


def _load_array(path: str | None, what: str) -> np.ndarray | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return np.load(path)
    except Exception as error:
        raise OSError(f"cannot read {what} file {path}: {error}") from error


def cmd_evaluate(args: argparse.Namespace) -> dict[str, float]:
    from deepmetric.evaluation import evaluate

    if args.embeddings:
        if args.labels is None:
            raise ConfigError("--embeddings needs --labels")
        if (args.gallery_embeddings is None) != (args.gallery_labels is None):
            raise ConfigError("--gallery-embeddings and --gallery-labels go together")
        query = _load_array(args.embeddings, "embeddings")
        labels = _load_array(args.labels, "labels")
        gallery = _load_array(args.gallery_embeddings, "gallery embeddings")
        gallery_labels = _load_array(args.gallery_labels, "gallery labels")
        metrics = args.metrics.split(",") if args.metrics else [*DEMO_METRICS, "map@r", "r_precision"]
        distance = args.distance or "cosine"
    elif args.run:
        from deepmetric.training.config import load_config

        run_dir = Path(args.run)
        config = load_config(run_dir / "config.yaml")
        folder = run_dir / "embeddings"
        names = (config.data.test_split, None) if config.data.gallery_split is None else ("query", "gallery")
        if not (folder / f"{names[0]}_embeddings.npy").exists():
            raise FileNotFoundError(
                f"no saved embeddings in {folder}; run `deepmetric embed {run_dir}` first"
            )
        query = np.load(folder / f"{names[0]}_embeddings.npy")
        labels = np.load(folder / f"{names[0]}_labels.npy")
        gallery = np.load(folder / "gallery_embeddings.npy") if names[1] else None
        gallery_labels = np.load(folder / "gallery_labels.npy") if names[1] else None
        metrics = args.metrics.split(",") if args.metrics else config.eval.metrics
        distance = args.distance or config.eval.distance
    else:
        raise ConfigError("give a RUN folder or --embeddings E.npy --labels L.npy")
    results = evaluate(query, labels, gallery, gallery_labels, metrics=metrics, distance=distance)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:>16s}  {value:.4f}")
    return results


def cmd_report(args: argparse.Namespace) -> Path:
    from deepmetric.viz.report import write_report

    path = write_report(Path(args.run))
    print(f"report: {path}")
    return path


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, embed, evaluate and report in one go."""
    from deepmetric.training import distributed, train
    from deepmetric.viz.report import write_report

    config = _config(args.config, args.overrides)
    run_dir = _run_dir(config, args.out)
    try:
        metrics = train(config, run_dir)
        main = distributed.is_main()
    finally:
        distributed.teardown()
    if main:  # under torchrun, rank 0 alone reports
        print_comparison(metrics, config.eval.metrics)
        print(f"report: {write_report(run_dir)}")
    return metrics


def print_comparison(metrics: dict[str, Any], names: list[str] | tuple[str, ...]) -> None:
    untrained, trained = metrics["untrained"], metrics["trained"]
    print(f"\n{'metric':>12s}  {'untrained':>9s}  {'trained':>9s}  {'change':>8s}")
    for name in names:
        if name in trained:
            before, after = untrained[name], trained[name]
            print(f"{name:>12s}  {before:9.4f}  {after:9.4f}  {after - before:+8.4f}")


def demo_config_path() -> Path:
    return Path(__file__).parent / "configs" / "demo.yaml"


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from deepmetric.training import train
    from deepmetric.training.checkpoint import write_json

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    config = _config(str(demo_config_path()), overrides)
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


def cmd_list(args: argparse.Namespace) -> None:
    from deepmetric import data, losses, miners, models

    registries = {
        "losses": losses.LOSSES,
        "miners": miners.MINERS,
        "datasets": data.DATASETS,
        "backbones": models.BACKBONES,
    }
    for kind in [args.kind] if args.kind else registries:
        print(f"{kind}: {', '.join(registries[kind].names())}")


def _comma_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run a benchmark suite (methods x varied settings x seeds) and write its results table."""
    from deepmetric.benchmarking import run_suite

    seeds = _comma_list(args.seeds)
    try:
        seed_list = [int(s) for s in seeds] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    return run_suite(
        args.suite,
        out_dir=args.out,
        only=_comma_list(args.only),
        seeds=seed_list,
        compare_pml=args.compare_pml,
        select=not args.no_select,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmetric", description="Deep metric learning and image retrieval."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("config", nargs=None if required else "?", help="experiment YAML file")
        p.add_argument("overrides", nargs="*", help="config overrides such as loss.margin=0.2")
        p.add_argument("--out", help="run folder (default: OUTPUT_DIR/NAME from the config)")

    p = sub.add_parser("train", help="train a model from a config")
    add_config_args(p, required=False)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the run folder from its last checkpoint"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="train, embed, evaluate and write the report in one go")
    add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("embed", help="embed the evaluation splits with a trained run's model")
    p.add_argument("run", help="run folder")
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", help="evaluate a run's embeddings or saved .npy embeddings")
    p.add_argument("run", nargs="?", help="run folder")
    p.add_argument("--embeddings", help="query (or leave-one-out) embeddings .npy")
    p.add_argument("--labels", help="labels .npy for --embeddings")
    p.add_argument("--gallery-embeddings", help="gallery embeddings .npy (query/gallery protocol)")
    p.add_argument("--gallery-labels", help="gallery labels .npy")
    p.add_argument("--metrics", help="comma-separated metric names, e.g. recall@1,map@r,nmi")
    p.add_argument("--distance", help="cosine, dot, euclidean or squared_euclidean")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write report.html for a run folder")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the built-in demo on scikit-learn's digits (no download)")
    p.add_argument("overrides", nargs="*", help="config overrides such as loss.name=contrastive")
    p.add_argument("--out", help="run folder (default: runs/demo)")
    p.add_argument("--iterations", type=int, help="training iterations")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run a benchmark suite: methods x seeds, mean ± std table")
    p.add_argument("suite", help="suite YAML file (see benchmarks/suites/)")
    p.add_argument("--out", help="output folder (default: bench/<suite name>)")
    p.add_argument("--only", help="comma-separated method names to run")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--compare-pml", action="store_true", help="also run pytorch-metric-learning's losses")
    p.add_argument("--no-select", action="store_true", help="skip validation selection (use saved choices)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("list", help="list the registered losses, miners, datasets and backbones")
    p.add_argument("kind", nargs="?", choices=["losses", "miners", "datasets", "backbones"])
    p.set_defaults(func=cmd_list)
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


if __name__ == "__main__":
    sys.exit(main())
