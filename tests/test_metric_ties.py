"""Ties in distance (issue 19, item 14): Recall@K ranks equally close gallery items by lower gallery index.

Integer embeddings make the distances exact, so exact duplicates are exactly tied in every engine. The
tests compare with a slow reference written from the rule, check that the data make the rule matter
(ranking ties by higher index gives another value), and show that pytorch-metric-learning differs only
in how it orders ties (faiss's order), as docs/metrics.md explains.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.evaluation import evaluate


def tied_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 points on a 3 x 3 grid of 2-d integer vectors: many exact duplicates, with mixed labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, size=(60, 2)).astype(np.float32), rng.integers(0, 3, size=60)


def squared_distances(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return ((query[:, None, :].astype(np.int64) - gallery[None, :, :].astype(np.int64)) ** 2).sum(-1)


def reference_recall(query, labels, gallery, gallery_labels, k: int, lower_first: bool = True) -> float:
    """Recall@k with ties ranked by lower (or, to show the rule matters, higher) gallery index."""
    leave_one_out = gallery is None
    gallery, gallery_labels = (query, labels) if leave_one_out else (gallery, gallery_labels)
    hits = []
    for i, row in enumerate(squared_distances(query, gallery)):
        order = [j for j in range(len(row)) if not (leave_one_out and j == i)]
        order.sort(key=lambda j: (row[j], j if lower_first else -j))
        hits.append(any(gallery_labels[j] == labels[i] for j in order[:k]))
    return float(np.mean(hits))


@pytest.mark.parametrize("distance", ["squared_euclidean", "euclidean"])
@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
def test_recall_ranks_ties_by_lower_gallery_index(distance, protocol):
    x, labels = tied_data()
    args = (
        (x, labels, None, None) if protocol == "leave_one_out" else (x[:20], labels[:20], x[20:], labels[20:])
    )
    ours = evaluate(*args, metrics=("recall@1", "recall@2"), distance=distance, device="cpu")
    for k in (1, 2):
        expected = reference_recall(*args, k=k)
        assert ours[f"recall@{k}"] == pytest.approx(expected, abs=1e-12)
    # the data make the tie rule matter: ranking ties the other way round changes Recall@1
    assert reference_recall(*args, k=1, lower_first=False) != pytest.approx(ours["recall@1"])


def test_pml_precision_at_1_differs_only_in_the_order_of_ties():
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    pytest.importorskip("faiss")
    x, labels = tied_data()
    calculator = pml.AccuracyCalculator(include=("precision_at_1",), device=torch.device("cpu"))
    theirs = calculator.get_accuracy(x, labels)["precision_at_1"]
    ours = evaluate(x, labels, metrics=("recall@1",), distance="euclidean", device="cpu")["recall@1"]
    # per query: a hit under every order of the tied nearest items, or under at least one order
    distances = squared_distances(x, x)
    np.fill_diagonal(distances, np.iinfo(np.int64).max)
    nearest = distances == distances.min(1, keepdims=True)
    relevant = labels[None, :] == labels[:, None]
    always = (nearest <= relevant).all(1).mean()
    sometimes = (nearest & relevant).any(1).mean()
    assert always < sometimes  # there are ties to break
    assert always - 1e-9 <= theirs <= sometimes + 1e-9
    assert always <= ours <= sometimes
