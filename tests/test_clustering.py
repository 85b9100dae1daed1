"""deepmetric.evaluation.clustering's k-means vs slow, obvious float64 references of Lloyd and greedy
k-means++ (the k-means NMI tests against scikit-learn and faiss live in test_evaluation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.evaluation import clustering, kmeans

# Every test runs with the native selection kernels and with the torch code they replace (the CUDA path).
pytestmark = pytest.mark.usefixtures("cpu_kernel")


def blobs(n: int, dim: int, centres: int, seed: int, noise: float) -> np.ndarray:
    """Points around random centres: overlapping enough for Lloyd to move for several iterations."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    return (means[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, dim))).astype(np.float32)


def reference_lloyd(points: np.ndarray, centroids: np.ndarray, max_iterations: int) -> np.ndarray:
    """Plain Lloyd in float64: every distance every iteration, means from scratch, an empty cluster
    re-seeded with the point farthest from its centroid; stops when no assignment changes."""
    x, c = points.astype(np.float64), centroids.astype(np.float64)
    assignments = None
    for _ in range(max_iterations):
        distances = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        new = distances.argmin(1)
        if assignments is not None and np.array_equal(new, assignments):
            break
        assignments = new
        counts = np.bincount(assignments, minlength=len(c))
        sums = np.zeros_like(c)
        np.add.at(sums, assignments, x)
        own = distances[np.arange(len(x)), assignments]
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        empty = np.flatnonzero(counts == 0)
        c[empty] = x[np.argsort(-own, kind="stable")[: len(empty)]]
    return assignments


def run_lloyd(points: np.ndarray, centroids: np.ndarray, max_iterations: int, rows: int = 4096):
    x = torch.from_numpy(points)
    return clustering._lloyd(x, (x * x).sum(1), torch.from_numpy(centroids), max_iterations, rows).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_with_bounds_equals_plain_lloyd(seed):
    points = blobs(1500, 16, 25, seed, noise=0.9)
    rng = np.random.default_rng(100 + seed)
    initial = points[rng.choice(len(points), 30, replace=False)]
    for max_iterations in (1, 3, 50):
        ours = run_lloyd(points, initial, max_iterations)
        assert np.array_equal(ours, reference_lloyd(points, initial, max_iterations)), max_iterations


def test_lloyd_does_not_depend_on_the_block_size():
    points = blobs(700, 8, 12, 3, noise=0.8)
    initial = points[:15]
    assert np.array_equal(run_lloyd(points, initial, 50, rows=4096), run_lloyd(points, initial, 50, rows=7))


def test_lloyd_skips_most_distances_once_few_points_move(monkeypatch):
    """The bounds must spare full passes: count the points that got one."""
    points = blobs(3000, 16, 40, 4, noise=0.9)
    initial = points[np.random.default_rng(4).choice(len(points), 40, replace=False)]
    passes = []
    two_nearest = clustering._two_nearest

    def counting(points_with_ones, augmented, rows):
        passes.append(len(points_with_ones))
        return two_nearest(points_with_ones, augmented, rows)

    monkeypatch.setattr(clustering, "_two_nearest", counting)
    ours = run_lloyd(points, initial, 100)
    assert np.array_equal(ours, reference_lloyd(points, initial, 100))
    assert len(passes) >= 8  # enough iterations for the bounds to matter
    assert sum(passes) < 0.5 * len(passes) * len(points)


def test_an_empty_cluster_is_reseeded_with_the_farthest_point():
    points = blobs(300, 4, 3, 5, noise=0.3)
    initial = np.concatenate([points[:3], np.full((2, 4), 100.0, dtype=np.float32)])  # two start empty
    ours = run_lloyd(points, initial, 50)
    assert np.array_equal(ours, reference_lloyd(points, initial, 50))
    assert len(np.unique(ours)) == 5


