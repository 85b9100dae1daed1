"""Metric definitions: one per name, computed per query from the ranking of the gallery.

Notation for one query ``q``: the gallery ranked closest first (ties: lower gallery index first; the query
itself and items sharing its id excluded), ``rel_j`` = 1 if the item at rank ``j`` (1-based) is relevant
(same class id, or for multi-hot labels at least one shared label), ``R`` = number of relevant gallery
items, ``P@j = (1/j) sum_{i<=j} rel_i``.

========================  =====================================================================
name                      value for one query
========================  =====================================================================
``recall@K``              ``1`` if ``sum_{j<=K} rel_j > 0`` else ``0`` (the DML papers' Recall@K)
``precision@K``           ``(1/K) sum_{j<=K} rel_j``                         (PML ``precision_at_k``)
``r_precision``           ``(1/R) sum_{j<=R} rel_j``                         (PML ``r_precision``)
``map@r``                 ``(1/R) sum_{j<=R} rel_j P@j``   (Musgrave et al. 2020; PML divides by R)
``map``                   ``(1/R) sum_{j<=N} rel_j P@j``, the whole ranking  (PML, ``k=None``)
``map@K``                 ``(1/min(K, R)) sum_{j<=K} rel_j P@j``  (1 for a perfect top K)
``mrr``                   ``1 / (rank of the first relevant item)``, whole ranking
``knn_accuracy@K``        ``1`` if the majority label of the K nearest neighbours is the query's
                          label; a tie in votes goes to the tied label ranked highest (1-D labels)
========================  =====================================================================

Every neighbour metric averages over the queries with ``R > 0``; queries without any relevant gallery
item are left out (as PML does) and counted. ``nmi``/``ami`` (see :mod:`.clustering`) are not per query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

NEIGHBOUR_KINDS = ("recall", "precision", "r_precision", "map@r", "map", "map@k", "mrr", "knn_accuracy")
CLUSTER_KINDS = ("nmi", "ami")
_WITH_K = {"recall": "recall", "precision": "precision", "map": "map@k", "knn_accuracy": "knn_accuracy"}
_PLAIN = {"r_precision", "map@r", "map", "mrr", "nmi", "ami"}
_NAME_WITH_K = re.compile(r"^([a-z_]+)@(\d+)$")

METRIC_NAMES = ", ".join(
    ("recall@K", "precision@K", "r_precision", "map@r", "map", "map@K", "mrr", "nmi", "ami", "knn_accuracy@K")
)


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: ``kind`` (e.g. ``recall``, ``map@k``) and ``k`` where the name carries one."""

    name: str
    kind: str
    k: int | None = None

    @property
    def is_clustering(self) -> bool:
        return self.kind in CLUSTER_KINDS


def parse_metric(name: str) -> MetricSpec:
    """``"recall@4"`` -> ``MetricSpec("recall@4", "recall", 4)``; unknown names raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"metric names must be strings, got {name!r}")
    key = name.strip().lower()
    if key in _PLAIN:
        return MetricSpec(name, key)
    match = _NAME_WITH_K.match(key)
    if match and match.group(1) in _WITH_K:
        k = int(match.group(2))
        if k < 1:
            raise ValueError(f"metric {name!r}: K must be at least 1")
        return MetricSpec(name, _WITH_K[match.group(1)], k)
    raise ValueError(f"unknown metric {name!r}; known metrics: {METRIC_NAMES}")


def neighbours_needed(specs: list[MetricSpec]) -> int:
    """The largest K a metric reads from the top of the ranking (R-based metrics add R per query)."""
    return max((s.k for s in specs if s.k is not None), default=0)


def needs_r_neighbours(specs: list[MetricSpec]) -> bool:
    return any(s.kind in ("r_precision", "map@r") for s in specs)


def needs_full_ranking(specs: list[MetricSpec]) -> bool:
    return any(s.kind == "map" for s in specs)


def _ranks(width: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(1, width + 1, device=like.device, dtype=torch.float64)


def precision_at_ranks(relevant: torch.Tensor) -> torch.Tensor:
    """``P@j`` for every rank ``j`` of every row (float64)."""
    return relevant.double().cumsum(1) / _ranks(relevant.shape[1], relevant)


def average_precision(relevant: torch.Tensor, cutoff: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """``(1/divisor) sum_{j<=cutoff} rel_j P@j`` per row; ``cutoff``/``divisor`` are per-row tensors."""
    within = _ranks(relevant.shape[1], relevant)[None, :] <= cutoff[:, None]
    hits = relevant & within
    return (precision_at_ranks(relevant) * hits).sum(1) / divisor.double()


def majority_vote(neighbour_labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Majority label of each row; a tie goes to the tied label that appears first (highest ranked)."""
    same = neighbour_labels[:, :, None] == neighbour_labels[:, None, :]
    votes = (same & valid[:, None, :] & valid[:, :, None]).sum(2)
    winner_position = votes.argmax(1)  # argmax returns the first maximum: the highest-ranked tied label
    return neighbour_labels.gather(1, winner_position[:, None]).squeeze(1)


def per_query_values(
    spec: MetricSpec,
    relevant: torch.Tensor,
    num_relevant: torch.Tensor,
    first_relevant_rank: torch.Tensor | None = None,
    neighbour_labels: torch.Tensor | None = None,
    neighbour_valid: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float64 value of ``spec`` for each query of a block.

    ``relevant``: ``rows x k`` booleans of the ranking's top (the whole ranking for ``map``), ``k`` at
    least every K asked and, for R-based metrics, every row's ``R``. ``num_relevant``: ``R`` per row.
    ``first_relevant_rank``: 1-based rank of the first relevant item (``mrr``). ``neighbour_labels``,
    ``neighbour_valid``, ``query_labels``: class ids of the top K and of the query (``knn_accuracy``).
    """
    kind, k = spec.kind, spec.k
    if kind == "recall":
        return relevant[:, :k].any(1).double()
    if kind == "precision":
        return relevant[:, :k].sum(1).double() / k
    if kind == "r_precision":
        within = _ranks(relevant.shape[1], relevant)[None, :] <= num_relevant[:, None]
        return (relevant & within).sum(1).double() / num_relevant.double()
    if kind == "map@r":
        return average_precision(relevant, num_relevant, num_relevant)
    if kind == "map":
        return average_precision(relevant, torch.full_like(num_relevant, relevant.shape[1]), num_relevant)
    if kind == "map@k":
        cutoff = torch.full_like(num_relevant, k)
        return average_precision(relevant, cutoff, torch.minimum(cutoff, num_relevant))
    if kind == "mrr":
        return 1.0 / first_relevant_rank.double()
    if kind == "knn_accuracy":
        predicted = majority_vote(neighbour_labels[:, :k], neighbour_valid[:, :k])
        return (predicted == query_labels).double()
    raise ValueError(f"{spec.name!r} is not a neighbour metric")
