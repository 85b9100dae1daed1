"""Match thresholds: the distance below which two items are declared the same class.

Distances here are "smaller is closer" (:func:`as_distance`: ``1 - cosine``, ``-dot``, Euclidean), the
convention of :mod:`deepmetric.api`; the pairs and their ROC curve come from
:mod:`deepmetric.evaluation.verification`, whose values are converted by :func:`as_distance` only.

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

from deepmetric.distances import get_distance
from deepmetric.evaluation import verification

# verification's ROC only asks whether smaller values are closer; any such distance names our convention
SMALLER_IS_CLOSER = "euclidean"


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


def as_distance(values: np.ndarray, distance: str) -> np.ndarray:
    """Values of ``distance`` in its own units as distances (smaller = closer): cosine similarity s ->
    1 - s, dot -> -dot, distances unchanged."""
    name = get_distance(distance).name
    values = np.asarray(values, dtype=np.float64)
    if name == "cosine":
        return np.clip(1.0 - values, 0.0, 2.0)  # rounding can push a similarity past 1
    return -values if get_distance(name).is_similarity else values


def pair_distances(
    embeddings: np.ndarray, labels: np.ndarray, distance: str = "cosine", max_pairs: int | None = None
) -> verification.Pairs:
    """:func:`deepmetric.evaluation.verification.pair_distances` (every pair ``i < j``, or a weighted
    sample past ``max_pairs``) with the distances converted by :func:`as_distance`."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if labels.dtype.kind not in "iu":  # class names: their positions in the sorted names
        labels = np.unique(labels, return_inverse=True)[1]
    pairs = verification.pair_distances(embeddings, labels, distance=distance, max_pairs=max_pairs)
    return pairs._replace(distances=as_distance(pairs.distances, distance))


def _rates(distances: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Per distinct distance t (ascending): accepted same / different pair counts with distance <= t,
    and the numbers of same / different pairs."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    is_same = np.asarray(is_same, dtype=bool).ravel()
    if len(distances) != len(is_same) or not len(distances):
        raise ValueError(
            f"need equally many distances and is_same flags, got {len(distances)}, {len(is_same)}"
        )
    if not np.isfinite(distances).all():
        raise ValueError("pair distances must be finite")
    positives, negatives = int(is_same.sum()), int((~is_same).sum())
    if not positives or not negatives:
        raise ValueError("calibration needs both same-class and different-class pairs")
    false_rate, true_rate, thresholds = verification.roc_curve(distances, is_same, SMALLER_IS_CLOSER)
    # drop the curve's origin (threshold -inf); rates back to exact counts
    true_accepted = np.rint(true_rate[1:] * positives)
    false_accepted = np.rint(false_rate[1:] * negatives)
    return thresholds[1:], true_accepted, false_accepted, positives, negatives


def choose_threshold(
    distances: np.ndarray,
    is_same: np.ndarray,
    target_precision: float | None = None,
    target_false_match_rate: float | None = None,
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
) -> Threshold:
    """The distance threshold meeting exactly one of the two targets (see the module docstring);
    ``positive_weight`` / ``negative_weight``: what each sampled pair of that kind stands for
    (:class:`~deepmetric.evaluation.verification.Pairs`), used by the precision."""
    if (target_precision is None) == (target_false_match_rate is None):
        raise ValueError("give exactly one of target_precision and target_false_match_rate")
    values, true_acc, false_acc, positives, negatives = _rates(distances, is_same)
    weighted_true, weighted_false = true_acc * positive_weight, false_acc * negative_weight
    precision = weighted_true / (weighted_true + weighted_false)
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
        num_pairs=int(np.size(distances)),
    )


def roc_points(distances: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(false_match_rate, true_match_rate, thresholds)`` at every distinct distance, ascending."""
    values, true_acc, false_acc, positives, negatives = _rates(distances, is_same)
    return false_acc / negatives, true_acc / positives, values
