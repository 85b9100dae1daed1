"""``deepmetric list [KIND]``: every name a config (or an index) can use, kind by kind.

Each kind is read from the registry or table of the module that owns it, so a newly registered loss,
backbone or backend shows up here without touching this file.
"""

from __future__ import annotations

import argparse

KINDS = (
    "losses",
    "miners",
    "metrics",
    "datasets",
    "backbones",
    "heads",
    "poolings",
    "optimizers",
    "schedules",
    "samplers",
    "backends",
    "sharded-indexes",
    "distances",
    "augmentations",
    "callbacks",
    "suite-searches",
)


def catalogue() -> dict[str, list[str]]:
    """Kind -> its names, in the order of :data:`KINDS`."""
    from deepmetric import data, losses, miners, models, retrieval, samplers
    from deepmetric.data.transforms import AUGMENTATIONS
    from deepmetric.distances import DISTANCES
    from deepmetric.evaluation import metrics
    from deepmetric.retrieval.sharded_index import index_kinds
    from deepmetric.suites.search import SEARCHES
    from deepmetric.training.callbacks import CALLBACKS
    from deepmetric.training.optim import OPTIMIZERS, SCHEDULES

    # metrics are listed as they are written in a config (recall@K), one per entry of their registry
    metric_names = [metrics.METRICS.lookup(kind).syntax for kind in metrics.METRICS.names()]
    return {
        "losses": losses.LOSSES.names(),
        "miners": miners.MINERS.names(),
        "metrics": metric_names,
        "datasets": data.DATASETS.names(),
        "backbones": models.BACKBONES.names(),
        "heads": models.HEADS.names(),
        "poolings": list(models.POOLINGS),
        "optimizers": OPTIMIZERS.names(),
        "schedules": SCHEDULES.names(),
        "samplers": samplers.SAMPLERS.names(),
        "backends": retrieval.SEARCH_BACKENDS.names(),
        "sharded-indexes": index_kinds(),
        "distances": sorted(DISTANCES),
        "augmentations": list(AUGMENTATIONS),
        "callbacks": CALLBACKS.names(),
        "suite-searches": list(SEARCHES),  # a bench suite's select.search
    }


def cmd_list(args: argparse.Namespace) -> None:
    found = catalogue()
    for kind in [args.kind] if args.kind else KINDS:
        print(f"{kind}: {', '.join(found[kind])}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list", help="list what can be named: losses, miners, metrics, datasets, backbones, ..."
    )
    p.add_argument("kind", nargs="?", choices=KINDS, help="one kind only (default: all)")
    p.set_defaults(func=cmd_list)
