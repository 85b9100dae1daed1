"""Metric definitions: the :data:`METRICS` registry, one short definition per metric.

Each :class:`Metric` says how its name is written, which group it belongs to and what it reads:

* ``neighbour`` metrics declare the :class:`~deepmetric.retrieval.ranking.RankingNeeds` of their ranking
  and compute one value per query from a :class:`~deepmetric.retrieval.ranking.RankedBand`;
* ``clustering`` metrics (``nmi``, ``ami``) score k-means clusters of the query embeddings
  (:mod:`.clustering`);
* ``verification`` metrics score pairs of embeddings as same / different from their distances
  (:mod:`.verification`).

Notation for one query ``q``: the gallery ranked closest first (ties: lower gallery index first; the query
itself and items sharing its id excluded), ``rel_j`` = 1 if the item at rank ``j`` (1-based) is relevant
(same class id, or for multi-hot labels at least one shared label), ``R`` = number of relevant gallery
items, ``P@j = (1/j) sum_{i<=j} rel_i``.

==========================  =====================================================================
name                        value
==========================  =====================================================================
``recall@K``                ``1`` if ``sum_{j<=K} rel_j > 0`` else ``0`` (the DML papers' Recall@K)
``precision@K``             ``(1/K) sum_{j<=K} rel_j``                         (PML ``precision_at_k``)
``r_precision``             ``(1/R) sum_{j<=R} rel_j``                         (PML ``r_precision``)
``map@r``                   ``(1/R) sum_{j<=R} rel_j P@j``   (Musgrave et al. 2020; PML divides by R)
``map``                     ``(1/R) sum_{j<=N} rel_j P@j``, the whole ranking  (PML, ``k=None``)
``map@K``                   ``(1/min(K, R)) sum_{j<=K} rel_j P@j``  (1 for a perfect top K)
``mrr``                     ``1 / (rank of the first relevant item)``, whole ranking
``knn_accuracy@K``          ``1`` if the majority label of the K nearest neighbours is the query's
                            label; a tie in votes goes to the tied label ranked highest (1-D labels)
``roc_auc``                 area under the ROC curve of same-class pairs against different ones
``eer``                     equal error rate: where the ROC curve crosses FPR = FNR
``tar@far=F``               true accept rate at a false accept rate of at most ``F`` (e.g. ``1e-3``)
``precision@threshold=T``   of the pairs at least as close as ``T``, the fraction of same-class pairs
``recall@threshold=T``      of the same-class pairs, the fraction at least as close as ``T``
==========================  =====================================================================

Every neighbour metric averages over the queries with ``R > 0``; queries without any relevant gallery
item are left out (as PML does) and counted. ``nmi``/``ami`` and the verification metrics are not per query.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deepmetric.registry import Registry
from deepmetric.retrieval.ranking import RankedBand, RankingNeeds

GROUPS = ("neighbour", "clustering", "verification")
_FLOAT = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"


@dataclass(frozen=True)
class Metric:
    """One metric: ``syntax`` (how its name is written), ``pattern`` (the lower-cased name; group 1, if
    any, is its argument: an int ``K`` or a float), ``needs`` (neighbour metrics: what they read from the
    ranking) and ``compute``: ``(RankedBand, spec) -> per-query float64 values`` (neighbour) or
    ``(PairScores, spec) -> float`` (verification); clustering metrics come from :func:`cluster_scores`."""

    kind: str
    syntax: str
    pattern: re.Pattern
    group: str
    argument: type | None = None
    needs: Callable[[MetricSpec], RankingNeeds] | None = None
    compute: Callable[..., Any] | None = None


METRICS = Registry("metric")


def define(
    kind: str,
    syntax: str,
    pattern: str,
    group: str,
    argument: type | None = None,
    needs: Callable[[MetricSpec], RankingNeeds] | None = None,
    compute: Callable[..., Any] | None = None,
) -> None:
    """Register a metric (see :class:`Metric`); ``pattern`` must match its whole lower-cased name."""
    if group not in GROUPS:
        raise ValueError(f"metric group must be one of {GROUPS}, got {group!r}")
    metric = Metric(kind, syntax, re.compile(f"^{pattern}$"), group, argument, needs, compute)
    METRICS.register(kind)(metric)


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: ``kind`` (e.g. ``recall``, ``map@k``), ``k`` where the name carries a count,
    ``value`` where it carries a number (a FAR, a threshold)."""

    name: str
    kind: str
    k: int | None = None
    value: float | None = None

    @property
    def group(self) -> str:
        return METRICS.lookup(self.kind).group

    @property
    def is_clustering(self) -> bool:
        return self.group == "clustering"


def known_metric_names() -> str:
    """The registered metrics as their names are written, e.g. ``recall@K, map@r, ...``."""
    return ", ".join(METRICS.lookup(kind).syntax for kind in METRICS.names())


