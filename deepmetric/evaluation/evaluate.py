"""The evaluation entry point: embeddings + labels in, a ``{metric name: value}`` dict out.

Two protocols:

* leave-one-out (``gallery_embeddings=None``): every query is ranked against all the other queries,
  never against itself (CUB/Cars/SOP style);
* query vs gallery (In-Shop style): queries are ranked against a separate gallery.

``query_ids``/``gallery_ids`` (e.g. image paths) additionally exclude gallery items that are the same
item as the query (duplicates). Metric definitions: :mod:`deepmetric.evaluation.metrics` and
``docs/metrics.md``. The ranking is computed once for every neighbour metric
(:mod:`deepmetric.retrieval.ranking`), exact and chunked, so memory stays within ``memory_budget_mb`` plus
the embeddings themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepmetric.distances import Distance
from deepmetric.evaluation.clustering import KMEANS_BACKENDS, cluster_scores
from deepmetric.evaluation.metrics import METRICS, MetricSpec, parse_metric, ranking_needs
from deepmetric.evaluation.verification import PairScores, ranking_pairs
from deepmetric.retrieval.knn import ArrayLike
from deepmetric.retrieval.ranking import DEFAULT_MEMORY_BUDGET_MB, Ranking, rank

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")
AVERAGES = ("query", "class")


@dataclass
class EvaluationResult:
    """Metric values plus what was averaged.

    ``per_query`` holds each neighbour metric's value for every query (NaN for the queries left out
    because no gallery item is relevant to them; ``num_queries_without_relevant`` counts those).
    """

    metrics: dict[str, float]
    num_queries: int
    num_queries_without_relevant: int
    per_query: dict[str, np.ndarray] = field(default_factory=dict)


def _neighbour_values(ranking: Ranking, specs: list[MetricSpec]) -> tuple[dict[str, np.ndarray], int]:
    """Each neighbour metric's value for every query (NaN where ``R = 0``) and the count of those queries,
    from one pass over the ranking."""
    per_query = {s.name: np.full(ranking.num_queries, np.nan) for s in specs}
    num_without_relevant = 0
    for band in ranking.bands():
        kept = band.start + band.has_relevant.nonzero().flatten().cpu().numpy()
        num_without_relevant += int((~band.has_relevant).sum())
        if not len(kept):
            continue
        for spec in specs:
            per_query[spec.name][kept] = METRICS.lookup(spec.kind).compute(band, spec).cpu().numpy()
    if num_without_relevant:
        logger.info(
            "%d of %d queries have no relevant gallery item and are left out",
            num_without_relevant,
            ranking.num_queries,
        )
    return per_query, num_without_relevant


def _average(values: np.ndarray, classes: np.ndarray, average: str) -> float:
    kept = ~np.isnan(values)
    if not kept.any():
        return float("nan")
    if average == "query":
        return float(values[kept].mean())
    kept_classes = classes[kept]
    sums = np.bincount(kept_classes, weights=values[kept])
    counts = np.bincount(kept_classes)
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


def evaluate_detailed(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    distance: str | Distance = "cosine",
    device: str | torch.device | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    average: str = "query",
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    seed: int = 0,
    kmeans_backend: str = "torch",
    copy: bool = True,
) -> EvaluationResult:
    """Like :func:`evaluate`, returning an :class:`EvaluationResult` (counts and per-query values too)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    specs = [parse_metric(name) for name in metrics]
    if not specs:
        raise ValueError("metrics is empty; ask for at least one metric")
    if kmeans_backend not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans_backend must be one of {KMEANS_BACKENDS}, got {kmeans_backend!r}")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    groups = {group: [s for s in specs if s.group == group] for group in ("neighbour", "clustering")}
    verification = [s for s in specs if s.group == "verification"]
    ranking = rank(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        distance,
        ranking_needs(groups["neighbour"]),
        query_ids,
        gallery_ids,
        memory_budget_mb,
        device,
        copy,
    )
    labels = ranking.labels
    if labels.multi_hot and (groups["clustering"] or any(s.kind == "knn_accuracy" for s in specs)):
        raise ValueError("knn_accuracy, nmi and ami need 1-D class ids, not multi-hot labels")

    per_query: dict[str, np.ndarray] = {}
    num_without_relevant = 0
    if groups["neighbour"]:
        per_query, num_without_relevant = _neighbour_values(ranking, groups["neighbour"])
    results: dict[str, float] = {}
    if groups["clustering"]:
        which = tuple(s.kind for s in groups["clustering"])
        scores = cluster_scores(
            ranking.query, labels.query_classes, which, seed, memory_budget_mb, kmeans_backend
        )
        results.update({s.name: scores[s.kind] for s in groups["clustering"]})
    if verification:
        pairs = PairScores(ranking_pairs(ranking, seed=seed), ranking.distance)
        results.update({s.name: METRICS.lookup(s.kind).compute(pairs, s) for s in verification})
    results.update(
        {name: _average(values, labels.query_classes, average) for name, values in per_query.items()}
    )
    ordered = {spec.name: results[spec.name] for spec in specs}
    return EvaluationResult(ordered, ranking.num_queries, num_without_relevant, per_query)


def evaluate(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    distance: str | Distance = "cosine",
    device: str | torch.device | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    average: str = "query",
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    seed: int = 0,
    kmeans_backend: str = "torch",
    copy: bool = True,
) -> dict[str, float]:
    """Evaluate an embedding: ``{metric name: value}`` for each name in ``metrics``.

    Args:
        query_embeddings: ``N x D`` numpy array or torch tensor.
        query_labels: ``N`` class ids (ints or strings) or an ``N x C`` multi-hot matrix.
        gallery_embeddings, gallery_labels: the gallery for the query-vs-gallery protocol; None for
            leave-one-out within the queries.
        metrics: names from :mod:`deepmetric.evaluation.metrics` (``recall@K``, ``precision@K``,
            ``r_precision``, ``map@r``, ``map``, ``map@K``, ``mrr``, ``knn_accuracy@K``, ``nmi``, ``ami``,
            and the verification metrics ``roc_auc``, ``eer``, ``tar@far=F``, ``precision@threshold=T``,
            ``recall@threshold=T``).
        distance: ``cosine``, ``dot``, ``euclidean``, ``squared_euclidean`` or a Distance.
        device: where to compute; default CUDA when available.
        memory_budget_mb: working memory of the ranking, the pairs and the clustering (the embeddings
            come on top).
        average: ``query`` (mean over queries) or ``class`` (mean over classes of the per-class means;
            for multi-hot labels a class is a distinct label row).
        query_ids, gallery_ids: item ids (ints, strings, paths); gallery items with the query's id are
            excluded from its ranking.
        seed: seed of the k-means used by ``nmi``/``ami`` (which cluster the query embeddings).
        kmeans_backend: ``torch`` (k-means++ and at most 20 Lloyd iterations, any device) or ``faiss``
            (``faiss.Kmeans``, 20 iterations, as PML; needs faiss).
        copy: False lets the L2 normalisation of ``cosine`` overwrite the embeddings passed in (float32
            arrays on the evaluation's device are used as they are), sparing a normalised copy of them.

    Queries with no relevant gallery item are left out of the neighbour metrics (use
    :func:`evaluate_detailed` for their count); a metric with no query left is NaN.
    """
    return evaluate_detailed(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        metrics,
        distance,
        device,
        memory_budget_mb,
        average,
        query_ids,
        gallery_ids,
        seed,
        kmeans_backend,
        copy,
    ).metrics
