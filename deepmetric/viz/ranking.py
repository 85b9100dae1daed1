"""Neighbours and per-query average precision for the pictures, from :mod:`deepmetric.evaluation`.

The pictures only ever look at some queries (a grid's rows, a sample searched for worst queries), so
these wrappers run the evaluation engine on those queries alone against the whole gallery. With no
gallery, the query set is its own gallery and each query's own row is excluded through the engine's
ids mechanism (leave-one-out), so the results agree with what :func:`deepmetric.evaluation.evaluate`
reports for the same queries.
"""

from __future__ import annotations

import numpy as np
import torch

from deepmetric.checks import check_embeddings
from deepmetric.distances import Distance
from deepmetric.evaluation import evaluate_detailed, knn

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(values: ArrayLike) -> np.ndarray:
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def _selected_queries(
    query_embeddings: ArrayLike, query_indices: ArrayLike | None, gallery_embeddings: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(rows, query block, gallery, ids)``: the chosen queries, the set searched and, in leave-one-out,
    the ids (query row, gallery row) that keep a query out of its own results."""
    query = _as_numpy(query_embeddings)
    check_embeddings(query, "query_embeddings")
    rows = np.arange(len(query)) if query_indices is None else _as_numpy(query_indices).astype(np.int64)
    if rows.ndim != 1:
        raise ValueError(f"query_indices must be 1-D, got shape {rows.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(query)):
        raise ValueError(f"query_indices must lie in [0, {len(query)}), got {rows.tolist()}")
    if gallery_embeddings is None:
        return rows, query[rows], query, {"query_ids": rows, "gallery_ids": np.arange(len(query))}
    return rows, query[rows], _as_numpy(gallery_embeddings), {}


def nearest_neighbors(
    query_embeddings: ArrayLike,
    k: int,
    gallery_embeddings: ArrayLike | None = None,
    *,
    distance: str | Distance = "cosine",
    query_indices: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)``, each ``len(query_indices) x k``: the ``k`` closest gallery items per query.

    ``scores`` are the values of ``distance`` (similarities for ``cosine``: larger is closer; distances for
    ``euclidean``: smaller is closer), best first; ties go to the lower gallery index. ``query_indices``
    picks some of the queries (default all).
    """
    rows, query, gallery, ids = _selected_queries(query_embeddings, query_indices, gallery_embeddings)
    available = len(gallery) - int(gallery_embeddings is None)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available} (the searchable gallery size), got {k!r}")
    if len(rows) == 0:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    values, indices = knn(query, int(k), gallery, distance=distance, **ids)
    return indices.numpy(), values.numpy()


def average_precision_per_query(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    *,
    distance: str | Distance = "cosine",
    query_indices: ArrayLike | None = None,
) -> np.ndarray:
    """Average precision (evaluation's ``map``, whole ranking) of each query; NaN: no relevant item.

    ``AP = (1 / R) * sum over relevant ranks r of (relevant items in the top r) / r``, with ``R`` the number
    of relevant gallery items (same class, or a shared label for multi-hot labels).
    """
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("gallery_embeddings and gallery_labels must be given together")
    rows, query, gallery, ids = _selected_queries(query_embeddings, query_indices, gallery_embeddings)
    if len(rows) == 0:
        return np.zeros(0)
    labels = _as_numpy(query_labels)
    if len(labels) != len(_as_numpy(query_embeddings)):
        raise ValueError(f"query_labels has {len(labels)} rows but query_embeddings has {len(rows)}")
    ref_labels = labels if gallery_labels is None else _as_numpy(gallery_labels)
    result = evaluate_detailed(
        query, labels[rows], gallery, ref_labels, metrics=["map"], distance=distance, **ids
    )
    return result.per_query["map"]