def test_kmeans_with_one_cluster_or_one_point_per_cluster():
    points = torch.from_numpy(blobs(50, 3, 4, 6, noise=0.5))
    assert torch.equal(kmeans(points, 1), torch.zeros(50, dtype=torch.long))
    assert sorted(kmeans(points, 50).tolist()) == list(range(50))


def test_kmeans_with_fewer_distinct_points_than_clusters():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    clusters = kmeans(points, 5, seed=1)
    assert clusters.shape == (20,)
    # the duplicates of one point share a cluster: the two distinct points lie in two clusters
    assert len(set(clusters[::2].tolist())) == 1 and len(set(clusters[1::2].tolist())) == 1
    assert clusters[0] != clusters[1]


def reference_kmeans_plus_plus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ in float64 from the same random draws: each step draws ``2 + ln k`` candidates
    with probability ~ D(x)^2 and keeps the one that lowers the total squared distance most."""
    generator = torch.Generator().manual_seed(seed)
    trials = 2 + int(np.log(k))
    first = int(torch.randint(len(points), (1,), generator=generator))
    uniform = torch.rand(k - 1, trials, generator=generator, dtype=torch.float64).numpy()
    x = points.astype(np.float64)
    chosen = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for step in range(1, k):
        cumulative = np.cumsum(closest)
        candidates = np.minimum(
            np.searchsorted(cumulative, uniform[step - 1] * cumulative[-1], "right"), len(x) - 1
        )
        updated = np.minimum(closest[None, :], ((x[None, :, :] - x[candidates][:, None, :]) ** 2).sum(-1))
        best = int(updated.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = updated[best]
    return np.array(chosen)


@pytest.mark.parametrize("k", [2, 9, 30])
def test_greedy_kmeans_plus_plus_picks_what_the_reference_picks(k):
    points = blobs(400, 6, 12, 7, noise=0.7)
    x = torch.from_numpy(points)
    seeds = clustering.kmeans_plus_plus(x, (x * x).sum(1), k, torch.Generator().manual_seed(11)).numpy()
    assert np.array_equal(seeds, points[reference_kmeans_plus_plus(points, k, 11)])


def test_kmeans_is_deterministic_under_a_seed_and_varies_with_it():
    points = torch.from_numpy(blobs(2000, 16, 40, 8, noise=1.0))
    first = kmeans(points, 40, seed=5)
    assert torch.equal(first, kmeans(points, 40, seed=5))
    assert not torch.equal(first, kmeans(points, 40, seed=6))


def test_kmeans_seeded_from_a_sample_scores_as_well_as_from_every_point(monkeypatch):
    """Seeding from a sample (as on large inputs) loses no clustering quality on separable data."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 30, 3000)
    points = torch.from_numpy(
        (rng.normal(size=(30, 32))[labels] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    )
    monkeypatch.setattr(clustering, "SEEDING_SAMPLE", len(points))
    full = metrics.normalized_mutual_info_score(labels, kmeans(points, 30, seed=0).numpy())
    monkeypatch.setattr(clustering, "SEEDING_SAMPLE", 200)  # 200 > 4 per cluster: 200 points seed
    sampled = metrics.normalized_mutual_info_score(labels, kmeans(points, 30, seed=0).numpy())
    assert full > 0.95 and sampled > 0.95


def test_kmeans_does_not_see_a_translation():
    """Far from the origin, float32's ||x||^2 - 2 x.c + ||c||^2 loses the clusters' scale unless the points
    are centred first: the same points shifted by 1000 must cluster as they do at the origin."""
    points = np.round(blobs(1500, 16, 25, 10, noise=0.9) * 64) / 64  # exact in float32 after the shift
    near = kmeans(torch.from_numpy(points), 25, seed=2).numpy()
    far = kmeans(torch.from_numpy(points + np.float32(1000)), 25, seed=2).numpy()
    pairs = set(zip(near.tolist(), far.tolist()))
    assert len(pairs) == len(set(near.tolist())) == len(set(far.tolist()))
