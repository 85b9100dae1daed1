"""Match thresholds: the distance below which two items are declared the same class.

A pair ``(i, j)`` is declared a match when ``distance <= threshold``. Given the distances of labelled
pairs and whether each pair is really the same class, :func:`choose_threshold` picks

* ``target_precision=p``: the **largest** threshold whose declared matches are at least a fraction ``p``
  right (precision is not monotone in the threshold, so this is the widest acceptance that still meets
  ``p``);
* ``target_false_match_rate=f``: the largest threshold that declares at most a fraction ``f`` of the
  different-class pairs matches.

Thresholds are always one of the observed distances, so ties are accepted or refused together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from deepmetric.distances import get_distance


@dataclass
class Threshold:
    """A chosen threshold and what it gives on the calibration pairs."""

    threshold: float
    precision: float  # of the pairs with distance <= threshold, the fraction of same-class pairs
    recall: float  # true match rate: same-class pairs accepted / same-class pairs
    false_match_rate: float  # different-class pairs accepted / different-class pairs
    target: str  # "precision=0.95" or "false_match_rate=0.01"
    num_pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rates(distances: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per distinct distance value t (ascending): accepted same / different pairs with distance <= t."""
    order = np.argsort(distances, kind="stable")
    sorted_d, sorted_same = distances[order], is_same[order]
    true_accepted = np.cumsum(sorted_same)
    false_accepted = np.cumsum(~sorted_same)
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_d)), len(sorted_d) - 1]  # ties are one cut
    return sorted_d[last_of_value], true_accepted[last_of_value], false_accepted[last_of_value]


def choose_threshold(
    distances: np.ndarray,
    is_same: np.ndarray,
    target_precision: float | None = None,
    target_false_match_rate: float | None = None,
) -> Threshold:
    """The distance threshold meeting exactly one of the two targets (see the module docstring)."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    is_same = np.asarray(is_same, dtype=bool).ravel()
    if (target_precision is None) == (target_false_match_rate is None):
        raise ValueError("give exactly one of target_precision and target_false_match_rate")
    if len(distances) != len(is_same) or not len(distances):
        raise ValueError(
            f"need equally many distances and is_same flags, got {len(distances)}, {len(is_same)}"
        )
    if not np.isfinite(distances).all():
        raise ValueError("pair distances must be finite")
    positives, negatives = int(is_same.sum()), int((~is_same).sum())
    if not positives or not negatives:
        raise ValueError("calibration needs both same-class and different-class pairs")
    values, true_acc, false_acc = _rates(distances, is_same)
    precision = true_acc / (true_acc + false_acc)
    if target_precision is not None:
        if not 0 < target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
        ok = np.flatnonzero(precision >= target_precision)
        target = f"precision={target_precision}"
        if not len(ok):
            raise ValueError(f"no threshold reaches precision {target_precision} on the calibration pairs")
    else:
        if not 0 <= target_false_match_rate < 1:
            raise ValueError(f"target_false_match_rate must be in [0, 1), got {target_false_match_rate}")
        ok = np.flatnonzero(false_acc / negatives <= target_false_match_rate)
        target = f"false_match_rate={target_false_match_rate}"
        if not len(ok):
            raise ValueError(
                f"every threshold exceeds false-match rate {target_false_match_rate} on the calibration pairs"
            )
    best = ok[-1]
    return Threshold(
        threshold=float(values[best]),
        precision=float(precision[best]),
        recall=float(true_acc[best] / positives),
        false_match_rate=float(false_acc[best] / negatives),
        target=target,
        num_pairs=len(distances),
    )


def roc_points(distances: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(false_match_rate, true_match_rate, thresholds)`` at every distinct distance, ascending."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    is_same = np.asarray(is_same, dtype=bool).ravel()
    values, true_acc, false_acc = _rates(distances, is_same)
    return false_acc / max(int((~is_same).sum()), 1), true_acc / max(int(is_same.sum()), 1), values


def as_distance(values: np.ndarray, distance: str) -> np.ndarray:
    """Scores of ``distance`` as distances (smaller = closer): cosine similarity s -> 1 - s, dot -> -dot."""
    name = get_distance(distance).name
    values = np.asarray(values, dtype=np.float64)
    if name == "cosine":
        return np.clip(1.0 - values, 0.0, 2.0)  # rounding can push a similarity past 1
    return -values if get_distance(name).is_similarity else values


def pair_distances(
    embeddings: np.ndarray, labels: np.ndarray, distance: str = "cosine", max_items: int = 4000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (see :func:`as_distance`) and same-class flags of every pair ``i < j`` of labelled
    embeddings; above ``max_items`` items a seeded random subset is used (pairs grow quadratically)."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(embeddings) > max_items:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_items, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    x = torch.from_numpy(embeddings)
    scores = get_distance(distance)(x, x).numpy()
    upper = np.triu_indices(len(embeddings), k=1)
    return as_distance(scores[upper], distance), labels[upper[0]] == labels[upper[1]]
