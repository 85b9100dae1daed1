"""The evaluation entry point: embeddings + labels in, a ``{metric name: value}`` dict out.

Two protocols:

* leave-one-out (``gallery_embeddings=None``): every query is ranked against all the other queries,
  never against itself (CUB/Cars/SOP style);
* query vs gallery (In-Shop style): queries are ranked against a separate gallery.

``query_ids``/``gallery_ids`` (e.g. image paths) additionally exclude gallery items that are the same
item as the query (duplicates). Metric definitions: :mod:`deepmetric.evaluation.metrics` and
``docs/metrics.md``. The ranking is exact and chunked (:mod:`deepmetric.evaluation.knn`), so memory stays
within ``memory_budget_mb`` for the working blocks plus the embeddings themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepmetric.checks import check_labels
from deepmetric.distances import Distance, get_distance
from deepmetric.evaluation.clustering import KMEANS_BACKENDS, cluster_scores
from deepmetric.evaluation.knn import (
    ArrayLike,
    Block,
    distance_blocks,
    encode_ids,
    full_ranking,
    native_selection,
    probe_columns,
    resolve_device,
    rows_per_block,
    streaming_topk,
    to_float_tensor,
    topk_bounded,
    topk_native,
)
from deepmetric.evaluation.metrics import (
    MetricSpec,
    needs_full_ranking,
    needs_r_neighbours,
    neighbours_needed,
    parse_metric,
    per_query_values,
)

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")
AVERAGES = ("query", "class")
# Gallery items of the query's class used to bound its k-th best score (a subset is still a valid bound).
MAX_CLASS_PROBES = 1024


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


@dataclass
class _Labels:
    """Labels on the device: int64 class codes (1-D) or boolean multi-hot rows (2-D)."""

    query: torch.Tensor
    gallery: torch.Tensor
    multi_hot: bool
    query_classes: np.ndarray  # one class code per query, for per-class averages and clustering


def _to_numpy(values: ArrayLike | Sequence) -> np.ndarray:
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def _prepare_labels(
    query_labels: ArrayLike,
    gallery_labels: ArrayLike | None,
    num_query: int,
    num_gallery: int,
    device: torch.device,
) -> _Labels:
    query_np = _to_numpy(query_labels)
    check_labels(query_np, num_query, "query_labels", "query_embeddings")
    gallery_np = query_np if gallery_labels is None else _to_numpy(gallery_labels)
    check_labels(gallery_np, num_gallery, "gallery_labels", "gallery_embeddings")
    if gallery_np.ndim != query_np.ndim:
        raise ValueError(
            "query_labels and gallery_labels must both be class ids or both be multi-hot matrices"
        )
    if query_np.ndim == 1:
        try:
            _, codes = np.unique(np.concatenate([query_np, gallery_np]), return_inverse=True)
        except TypeError:
            raise ValueError("labels must be class ids of one comparable kind") from None
        codes = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(device)
        query_codes = codes[:num_query]
        return _Labels(query_codes, codes[num_query:], False, query_codes.cpu().numpy())
    if gallery_np.shape[1] != query_np.shape[1]:
        raise ValueError(
            f"multi-hot query_labels have {query_np.shape[1]} columns "
            f"but gallery_labels have {gallery_np.shape[1]}"
        )
    if not (np.issubdtype(query_np.dtype, np.number) or query_np.dtype == bool):
        raise ValueError(f"multi-hot labels must be numeric 0/1 matrices, got dtype {query_np.dtype}")
    _, row_classes = np.unique(query_np != 0, axis=0, return_inverse=True)
    return _Labels(
        torch.from_numpy(query_np != 0).to(device),
        torch.from_numpy(gallery_np != 0).to(device),
        True,
        row_classes.reshape(-1),
    )


def _relevance_block(labels: _Labels, rows: slice) -> torch.Tensor:
    """``rows x N_gallery`` booleans: gallery items sharing a label with each query of the block."""
    query = labels.query[rows]
    if labels.multi_hot:
        return (query.float() @ labels.gallery.float().T) > 0
    return query[:, None] == labels.gallery[None, :]


def _first_relevant_rank_outside_top(
    scores: torch.Tensor, relevant: torch.Tensor, largest: bool
) -> torch.Tensor:
    """1-based rank of each row's first relevant item over the whole row (ties: lower index first)."""
    worst = -torch.inf if largest else torch.inf
    masked = torch.where(relevant, scores, torch.full_like(scores, worst))
    best = (masked.max(1) if largest else masked.min(1)).values[:, None]
    at_best = scores == best
    first_index = (relevant & at_best).int().argmax(1)
    better = scores > best if largest else scores < best
    columns = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = at_best & (columns < first_index[:, None])
    return better.sum(1) + tied_before.sum(1) + 1


