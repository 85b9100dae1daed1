"""``deepmetric embed``, ``evaluate`` and ``report``: what a trained run's model gives."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deepmetric.cli.common import load_array, print_metrics
from deepmetric.cli.shards import add_shard_options, cmd_embed_shards
from deepmetric.cli.train import DEMO_METRICS
from deepmetric.training.config import ConfigError


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed the run's evaluation splits with its model and save them as the trainer does; with
    ``--shards``, into memory-mappable shards instead (``embed-shards``; runs under torchrun)."""
    if args.shards:
        args.out = args.shards
        cmd_embed_shards(args)
        return
    defaults = {"split": None, "dtype": "float32", "shard_size": 100_000, "batch_size": None, "device": "cpu"}
    given = [
        f"--{name.replace('_', '-')}" for name, value in defaults.items() if getattr(args, name) != value
    ]
    if given:
        raise ConfigError(f"{', '.join(given)} only apply with --shards")
    from deepmetric.training.data import build_data
    from deepmetric.training.embed import embed_dataset, load_model, save_evaluation_embeddings
    from deepmetric.training.run_folder import RunFolder

    run = RunFolder(args.run)
    config = run.load_config()
    model = load_model(run, args.checkpoint)
    data = build_data(config, model.backbone, "cpu")

    def embed(dataset) -> np.ndarray:
        return embed_dataset(
            model,
            dataset,
            batch_size=config.eval.batch_size,
            features=data.features,
            binarize=config.eval.binarize,
            progress=True,
        )

    for split, embeddings in save_evaluation_embeddings(run, config, data.evaluation, embed).items():
        print(f"{split}: {embeddings.shape[0]} x {embeddings.shape[1]} -> {run.embeddings_file(split)}")


def megabytes(text: str) -> float:
    """A memory budget in MiB: a positive number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text!r}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> dict[str, float]:
    from deepmetric.evaluation import evaluate
    from deepmetric.retrieval.ranking import DEFAULT_MEMORY_BUDGET_MB

    if args.run and (args.embeddings or args.labels or args.gallery_embeddings or args.gallery_labels):
        raise ConfigError(
            f"give a RUN folder ({args.run}) or --embeddings/--labels files, not both: "
            "a run's own embeddings are in RUN/embeddings"
        )
    if args.embeddings:
        if args.labels is None:
            raise ConfigError("--embeddings needs --labels")
        if (args.gallery_embeddings is None) != (args.gallery_labels is None):
            raise ConfigError("--gallery-embeddings and --gallery-labels go together")
        query = load_array(args.embeddings, "embeddings")
        labels = load_array(args.labels, "labels")
        gallery = load_array(args.gallery_embeddings, "gallery embeddings")
        gallery_labels = load_array(args.gallery_labels, "gallery labels")
        metrics = args.metrics.split(",") if args.metrics else [*DEMO_METRICS, "map@r", "r_precision"]
        distance = args.distance or "cosine"
        memory_budget_mb = args.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB
    elif args.run:
        from deepmetric.training.config import load_config
        from deepmetric.training.run_folder import RunFolder

        run = RunFolder(args.run)
        config = load_config(run.config_file)  # a missing file: "config file not found", as for train
        if config.data.gallery_split is None:
            query, labels = run.load_embeddings(config.data.test_split)
            gallery = gallery_labels = None
        else:
            query, labels = run.load_embeddings("query")
            gallery, gallery_labels = run.load_embeddings("gallery")
        metrics = args.metrics.split(",") if args.metrics else config.eval.metrics
        distance = args.distance or config.eval.distance
        memory_budget_mb = args.memory_budget_mb or config.eval.memory_budget_mb
    else:
        raise ConfigError("give a RUN folder or --embeddings E.npy --labels L.npy")
    results = evaluate(
        query,
        labels,
        gallery,
        gallery_labels,
        metrics=metrics,
        distance=distance,
        memory_budget_mb=memory_budget_mb,
        copy=False,  # the arrays are the command's own: normalised in place, not copied
    )
    print_metrics(results, args.json)
    return results


def cmd_report(args: argparse.Namespace) -> Path:
    from deepmetric.viz.report import write_report

    path = write_report(Path(args.run))
    print(f"report: {path}")
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed the evaluation splits with a trained run's model")
    p.add_argument("run", help="run folder")
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    p.add_argument("--shards", help="write memory-mappable shards to this folder (one sub-folder per split)")
    add_shard_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", help="evaluate a run's embeddings or saved .npy embeddings")
    p.add_argument("run", nargs="?", help="run folder")
    p.add_argument("--embeddings", help="query (or leave-one-out) embeddings .npy")
    p.add_argument("--labels", help="labels .npy for --embeddings")
    p.add_argument("--gallery-embeddings", help="gallery embeddings .npy (query/gallery protocol)")
    p.add_argument("--gallery-labels", help="gallery labels .npy")
    p.add_argument("--metrics", help="comma-separated metric names, e.g. recall@1,map@r,nmi")
    p.add_argument("--distance", help="cosine, dot, euclidean or squared_euclidean")
    p.add_argument(
        "--memory-budget-mb",
        type=megabytes,
        help="working memory of the evaluation in MiB, on top of the embeddings "
        "(default: the run's eval.memory_budget_mb, else 512)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write report.html for a run folder")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_report)
