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
from tqdm.auto import tqdm

from deepmetric.evaluation.metrics import parse_metric
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
    per_r = any(s.kind in ("r_precision", "map@r") for s in specs)
    depth = max([s.k for s in specs if s.k] + ([int(relevant.max())] if per_r else [1]))
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
            _, found = index.search(vectors, depth + 1)
        else:
            _, found = exact_search(shards, vectors, depth + 1, distance, memory_budget_mb, device)
        found = _without_self(found, rows)
        hit = (found >= 0) & (class_of[np.maximum(found, 0)] == class_of[rows][:, None])
        r = relevant[rows]
        keep = r > 0
        hit, r = hit[keep], r[keep]
        counted += int(keep.sum())
        cumulative = np.cumsum(hit, axis=1)
        ranks = np.arange(1, hit.shape[1] + 1)
        within_r = ranks[None, :] <= r[:, None]
        for spec in specs:
            if spec.kind == "recall":
                values = cumulative[:, spec.k - 1] > 0
            elif spec.kind == "precision":
                values = cumulative[:, spec.k - 1] / spec.k
            elif spec.kind == "r_precision":
                values = (hit & within_r).sum(1) / r
            else:
                values = (hit * within_r * cumulative / ranks).sum(1) / r
            sums[spec.name] += float(np.sum(values))
    if counted == 0:
        raise ValueError("no query has a relevant gallery row (every class has a single member)")
    return {name: total / counted for name, total in sums.items()}


def _without_self(found: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each query's ranking without its own row (or without the last column when it was not found)."""
    is_self = found == rows[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), found.shape[1] - 1)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    return found[keep].reshape(len(found), -1)
