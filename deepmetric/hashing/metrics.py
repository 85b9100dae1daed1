"""Retrieval metrics of binary codes under Hamming ranking (the protocol of the deep hashing papers).

Each query ranks the whole database by Hamming distance; **ties are broken by database index** (a stable
sort: among equally distant items the one added first ranks first), the convention of the public DeepHash
/ HashNet / DPSH evaluation code, which keeps results deterministic (a random tie order would make mAP a
random variable; with short codes many items share a distance). Relevant = shares a label with the query
(1-D class ids or multi-hot rows).

- ``map``: mean over queries of AP = (1/R) sum_{i relevant} precision@i over the whole database ranking,
  R the number of relevant items; a query with no relevant item scores 0.
- ``map@N``: AP over the top N only, normalised by the number of relevant items within the top N (the
  DeepHash "mAP@N", e.g. mAP@1000 on CIFAR-10, mAP@5000 on NUS-WIDE); 0 when the top N holds none.
  (``deepmetric.evaluation``'s float ``map@K`` normalises differently; ``map`` agrees with its ``map``.)
- ``precision@rR`` / ``recall@rR``: precision (recall) of the items within Hamming radius R (lookup-table
  search); a query retrieving nothing has precision 0, as in the papers' "precision within radius 2".
- ``pr_curve``: precision and recall within radius r for r = 0..bits (same conventions), returned as the
  arrays ``pr_curve_radius``, ``pr_curve_precision``, ``pr_curve_recall``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from deepmetric.hashing.packing import ArrayLike, pack_bits
from deepmetric.hashing.search import hamming_distances
from deepmetric.masks import same_class

DEFAULT_METRICS = ("map", "map@1000", "precision@r2", "pr_curve")
_PATTERNS = (r"map", r"map@(\d+)", r"precision@r(\d+)", r"recall@r(\d+)", r"pr_curve")


def _check_metric(name: str) -> None:
    if not any(re.fullmatch(pattern, name) for pattern in _PATTERNS):
        raise ValueError(
            f"unknown hashing metric {name!r}; use 'map', 'map@N', 'precision@rR', 'recall@rR' or 'pr_curve'"
        )


def _tensor(array: ArrayLike) -> torch.Tensor:
    return array.detach().cpu() if torch.is_tensor(array) else torch.from_numpy(np.asarray(array))


def _check_inputs(query_codes, query_labels, db_codes, db_labels) -> None:
    for name, codes in (("query_codes", query_codes), ("db_codes", db_codes)):
        if codes.ndim != 2 or 0 in codes.shape:
            raise ValueError(
                f"{name} must be a non-empty 2-D (N x bits) array, got shape {tuple(codes.shape)}"
            )
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query codes have {query_codes.shape[1]} bits but database codes {db_codes.shape[1]}"
        )
    for name, labels, codes in (
        ("query_labels", query_labels, query_codes),
        ("db_labels", db_labels, db_codes),
    ):
        if labels.ndim not in (1, 2):
            raise ValueError(
                f"{name} must be 1-D class ids or a 2-D multi-hot matrix, got shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != codes.shape[0]:
            raise ValueError(f"{name} has {labels.shape[0]} rows but there are {codes.shape[0]} codes")
    if query_labels.ndim != db_labels.ndim:
        raise ValueError("query_labels and db_labels must both be class ids or both multi-hot matrices")


def evaluate_hashing(
    query_codes: ArrayLike,
    query_labels: ArrayLike,
    db_codes: ArrayLike,
    db_labels: ArrayLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    memory_budget: int = 256 * 2**20,
) -> dict[str, float | np.ndarray]:
    """Hashing metrics of ``query_codes`` against ``db_codes`` (codes: real, ±1 or {0,1}; bit = code > 0)."""
    for name in metrics:
        _check_metric(name)
    query_codes, query_labels, db_codes, db_labels = map(
        _tensor, (query_codes, query_labels, db_codes, db_labels)
    )
    _check_inputs(query_codes, query_labels, db_codes, db_labels)
    bits, num_db = query_codes.shape[1], db_codes.shape[0]
    query_packed, db_packed = pack_bits(query_codes), pack_bits(db_codes)
    radii = torch.arange(bits + 1)
    top_ns = sorted({int(m.split("@")[1]) for m in metrics if re.fullmatch(r"map@\d+", m)})
    sums: dict[str, torch.Tensor] = {}

    def add(key: str, values: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0) + values.double().sum(0)

    block = max(1, memory_budget // (40 * num_db))  # int64 distances, order, ranks and a few masks per pair
    for start in range(0, query_codes.shape[0], block):
        distances = hamming_distances(query_packed[start : start + block], db_packed)
        relevant = same_class(query_labels[start : start + block], db_labels)
        order = torch.sort(distances, dim=1, stable=True).indices  # ties: lower database index first
        ranked = torch.gather(relevant, 1, order).double()
        hits = torch.cumsum(ranked, dim=1)
        precision_at = hits / torch.arange(1, num_db + 1, dtype=torch.float64)
        weighted = torch.cumsum(precision_at * ranked, dim=1)
        add("map", weighted[:, -1] / hits[:, -1].clamp_min(1))
        for top_n in top_ns:
            n = min(top_n, num_db)
            add(f"map@{top_n}", weighted[:, n - 1] / hits[:, n - 1].clamp_min(1))
        # per query and radius r: items and relevant items within distance r
        within = torch.zeros(distances.shape[0], bits + 1, dtype=torch.float64)
        within.scatter_add_(1, distances, torch.ones_like(distances, dtype=torch.float64))
        relevant_within = torch.zeros_like(within).scatter_add_(1, distances, relevant.double())
        within, relevant_within = within.cumsum(1), relevant_within.cumsum(1)
        add("precision_r", relevant_within / within.clamp_min(1))
        add("recall_r", relevant_within / relevant_within[:, -1:].clamp_min(1))

    num_queries = query_codes.shape[0]
    results: dict[str, float | np.ndarray] = {}
    for name in metrics:
        radius = re.fullmatch(r"(precision|recall)@r(\d+)", name)
        if name == "pr_curve":
            results["pr_curve_radius"] = radii.numpy()
            results["pr_curve_precision"] = (sums["precision_r"] / num_queries).numpy()
            results["pr_curve_recall"] = (sums["recall_r"] / num_queries).numpy()
        elif radius:
            r = min(int(radius.group(2)), bits)
            results[name] = float(sums[f"{radius.group(1)}_r"][r] / num_queries)
        else:
            results[name] = float(sums[name] / num_queries)
    return results
