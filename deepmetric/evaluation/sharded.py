"""Leave-one-out retrieval metrics over a sharded gallery, in chunks of queries.

Every gallery row (or a seeded sample of ``max_queries`` rows) queries all the others: its neighbours
come from an exact search over the shards (:func:`~deepmetric.retrieval.sharded_index.exact_search`,
on a GPU with ``device="cuda"``) or from a :class:`~deepmetric.retrieval.sharded_index.ShardedIndex`
(IVF candidates re-ranked exactly when the index has ``rerank``). The query's own row is removed from
its ranking; ties go to the lower row, as in :func:`deepmetric.evaluation.evaluate`, so the exact path
gives the same numbers. Memory: one chunk of queries (``memory_budget_mb`` bounds its search blocks),
the labels (8 bytes a row) and the class sizes; never the gallery.

Metrics (definitions in :mod:`deepmetric.evaluation.metrics`): ``recall@K``, ``precision@K``,
``r_precision`` and ``map@r``; the last two search as deep as the largest class, which ``max_depth``
bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.evaluation.metrics import METRICS, parse_metric, ranking_needs
from deepmetric.retrieval.ranking import RankedBand
from deepmetric.retrieval.sharded_index import ShardedIndex, exact_search
from deepmetric.retrieval.shards import ShardSet

SUPPORTED = ("recall", "precision", "r_precision", "map@r")


def evaluate_shards(
    shards: str | ShardSet,
    metrics: Sequence[str] = ("recall@1", "recall@10"),
    index: ShardedIndex | None = None,
    distance: str = "cosine",
    max_queries: int | None = None,
    chunk: int = 1024,
    memory_budget_mb: float = 256,
    device: str | None = None,
    max_depth: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """``{metric: value}`` averaged over the queries that have at least one relevant gallery row."""
    shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    specs = [parse_metric(name) for name in metrics]
    unsupported = [s.name for s in specs if s.kind not in SUPPORTED]
    if unsupported:
        raise ValueError(
            f"sharded evaluation supports recall@K, precision@K, r_precision, map@r, not {unsupported}"
        )
    if not specs:
        raise ValueError("metrics is empty; ask for at least one metric")
    labels = shards.all_labels()
    if labels is None:
        raise ValueError(f"{shards.directory} has no labels to evaluate with")
    if shards.plan.dtype == "bits" and index is None:
        raise ValueError("binary code shards are evaluated through a hamming ShardedIndex (index=...)")
    _, class_of, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = sizes[class_of] - 1  # R of every row as a query: its class minus itself
    needs = ranking_needs(specs)
    depth = max(needs.k, int(relevant.max()) if needs.r_neighbours else 1)
    if depth > max_depth:
        raise ValueError(
            f"r_precision/map@r need the {depth} nearest rows of each query (the largest class), more than "
            f"max_depth={max_depth}; raise max_depth or ask for recall@K / precision@K"
        )
    depth = min(depth, len(shards) - 1)
    if depth < 1:
        raise ValueError("leave-one-out evaluation needs at least two rows")
    queries = np.arange(len(shards))
    if max_queries is not None and max_queries < len(queries):
        queries = np.sort(np.random.default_rng(seed).choice(len(shards), max_queries, replace=False))
    sums = dict.fromkeys((s.name for s in specs), 0.0)
    counted = 0
    for start in tqdm(range(0, len(queries), chunk), desc="evaluate", disable=not progress):
        rows = queries[start : start + chunk]
        vectors = shards.rows(rows)
        if index is not None:
            distances, found = index.search(vectors, depth + 1)
        else:
            distances, found = exact_search(shards, vectors, depth + 1, distance, memory_budget_mb, device)
        band = _band(start, rows, *_without_self(distances, found, rows), class_of, relevant)
        counted += len(band.num_relevant)
        if len(band.num_relevant):
            for spec in specs:
                sums[spec.name] += float(METRICS.lookup(spec.kind).compute(band, spec).sum())
    if counted == 0:
        raise ValueError("no query has a relevant gallery row (every class has a single member)")
    return {name: total / counted for name, total in sums.items()}


def _band(
    start: int,
    rows: np.ndarray,
    distances: np.ndarray,
    found: np.ndarray,
    class_of: np.ndarray,
    relevant: np.ndarray,
) -> RankedBand:
    """The metrics' view of one chunk's rankings: the queries with ``R > 0``, their ranked rows (an
    empty slot, ``-1``, gets value ``inf`` and is never relevant) and which of those share their class."""
    keep = relevant[rows] > 0
    found = found[keep].astype(np.int64)
    valid = torch.from_numpy(found >= 0)
    values = torch.from_numpy(distances[keep].astype(np.float64)).masked_fill(~valid, np.inf)
    query_labels = torch.from_numpy(class_of[rows][keep].astype(np.int64))
    neighbour_labels = torch.from_numpy(class_of[np.maximum(found, 0)].astype(np.int64))
    return RankedBand(
        start,
        torch.from_numpy(keep),
        values,
        torch.from_numpy(found),
        valid & (neighbour_labels == query_labels[:, None]),
        torch.from_numpy(relevant[rows][keep].astype(np.int64)),
        None,
        neighbour_labels,
        query_labels,
    )


def _without_self(
    distances: np.ndarray, found: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ranking without its own row (or without the last column when it was not found)."""
    is_self = found == rows[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), found.shape[1] - 1)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    shape = (len(found), found.shape[1] - 1)
    return np.asarray(distances)[keep].reshape(shape), found[keep].reshape(shape)
