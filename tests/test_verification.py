"""Verification metrics over pairs (roc_auc, eer, tar@far=F, precision/recall@threshold=T) against
scikit-learn and against direct references written from the definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deepmetric.distances import get_distance
from deepmetric.evaluation import evaluate, pair_distances, parse_metric, roc_curve
from deepmetric.evaluation.verification import PairScores, equal_error_rate

sklearn_metrics = pytest.importorskip("sklearn.metrics")

VERIFICATION = (
    "roc_auc",
    "eer",
    "tar@far=1e-2",
    "tar@far=0.1",
    "precision@threshold=1",
    "recall@threshold=1",
)


def _data(seed: int = 0, n: int = 40, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Small integer embeddings (exact products, many tied distances) with a class signal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
    x[:, 0] += 2 * (labels % 2)
    return x, labels


def _reference_pairs(
    x, labels, gallery=None, gallery_labels=None, distance="dot", ids=None, gallery_ids=None
):
    """Every pair from the definition: unordered distinct pairs (leave-one-out) or query x gallery, minus
    same-id pairs; float64 distances."""
    dist = get_distance(distance)
    values, same = [], []
    if gallery is None:
        candidates = itertools.combinations(range(len(x)), 2)
        gallery, gallery_labels, gallery_ids = x, labels, ids
    else:
        candidates = itertools.product(range(len(x)), range(len(gallery)))
    for i, j in candidates:
        if ids is not None and ids[i] == gallery_ids[j]:
            continue
        a, b = torch.from_numpy(x[i : i + 1]).double(), torch.from_numpy(gallery[j : j + 1]).double()
        values.append(float(dist.pairwise(a, b)[0, 0]))
        same.append(bool(labels[i] == gallery_labels[j]))
    return np.array(values), np.array(same)


@pytest.mark.parametrize("distance", ["dot", "cosine", "euclidean", "squared_euclidean"])
@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery", "ids"])
def test_pairs_are_every_pair_of_the_definition(distance, protocol):
    x, labels = _data(1)
    kwargs, ref_kwargs = {}, {}
    if protocol == "query_gallery":
        kwargs = ref_kwargs = {"gallery": x[25:], "gallery_labels": labels[25:]}
        x, labels = x[:25], labels[:25]
    if protocol == "ids":
        ids = np.arange(len(x)) // 3  # items sharing an id are the same item: not a pair
        kwargs = {"query_ids": ids}
        ref_kwargs = {"ids": ids}
    pairs = pair_distances(x, labels, distance=distance, device="cpu", **kwargs)
    expected, expected_same = _reference_pairs(x, labels, distance=distance, **ref_kwargs)
    assert pairs.positive_weight == pairs.negative_weight == 1.0
    # float32 and float64 may order nearly tied cosines differently: sort by the rounded value, then label
    order = np.lexsort((pairs.is_same, np.round(pairs.distances, 4)))
    expected_order = np.lexsort((expected_same, np.round(expected, 4)))
    assert np.allclose(pairs.distances[order], expected[expected_order], atol=1e-5)
    assert np.array_equal(pairs.is_same[order], expected_same[expected_order])


@pytest.mark.parametrize("distance", ["dot", "euclidean"])
def test_roc_curve_equals_scikit_learn(distance):
    x, labels = _data(2)
    distances, same = pair_distances(x, labels, distance=distance, device="cpu")[:2]
    fpr, tpr, thresholds = roc_curve(distances, same, distance)
    sign = 1.0 if get_distance(distance).is_similarity else -1.0
    sk_fpr, sk_tpr, sk_thresholds = sklearn_metrics.roc_curve(same, sign * distances, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert np.allclose(thresholds[1:], sign * sk_thresholds[1:])
    assert thresholds[0] == sign * np.inf
    scores = PairScores(pair_distances(x, labels, distance=distance, device="cpu"), distance)
    assert scores.roc_auc() == pytest.approx(sklearn_metrics.roc_auc_score(same, sign * distances), abs=1e-12)


def _reference_eer(distances: np.ndarray, same: np.ndarray) -> float:
    """From the definition: FAR and FRR at every threshold (accept ``similarity >= t``), and where the
    straight line between two consecutive thresholds' (FAR, FRR) crosses FAR = FRR."""
    points = [(0.0, 1.0)]
    for t in sorted(set(distances.tolist()), reverse=True):
        accepted = distances >= t
        points.append(((accepted & ~same).sum() / (~same).sum(), (~accepted & same).sum() / same.sum()))
    for (far0, frr0), (far1, frr1) in itertools.pairwise(points):
        if far1 >= frr1:
            if far1 == frr1:
                return far1
            t = (frr0 - far0) / ((far1 - far0) - (frr1 - frr0))
            return far0 + t * (far1 - far0)
    raise AssertionError("no crossing")


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_every_verification_metric_equals_its_reference(seed):
    x, labels = _data(seed)
    distances, same = _reference_pairs(x, labels)
    ours = evaluate(x, labels, metrics=VERIFICATION, distance="dot", device="cpu")
    fpr, tpr, _ = sklearn_metrics.roc_curve(same, distances, drop_intermediate=False)
    assert ours["roc_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(same, distances), abs=1e-12)
    assert ours["eer"] == pytest.approx(_reference_eer(distances, same), abs=1e-12)
    assert ours["tar@far=1e-2"] == pytest.approx(tpr[fpr <= 1e-2].max(), abs=1e-12)
    assert ours["tar@far=0.1"] == pytest.approx(tpr[fpr <= 0.1].max(), abs=1e-12)
    accepted = distances >= 1
    assert ours["precision@threshold=1"] == pytest.approx(sklearn_metrics.precision_score(same, accepted))
    assert ours["recall@threshold=1"] == pytest.approx(sklearn_metrics.recall_score(same, accepted))


def test_eer_interpolates_between_curve_points():
    # the curve (0,0) -> (0,0.5) -> (1,1): FNR = 1 - TPR meets FPR on the second segment, at 1/3
    assert equal_error_rate(np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(1 / 3)
    assert equal_error_rate(np.array([0.0, 0.25, 1.0]), np.array([0.0, 0.75, 1.0])) == 0.25


def test_sampled_pairs_keep_every_positive_and_sample_negatives_with_a_seed():
    x, labels = _data(5, n=120, classes=6)
    full = pair_distances(x, labels, distance="dot", device="cpu")
    positives = int(full.is_same.sum())
    max_pairs = 2 * positives + 200  # positives fit in half: all kept, the rest negatives
    sampled = pair_distances(x, labels, distance="dot", device="cpu", max_pairs=max_pairs, seed=1)
    assert int(sampled.is_same.sum()) == positives and len(sampled.distances) == max_pairs
    assert np.array_equal(np.sort(sampled.distances[sampled.is_same]), np.sort(full.distances[full.is_same]))
    negatives = full.distances[~full.is_same]
    assert len(negatives) > max_pairs  # so they are sampled
    assert np.isin(sampled.distances[~sampled.is_same], negatives).all()  # drawn among the true negatives
    assert sampled.negative_weight == pytest.approx(len(negatives) / (positives + 200))
    again = pair_distances(x, labels, distance="dot", device="cpu", max_pairs=max_pairs, seed=1)
    assert np.array_equal(again.distances, sampled.distances)
    # the sample estimates the exhaustive ROC AUC
    exact, estimate = PairScores(full, "dot").roc_auc(), PairScores(sampled, "dot").roc_auc()
    assert abs(exact - estimate) < 0.03
    # precision reweights the sampled negatives: close to the exhaustive value
    assert PairScores(sampled, "dot").precision_at(2) == pytest.approx(
        PairScores(full, "dot").precision_at(2), abs=0.05
    )


def test_too_many_positives_are_sampled_too():
    x, labels = _data(6, n=80, classes=2)
    full = pair_distances(x, labels, distance="dot", device="cpu")
    sampled = pair_distances(x, labels, distance="dot", device="cpu", max_pairs=400)
    kept = int(sampled.is_same.sum())
    assert 0 < kept < int(full.is_same.sum()) and len(sampled.distances) <= 400
    assert sampled.positive_weight == pytest.approx(int(full.is_same.sum()) / kept)


def test_metric_names_and_errors():
    assert parse_metric("TAR@FAR=1e-3").value == pytest.approx(1e-3)
    assert parse_metric("precision@threshold=-0.25").value == -0.25
    assert parse_metric("precision@4").k == 4  # the rank-based precision is unchanged
    with pytest.raises(ValueError, match="FAR must be between 0 and 1"):
        parse_metric("tar@far=2")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("tar@far=abc")
    with pytest.raises(ValueError, match=r"positive .* and negative"):
        roc_curve(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="same length"):
        roc_curve(np.array([0.1, 0.2]), np.array([True]))


def test_metrics_without_negative_pairs_are_nan():
    x = np.eye(4, dtype=np.float32)
    result = evaluate(
        x, np.zeros(4, dtype=int), metrics=("roc_auc", "eer", "recall@threshold=0.5"), device="cpu"
    )
    assert np.isnan(result["roc_auc"]) and np.isnan(result["eer"])
    assert result["recall@threshold=0.5"] == 0.0  # every pair is positive; none is that close