def parse_metric(name: str) -> MetricSpec:
    """``"recall@4"`` -> ``MetricSpec("recall@4", "recall", 4)``; unknown names raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"metric names must be strings, got {name!r}")
    key = name.strip().lower()
    for kind in METRICS.names():  # the patterns are disjoint: at most one matches
        metric = METRICS.lookup(kind)
        match = metric.pattern.match(key)
        if match is None:
            continue
        if metric.argument is int:
            k = int(match.group(1))
            if k < 1:
                raise ValueError(f"metric {name!r}: K must be at least 1")
            return MetricSpec(name, kind, k)
        if metric.argument is float:
            value = float(match.group(1))
            if kind == "tar@far" and not 0 < value < 1:
                raise ValueError(f"metric {name!r}: the FAR must be between 0 and 1")
            return MetricSpec(name, kind, value=value)
        return MetricSpec(name, kind)
    raise ValueError(f"unknown metric {name!r}; known metrics: {known_metric_names()}")


def ranking_needs(specs: list[MetricSpec]) -> RankingNeeds:
    """What the neighbour metrics of ``specs`` read from the ranking, together."""
    needs = RankingNeeds()
    for spec in specs:
        needs = needs.merge(METRICS.lookup(spec.kind).needs(spec))
    return needs


# ---------------------------------------------------------------- neighbour metrics


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


def _r_precision(band: RankedBand, spec: MetricSpec) -> torch.Tensor:
    within = _ranks(band.relevant.shape[1], band.relevant)[None, :] <= band.num_relevant[:, None]
    return (band.relevant & within).sum(1).double() / band.num_relevant.double()


def _map_at_k(band: RankedBand, spec: MetricSpec) -> torch.Tensor:
    cutoff = torch.full_like(band.num_relevant, spec.k)
    return average_precision(band.relevant, cutoff, torch.minimum(cutoff, band.num_relevant))


def _whole_map(band: RankedBand, spec: MetricSpec) -> torch.Tensor:
    cutoff = torch.full_like(band.num_relevant, band.relevant.shape[1])
    return average_precision(band.relevant, cutoff, band.num_relevant)


def _knn_accuracy(band: RankedBand, spec: MetricSpec) -> torch.Tensor:
    predicted = majority_vote(band.neighbour_labels[:, : spec.k], band.valid[:, : spec.k])
    return (predicted == band.query_labels).double()


def _top(spec: MetricSpec) -> RankingNeeds:
    return RankingNeeds(k=spec.k)


def _top_r(spec: MetricSpec) -> RankingNeeds:
    return RankingNeeds(r_neighbours=True)


define(
    "recall", "recall@K", r"recall@(\d+)", "neighbour", int, _top,
    lambda band, spec: band.relevant[:, : spec.k].any(1).double(),
)  # fmt: skip
define(
    "precision", "precision@K", r"precision@(\d+)", "neighbour", int, _top,
    lambda band, spec: band.relevant[:, : spec.k].sum(1).double() / spec.k,
)  # fmt: skip
define("r_precision", "r_precision", "r_precision", "neighbour", None, _top_r, _r_precision)
define(
    "map@r", "map@r", "map@r", "neighbour", None, _top_r,
    lambda band, spec: average_precision(band.relevant, band.num_relevant, band.num_relevant),
)  # fmt: skip
define("map", "map", "map", "neighbour", None, lambda spec: RankingNeeds(full=True), _whole_map)
define("map@k", "map@K", r"map@(\d+)", "neighbour", int, _top, _map_at_k)
define(
    "mrr", "mrr", "mrr", "neighbour", None, lambda spec: RankingNeeds(first_relevant=True),
    lambda band, spec: 1.0 / band.first_relevant_rank.double(),
)  # fmt: skip
define("nmi", "nmi", "nmi", "clustering")
define("ami", "ami", "ami", "clustering")
define("knn_accuracy", "knn_accuracy@K", r"knn_accuracy@(\d+)", "neighbour", int, _top, _knn_accuracy)

# ---------------------------------------------------------------- verification metrics

define("roc_auc", "roc_auc", "roc_auc", "verification", compute=lambda pairs, spec: pairs.roc_auc())
define("eer", "eer", "eer", "verification", compute=lambda pairs, spec: pairs.eer())
define(
    "tar@far", "tar@far=F", rf"tar@far={_FLOAT}", "verification", float,
    compute=lambda pairs, spec: pairs.tar_at_far(spec.value),
)  # fmt: skip
define(
    "precision@threshold", "precision@threshold=T", rf"precision@threshold={_FLOAT}", "verification", float,
    compute=lambda pairs, spec: pairs.precision_at(spec.value),
)  # fmt: skip
define(
    "recall@threshold", "recall@threshold=T", rf"recall@threshold={_FLOAT}", "verification", float,
    compute=lambda pairs, spec: pairs.recall_at(spec.value),
)  # fmt: skip

METRIC_NAMES = known_metric_names()