@dataclass
class _Probes:
    """Gallery items whose scores bound each query's k-th best score (:func:`topk_bounded`).

    ``columns``: a fixed random sample of gallery columns; ``class_members``: per class code, up to
    ``MAX_CLASS_PROBES`` gallery indices of that class (``-1`` padding), None for multi-hot labels.
    """

    columns: torch.Tensor
    class_members: torch.Tensor | None


def _make_probes(labels: _Labels, num_classes: int, num_gallery: int, device: torch.device) -> _Probes:
    columns = probe_columns(num_gallery, device)
    if labels.multi_hot:
        return _Probes(columns, None)
    counts = torch.bincount(labels.gallery, minlength=num_classes)
    starts = counts.cumsum(0) - counts
    slots = torch.arange(min(int(counts.max()), MAX_CLASS_PROBES), device=device)
    by_class = labels.gallery.argsort(stable=True)
    positions = (starts[:, None] + slots[None, :]).clamp_max(num_gallery - 1)
    members = torch.where(slots[None, :] < counts[:, None], by_class[positions], -1)
    return _Probes(columns, members)


def _probe_values(block: Block, labels: _Labels, probes: _Probes, largest: bool) -> torch.Tensor:
    """Scores of distinct gallery items per query: its relevant items plus the sampled columns that are
    not relevant to it (so none is counted twice). Excluded items already hold the worst score."""
    worst = -torch.inf if largest else torch.inf
    sampled = block.scores.index_select(1, probes.columns)  # much faster than advanced indexing
    if probes.class_members is None:
        return sampled
    query_labels = labels.query[block.start : block.stop]
    sampled.masked_fill_(labels.gallery[probes.columns][None, :] == query_labels[:, None], worst)
    members = probes.class_members[query_labels]
    member_values = block.scores.gather(1, members.clamp_min(0)).masked_fill_(members < 0, worst)
    return torch.cat([member_values, sampled], 1)


def _relevant_counts(
    labels: _Labels,
    gallery_counts: torch.Tensor,
    leave_one_out: bool,
    query_codes: torch.Tensor | None,
    gallery_codes: torch.Tensor | None,
) -> torch.Tensor:
    """``R`` of every query (1-D labels): the gallery items of its class less the excluded ones (itself in
    leave-one-out, the items with its id), counted once up front instead of over every block's rows."""
    counts = gallery_counts[labels.query]
    if query_codes is None:
        return counts - int(leave_one_out)
    # excluded relevant items are the gallery items with both the query's id and its class (itself included)
    num_labels = len(gallery_counts)
    keys, key_counts = torch.unique(gallery_codes * num_labels + labels.gallery, return_counts=True)
    query_keys = query_codes * num_labels + labels.query
    position = torch.searchsorted(keys, query_keys).clamp_max(len(keys) - 1)
    return counts - torch.where(keys[position] == query_keys, key_counts[position], 0)


