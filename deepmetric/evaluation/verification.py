"""Verification: is a pair of embeddings of the same class? Pairs scored by their distance.

The pairs: in leave-one-out every unordered pair of distinct queries, for query vs gallery every
(query, gallery) pair; pairs excluded by ids (same item) are left out. A pair is *positive* when the two
share a label (same class id, or a shared label of multi-hot rows). A pair is *accepted* at threshold
``T`` when it is at least as close as ``T``: similarity ``>= T`` (``cosine``, ``dot``), distance ``<= T``
(``euclidean``, ``squared_euclidean``); thresholds are in the distance's own units.

Memory: when all the pairs take more than ``max_pairs`` (default: what ``memory_budget_mb`` holds at
:data:`PAIR_BYTES` each), every positive pair is kept (or, if they alone exceed half of ``max_pairs``, a
seeded uniform sample of them) and the negative pairs are a seeded uniform sample, with replacement, of
``max_pairs`` minus the positives kept. ROC, EER and TAR are unchanged in expectation by such sampling;
the counts behind ``precision@threshold`` are reweighted by each kind's sampling rate.

``roc_curve`` follows scikit-learn's ``roc_curve(drop_intermediate=False)`` (one point per distinct
distance, plus the origin) with thresholds in the distance's units; ``roc_auc`` is the area under it
(= scikit-learn's ``roc_auc_score``); ``eer`` is where the piecewise-linear curve crosses
``FPR = FNR = 1 - TPR``; ``tar@far=F`` is the largest TPR of the curve's points with ``FPR <= F``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from deepmetric.distances import Distance, get_distance
from deepmetric.retrieval.knn import ArrayLike, distance_blocks, rows_per_block, to_reported_values
from deepmetric.retrieval.ranking import DEFAULT_MEMORY_BUDGET_MB, Ranking, rank

# Bytes per pair held: its float32 distance and bool label, and the ROC curve's float64 copies, int64 order
# and cumulative counts.
PAIR_BYTES = 48
# Pairs whose distances are computed at once when sampling.
SAMPLE_CHUNK = 65536


class Pairs(NamedTuple):
    """Pair distances (float32, the distance's units), whether each pair is positive, and the weight of
    each positive and each negative pair (1 when all pairs of that kind are present)."""

    distances: np.ndarray
    is_same: np.ndarray
    positive_weight: float = 1.0
    negative_weight: float = 1.0


def _positive_count(ranking: Ranking) -> int:
    """Number of positive pairs (ignoring id exclusions, which only lower it)."""
    labels = ranking.labels
    if labels.multi_hot:
        total = 0
        rows = rows_per_block(len(ranking.gallery), ranking.memory_budget_mb)
        for start in range(0, len(labels.query), rows):
            block = labels.relevance(slice(start, start + rows))
            if ranking.leave_one_out:
                block = torch.triu(block, diagonal=start + 1)
            total += int(block.sum())
        return total
    size = int(max(labels.query.max(), labels.gallery.max())) + 1
    query_counts = torch.bincount(labels.query, minlength=size)
    if ranking.leave_one_out:
        return int((query_counts * (query_counts - 1) // 2).sum())
    return int((query_counts * torch.bincount(labels.gallery, minlength=size)).sum())


def _scan(ranking: Ranking, positives_only: bool, keep: float, generator: torch.Generator) -> Pairs:
    """Pairs from a scan of the distance blocks: all of them, or the positive ones only; each kept with
    probability ``keep``."""
    distance = ranking.distance
    rows = rows_per_block(len(ranking.gallery), ranking.memory_budget_mb)
    distances, is_same = [], []
    blocks = distance_blocks(
        ranking.query,
        ranking.gallery,
        distance,
        rows,
        ranking.leave_one_out,
        ranking.query_codes,
        ranking.gallery_codes,
    )
    for block in blocks:
        wanted = ~torch.isinf(block.scores)  # excluded pairs hold the worst value
        if ranking.leave_one_out:  # each unordered pair once
            wanted = torch.triu(wanted, diagonal=block.start + 1)
        same = ranking.labels.relevance(slice(block.start, block.stop))
        if positives_only:
            wanted &= same
        values, same = block.scores[wanted], same[wanted]
        if keep < 1:
            chosen = torch.rand(len(values), generator=generator) < keep
            values, same = values[chosen.to(values.device)], same[chosen.to(values.device)]
        distances.append(to_reported_values(values, distance).cpu().numpy())
        is_same.append(same.cpu().numpy())
    return Pairs(np.concatenate(distances), np.concatenate(is_same))


def _sampled_negatives(ranking: Ranking, count: int, generator: torch.Generator) -> np.ndarray:
    """Distances of ``count`` negative pairs drawn uniformly with replacement (rejecting the others)."""
    labels, query, gallery = ranking.labels, ranking.query, ranking.gallery
    found: list[np.ndarray] = []
    have = 0
    attempts = 0
    while have < count:
        attempts += 1
        if attempts > 1000:
            raise ValueError("too few negative pairs to sample from")
        i = torch.randint(len(query), (SAMPLE_CHUNK,), generator=generator).to(query.device)
        j = torch.randint(len(gallery), (SAMPLE_CHUNK,), generator=generator).to(query.device)
        if labels.multi_hot:
            negative = ~(labels.query[i] & labels.gallery[j]).any(1)
        else:
            negative = labels.query[i] != labels.gallery[j]
        if ranking.leave_one_out:
            negative &= i != j
        if ranking.query_codes is not None:
            negative &= ranking.query_codes[i] != ranking.gallery_codes[j]
        i, j = i[negative][: count - have], j[negative][: count - have]
        found.append(ranking.distance.paired(query[i], gallery[j]).cpu().numpy().astype(np.float32))
        have += len(i)
    return np.concatenate(found)


def ranking_pairs(ranking: Ranking, max_pairs: int | None = None, seed: int = 0) -> Pairs:
    """The :class:`Pairs` of a prepared :class:`~deepmetric.retrieval.ranking.Ranking`'s inputs (see the
    module docstring for the sampling when they exceed ``max_pairs``)."""
    if max_pairs is None:
        max_pairs = int(ranking.memory_budget_mb * 2**20) // PAIR_BYTES
    if max_pairs < 2:
        raise ValueError(f"max_pairs must be at least 2, got {max_pairs}")
    n_query, n_gallery = len(ranking.query), len(ranking.gallery)
    total = n_query * (n_query - 1) // 2 if ranking.leave_one_out else n_query * n_gallery
    generator = torch.Generator().manual_seed(seed)
    if total <= max_pairs:
        return _scan(ranking, positives_only=False, keep=1.0, generator=generator)
    num_positive = _positive_count(ranking)
    keep = min(1.0, (max_pairs // 2) / max(num_positive, 1))
    positives = _scan(ranking, positives_only=True, keep=keep, generator=generator)
    num_negative_total = total - num_positive
    num_negative = min(max_pairs - len(positives.distances), num_negative_total)
    negatives = _sampled_negatives(ranking, num_negative, generator)
    return Pairs(
        np.concatenate([positives.distances, negatives]),
        np.concatenate([positives.is_same, np.zeros(len(negatives), dtype=bool)]),
        num_positive / max(len(positives.distances), 1),
        num_negative_total / max(num_negative, 1),
    )


def pair_distances(
    query: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    distance: str | Distance = "cosine",
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    max_pairs: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Pairs:
    """Distances of the verification pairs of ``query`` (leave-one-out) or of ``query`` x ``gallery``:
    ``(distances, is_same, positive_weight, negative_weight)``; see the module docstring."""
    ranking = rank(
        query,
        query_labels,
        gallery,
        gallery_labels,
        distance,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        memory_budget_mb=memory_budget_mb,
        device=device,
    )
    return ranking_pairs(ranking, max_pairs, seed)


def roc_curve(
    distances: ArrayLike, is_same: ArrayLike, distance: str | Distance = "cosine"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: accepting the pairs at least as close as ``thresholds[i]`` gives the
    false positive rate ``fpr[i]`` and true positive rate ``tpr[i]``. The first point accepts nothing
    (threshold ``+inf`` for similarities, ``-inf`` for distances); one point per distinct distance after."""
    distances = np.asarray(distances.cpu() if torch.is_tensor(distances) else distances, dtype=np.float64)
    is_same = np.asarray(is_same.cpu() if torch.is_tensor(is_same) else is_same)
    if distances.ndim != 1 or distances.shape != is_same.shape:
        raise ValueError("distances and is_same must be 1-D arrays of the same length")
    if not np.isfinite(distances).all():
        raise ValueError("distances contain NaN or infinite values")
    is_same = is_same.astype(bool)
    positives = int(is_same.sum())
    if positives == 0 or positives == len(is_same):
        raise ValueError("a ROC curve needs both positive (same) and negative (different) pairs")
    similarity = get_distance(distance).is_similarity
    scores = distances if similarity else -distances  # larger score: closer
    order = np.argsort(-scores, kind="stable")
    scores, is_same = scores[order], is_same[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(is_same)[last_of_value]
    false_positives = (last_of_value + 1) - true_positives
    fpr = np.r_[0.0, false_positives / (len(is_same) - positives)]
    tpr = np.r_[0.0, true_positives / positives]
    thresholds = np.r_[np.inf, scores[last_of_value]]
    return fpr, tpr, thresholds if similarity else -thresholds


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the piecewise-linear ROC curve crosses ``FPR = FNR`` (``FNR = 1 - TPR``)."""
    gap = fpr - (1 - tpr)  # rises from -1 at the origin to +1 at (1, 1)
    after = int(np.argmax(gap >= 0))
    if gap[after] == 0:
        return float(fpr[after])
    fraction = -gap[after - 1] / (gap[after] - gap[after - 1])
    return float(fpr[after - 1] + fraction * (fpr[after] - fpr[after - 1]))


class PairScores:
    """The verification metrics of one set of :class:`Pairs` (the ROC curve computed once)."""

    def __init__(self, pairs: Pairs, distance: str | Distance) -> None:
        self.pairs = pairs
        self.distance = get_distance(distance)
        self._curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The ROC curve, or None without positive or without negative pairs (metrics are then NaN)."""
        positives = int(self.pairs.is_same.sum())
        if positives == 0 or positives == len(self.pairs.is_same):
            return None
        if self._curve is None:
            self._curve = roc_curve(self.pairs.distances, self.pairs.is_same, self.distance)
        return self._curve

    def roc_auc(self) -> float:
        curve = self.curve()
        return float("nan") if curve is None else float(np.trapezoid(curve[1], curve[0]))

    def eer(self) -> float:
        curve = self.curve()
        return float("nan") if curve is None else equal_error_rate(curve[0], curve[1])

    def tar_at_far(self, far: float) -> float:
        curve = self.curve()
        return float("nan") if curve is None else float(curve[1][curve[0] <= far].max())

    def _accepted(self, threshold: float) -> tuple[float, float]:
        """Weighted counts of accepted positive and accepted negative pairs."""
        pairs = self.pairs
        if self.distance.is_similarity:
            accepted = pairs.distances >= threshold
        else:
            accepted = pairs.distances <= threshold
        true = int((accepted & pairs.is_same).sum()) * pairs.positive_weight
        false = int((accepted & ~pairs.is_same).sum()) * pairs.negative_weight
        return true, false

    def precision_at(self, threshold: float) -> float:
        true, false = self._accepted(threshold)
        return float("nan") if true + false == 0 else true / (true + false)

    def recall_at(self, threshold: float) -> float:
        positives = int(self.pairs.is_same.sum())
        return (
            float("nan")
            if positives == 0
            else self._accepted(threshold)[0] / (positives * self.pairs.positive_weight)
        )
