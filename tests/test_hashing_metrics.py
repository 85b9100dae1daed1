"""Hashing metrics against a slow per-query reference written from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.hashing import evaluate_hashing


def codes_and_labels(seed: int, n: int, bits: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = np.where(rng.random((classes, bits)) < 0.5, -1.0, 1.0)
    flips = np.where(rng.random((n, bits)) < 0.25, -1.0, 1.0)
    return centres[labels] * flips, labels


def slow_metrics(q, ql, db, dbl, top_n: int, radius: int, multi_hot: bool = False) -> dict[str, float]:
    aps, aps_top, precisions = [], [], []
    for i in range(len(q)):
        distances = [int(np.sum((q[i] > 0) != (db[j] > 0))) for j in range(len(db))]
        if multi_hot:
            relevant = [bool(np.any(ql[i] * dbl[j])) for j in range(len(db))]
        else:
            relevant = [bool(ql[i] == dbl[j]) for j in range(len(db))]
        ranking = sorted(range(len(db)), key=lambda j, d=distances: (d[j], j))
        hits, precision_sum, ap_top = 0, 0.0, 0.0
        for rank, j in enumerate(ranking, start=1):
            if relevant[j]:
                hits += 1
                precision_sum += hits / rank
            if rank == top_n:
                ap_top = precision_sum / hits if hits else 0.0
        aps.append(precision_sum / hits if hits else 0.0)
        aps_top.append(ap_top)
        within = [j for j in range(len(db)) if distances[j] <= radius]
        precisions.append(sum(relevant[j] for j in within) / len(within) if within else 0.0)
    return {
        "map": np.mean(aps),
        f"map@{top_n}": np.mean(aps_top),
        f"precision@r{radius}": np.mean(precisions),
    }


@pytest.mark.parametrize("bits", [8, 16])
def test_metrics_equal_slow_reference(bits: int) -> None:
    db, db_labels = codes_and_labels(0, 150, bits, 4)
    queries, query_labels = codes_and_labels(1, 25, bits, 4)
    expected = slow_metrics(queries, query_labels, db, db_labels, top_n=40, radius=2)
    got = evaluate_hashing(
        queries, query_labels, db, db_labels, metrics=("map", "map@40", "precision@r2"), memory_budget=100_000
    )
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_multi_hot_labels_and_torch_inputs() -> None:
    db, _ = codes_and_labels(2, 80, 12, 3)
    queries, _ = codes_and_labels(3, 10, 12, 3)
    rng = np.random.default_rng(4)
    db_labels, query_labels = (
        (rng.random((80, 5)) < 0.3).astype(np.int64),
        (rng.random((10, 5)) < 0.3).astype(np.int64),
    )
    expected = slow_metrics(queries, query_labels, db, db_labels, top_n=20, radius=3, multi_hot=True)
    got = evaluate_hashing(
        torch.from_numpy(queries),
        torch.from_numpy(query_labels),
        torch.from_numpy(db),
        torch.from_numpy(db_labels),
        metrics=("map", "map@20", "precision@r3"),
    )
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_ties_are_broken_by_database_index() -> None:
    # every database code is identical: the ranking is the database order, relevant items at ranks 2 and 4
    db = np.ones((4, 8))
    got = evaluate_hashing(
        np.ones((1, 8)), np.array([1]), db, np.array([0, 1, 0, 1]), metrics=("map", "map@2")
    )
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert got["map@2"] == pytest.approx(1 / 2)


def test_pr_curve_over_radii() -> None:
    db, db_labels = codes_and_labels(5, 60, 8, 3)
    queries, query_labels = codes_and_labels(6, 7, 8, 3)
    got = evaluate_hashing(queries, query_labels, db, db_labels, metrics=("pr_curve", "recall@r8"))
    assert got["pr_curve_radius"].tolist() == list(range(9))
    assert np.all(np.diff(got["pr_curve_recall"]) >= 0)
    assert got["pr_curve_recall"][-1] == pytest.approx(got["recall@r8"])
    for radius in (0, 3, 8):
        expected = slow_metrics(queries, query_labels, db, db_labels, top_n=1, radius=radius)
        assert got["pr_curve_precision"][radius] == pytest.approx(expected[f"precision@r{radius}"])
    # at the full radius everything is retrieved: precision is the fraction of relevant items
    fraction = np.mean([np.mean(db_labels == label) for label in query_labels])
    assert got["pr_curve_precision"][-1] == pytest.approx(fraction)


def test_metric_errors() -> None:
    db, labels = codes_and_labels(7, 10, 8, 2)
    with pytest.raises(ValueError, match="unknown hashing metric"):
        evaluate_hashing(db, labels, db, labels, metrics=("recall@1",))
    with pytest.raises(ValueError, match="bits"):
        evaluate_hashing(db[:, :4], labels, db, labels)
    with pytest.raises(ValueError, match="rows"):
        evaluate_hashing(db, labels[:5], db, labels)


def test_map_equals_float_evaluation_of_sign_codes() -> None:
    # ±1 codes: squared euclidean distance = 4 x Hamming distance, so the float evaluation ranks identically
    evaluation = pytest.importorskip("deepmetric.evaluation")
    db, db_labels = codes_and_labels(8, 200, 16, 4)
    queries, query_labels = codes_and_labels(9, 30, 16, 4)
    expected = evaluation.evaluate(
        queries.astype(np.float32),
        query_labels,
        db.astype(np.float32),
        db_labels,
        metrics=("map",),
        distance="euclidean",
    )["map"]
    got = evaluate_hashing(queries, query_labels, db, db_labels, metrics=("map",))["map"]
    assert got == pytest.approx(expected, abs=1e-9)