def _neighbour_count(specs: list[MetricSpec], num_relevant: torch.Tensor) -> int:
    """How many ranked neighbours the metrics read: every K asked, and every row's ``R`` where needed."""
    k = max(neighbours_needed(specs), 1)
    return max(k, int(num_relevant.max())) if needs_r_neighbours(specs) else k


def _block_values(
    block: Block,
    specs: list[MetricSpec],
    labels: _Labels,
    relevant_counts: torch.Tensor | None,
    largest: bool,
    probes: _Probes,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query metric values of one block: ``(has_relevant mask, {name: values of those queries})``.

    ``relevant_counts``: ``R`` of every query for 1-D labels (None for multi-hot ones: counted per block).
    """
    rows = slice(block.start, block.stop)
    relevance = None
    if labels.multi_hot:
        relevance = block.exclude_from(_relevance_block(labels, rows))
        num_relevant = relevance.sum(1)
    else:
        num_relevant = relevant_counts[rows]
    has_relevant = num_relevant > 0
    if not bool(has_relevant.any()):
        return has_relevant, {}

    # rank every row of the block (no copy of the block), then keep the rows with a relevant item
    if needs_full_ranking(specs):
        values, indices = full_ranking(block.scores, largest)
    elif native_selection(block.scores.device):
        values, indices = topk_native(block.scores, _neighbour_count(specs, num_relevant), largest)
    else:
        k, row_k = _neighbour_count(specs, num_relevant), None
        if needs_r_neighbours(specs) and not any(s.kind == "mrr" for s in specs):  # mrr reads all k slots
            row_k = num_relevant.clamp_min(max(neighbours_needed(specs), 1))
        probe_values = _probe_values(block, labels, probes, largest)
        values, indices = topk_bounded(block.scores, k, largest, probe_values, row_k)
    kept_rows = has_relevant.nonzero().flatten()
    relevant = _relevant_neighbours(
        values[kept_rows],
        indices[kept_rows],
        labels,
        rows,
        kept_rows,
        None if relevance is None else relevance[kept_rows],
    )
    first_rank = None
    if any(s.kind == "mrr" for s in specs):
        found = relevant.any(1)
        first_rank = relevant.int().argmax(1) + 1
        if not bool(found.all()):
            missing_rows = kept_rows[~found]
            if relevance is None:
                query_labels = labels.query[rows][missing_rows]
                row_relevance = block.exclude_from(
                    labels.gallery[None, :] == query_labels[:, None], missing_rows
                )
            else:
                row_relevance = relevance[missing_rows]
            first_rank[~found] = _first_relevant_rank_outside_top(
                block.scores[missing_rows], row_relevance, largest
            )
    return has_relevant, _metric_values(
        specs,
        relevant,
        values[kept_rows],
        indices[kept_rows],
        num_relevant[kept_rows],
        labels,
        rows,
        kept_rows,
        first_rank,
    )


def _relevant_neighbours(
    values: torch.Tensor,
    indices: torch.Tensor,
    labels: _Labels,
    rows: slice,
    kept_rows: torch.Tensor,
    relevance: torch.Tensor | None,
) -> torch.Tensor:
    """``rows x k`` booleans: which ranked neighbours are relevant (empty slots never are)."""
    indices = indices.clamp_min(0)  # empty slots (-1) are invalid anyway
    if relevance is not None:
        relevant = relevance.gather(1, indices)
    else:
        relevant = labels.gallery[indices] == labels.query[rows][kept_rows][:, None]
    return relevant & ~torch.isinf(values)


def _metric_values(
    specs: list[MetricSpec],
    relevant: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    num_relevant: torch.Tensor,
    labels: _Labels,
    rows: slice,
    kept_rows: torch.Tensor,
    first_rank: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """``{name: per-query values}`` of the kept rows from their ranked neighbours."""
    neighbour_labels = None if labels.multi_hot else labels.gallery[indices.clamp_min(0)]
    query_labels = labels.query[rows][kept_rows]
    return {
        spec.name: per_query_values(
            spec,
            relevant,
            num_relevant,
            first_relevant_rank=first_rank,
            neighbour_labels=neighbour_labels,
            neighbour_valid=~torch.isinf(values),
            query_labels=query_labels,
        )
        for spec in specs
    }


def _streamed_values(
    query: torch.Tensor,
    gallery: torch.Tensor | None,
    specs: list[MetricSpec],
    labels: _Labels,
    relevant_counts: torch.Tensor,
    distance: Distance,
    query_codes: torch.Tensor | None,
    gallery_codes: torch.Tensor | None,
) -> list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]:
    """``(start, has_relevant, values)`` per band of queries, from one :func:`streaming_topk` of all
    (``gallery=None``: leave-one-out)."""
    values, indices = streaming_topk(
        query, gallery, distance, _neighbour_count(specs, relevant_counts), query_codes, gallery_codes
    )
    results = []
    band = 8192
    for start in range(0, len(query), band):
        rows = slice(start, min(start + band, len(query)))
        has_relevant = relevant_counts[rows] > 0
        if not bool(has_relevant.any()):
            results.append((start, has_relevant, {}))
            continue
        kept_rows = has_relevant.nonzero().flatten()
        kept_values, kept_indices = values[rows][kept_rows], indices[rows][kept_rows]
        relevant = _relevant_neighbours(kept_values, kept_indices, labels, rows, kept_rows, None)
        metric_values = _metric_values(
            specs,
            relevant,
            kept_values,
            kept_indices,
            relevant_counts[rows][kept_rows],
            labels,
            rows,
            kept_rows,
            None,
        )
        results.append((start, has_relevant, metric_values))
    return results


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
    memory_budget_mb: float = 512,
    average: str = "query",
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    seed: int = 0,
    kmeans_backend: str = "torch",
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
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("gallery_embeddings and gallery_labels must be given together")
    leave_one_out = gallery_embeddings is None
    if leave_one_out and gallery_ids is not None:
        raise ValueError("gallery_ids needs gallery_embeddings; in leave-one-out only query_ids are used")
    if not leave_one_out and (query_ids is None) != (gallery_ids is None):
        raise ValueError("query_ids and gallery_ids must be given together")

    device = resolve_device(device)
    distance = get_distance(distance)
    query = to_float_tensor(query_embeddings, "query_embeddings", device)
    gallery = query if leave_one_out else to_float_tensor(gallery_embeddings, "gallery_embeddings", device)
    if gallery.shape[1] != query.shape[1]:
        raise ValueError(
            f"gallery_embeddings have dimension {gallery.shape[1]} but query_embeddings have {query.shape[1]}"
        )
    labels = _prepare_labels(query_labels, gallery_labels, len(query), len(gallery), device)
    query_codes = gallery_codes = None
    if query_ids is not None:
        query_np, gallery_np = encode_ids(query_ids, gallery_ids)
        if len(query_np) != len(query) or len(gallery_np) != len(gallery):
            raise ValueError("there must be one id per query embedding and one per gallery embedding")
        query_codes, gallery_codes = (
            torch.from_numpy(query_np).to(device),
            torch.from_numpy(gallery_np).to(device),
        )
    if labels.multi_hot and any(s.kind == "knn_accuracy" or s.is_clustering for s in specs):
        raise ValueError("knn_accuracy, nmi and ami need 1-D class ids, not multi-hot labels")

    query, gallery = distance.prepare(query), distance.prepare(gallery)
    results: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    num_without_relevant = 0
    neighbour_specs = [s for s in specs if not s.is_clustering]
    if neighbour_specs:
        per_query = {s.name: np.full(len(query), np.nan) for s in neighbour_specs}
        gallery_counts = (
            None
            if labels.multi_hot
            else torch.bincount(labels.gallery, minlength=int(labels.query.max()) + 1)
        )
        num_classes = 0 if gallery_counts is None else len(gallery_counts)
        relevant_counts = (
            None
            if labels.multi_hot
            else _relevant_counts(labels, gallery_counts, leave_one_out, query_codes, gallery_codes)
        )
        if (
            native_selection(device)
            and not labels.multi_hot
            and not needs_full_ranking(neighbour_specs)
            and not any(s.kind == "mrr" for s in neighbour_specs)
        ):  # the native streaming selection ranks every query in one pass, symmetric in leave-one-out
            bands = _streamed_values(
                query,
                None if leave_one_out else gallery,
                neighbour_specs,
                labels,
                relevant_counts,
                distance,
                query_codes,
                gallery_codes,
            )
        else:
            probes = _make_probes(labels, num_classes, len(gallery), device)
            rows = rows_per_block(len(gallery), memory_budget_mb, needs_full_ranking(neighbour_specs))
            blocks = distance_blocks(
                query, gallery, distance, rows, leave_one_out, query_codes, gallery_codes
            )
            bands = (
                (
                    block.start,
                    *_block_values(
                        block, neighbour_specs, labels, relevant_counts, distance.is_similarity, probes
                    ),
                )
                for block in blocks
            )
        for start, has_relevant, values in bands:
            kept = start + has_relevant.nonzero().flatten().cpu().numpy()
            num_without_relevant += int((~has_relevant).sum())
            for name, block_values in values.items():
                per_query[name][kept] = block_values.cpu().numpy()
        if num_without_relevant:
            logger.info(
                "%d of %d queries have no relevant gallery item and are left out",
                num_without_relevant,
                len(query),
            )

    clustering = [s.kind for s in specs if s.is_clustering]
    scores = (
        cluster_scores(query, labels.query_classes, tuple(clustering), seed, memory_budget_mb, kmeans_backend)
        if clustering
        else {}
    )
    for spec in specs:
        if spec.is_clustering:
            results[spec.name] = scores[spec.kind]
        else:
            results[spec.name] = _average(per_query[spec.name], labels.query_classes, average)
    return EvaluationResult(results, len(query), num_without_relevant, per_query)


def evaluate(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    distance: str | Distance = "cosine",
    device: str | torch.device | None = None,
    memory_budget_mb: float = 512,
    average: str = "query",
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    seed: int = 0,
    kmeans_backend: str = "torch",
) -> dict[str, float]:
    """Evaluate an embedding: ``{metric name: value}`` for each name in ``metrics``.

    Args:
        query_embeddings: ``N x D`` numpy array or torch tensor.
        query_labels: ``N`` class ids (ints or strings) or an ``N x C`` multi-hot matrix.
        gallery_embeddings, gallery_labels: the gallery for the query-vs-gallery protocol; None for
            leave-one-out within the queries.
        metrics: names from :mod:`deepmetric.evaluation.metrics` (``recall@K``, ``precision@K``,
            ``r_precision``, ``map@r``, ``map``, ``map@K``, ``mrr``, ``knn_accuracy@K``, ``nmi``, ``ami``).
        distance: ``cosine``, ``dot``, ``euclidean``, ``squared_euclidean`` or a Distance.
        device: where to compute; default CUDA when available.
        memory_budget_mb: working memory for one block of distances (the embeddings come on top).
        average: ``query`` (mean over queries) or ``class`` (mean over classes of the per-class means;
            for multi-hot labels a class is a distinct label row).
        query_ids, gallery_ids: item ids (ints, strings, paths); gallery items with the query's id are
            excluded from its ranking.
        seed: seed of the k-means used by ``nmi``/``ami`` (which cluster the query embeddings).
        kmeans_backend: ``torch`` (k-means++ and at most 20 Lloyd iterations, any device) or ``faiss``
            (``faiss.Kmeans``, 20 iterations, as PML; needs faiss).

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
    ).metrics
