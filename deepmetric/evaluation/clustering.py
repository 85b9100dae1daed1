"""Clustering quality: k-means on the query embeddings, scored against the labels by NMI and AMI.

``nmi`` = ``I(Y; C) / ((H(Y) + H(C)) / 2)`` (arithmetic normalisation, scikit-learn's default and PML's),
``ami`` = ``(I(Y; C) - E[I]) / ((H(Y) + H(C)) / 2 - E[I])`` with ``E[I]`` the mutual information expected
under a random permutation model (Vinh et al. 2010), where ``Y`` are the class ids and ``C`` the k-means
clusters with ``k`` = number of distinct classes among the embeddings clustered. The scores themselves come
from scikit-learn; the clustering is our own torch k-means (greedy k-means++ seeding, Lloyd iterations),
deterministic under a seed and chunked so that only ``rows x k`` distances exist at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepmetric import linalg, native
from deepmetric.evaluation.knn import native_selection, rows_per_block


def _nearest_centroid(
    points: torch.Tensor, point_norms: torch.Tensor, centroids: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for every point, ``rows`` points at a time.

    ``||x - c||^2 = ||x||^2 - 2 (x.c - ||c||^2 / 2)``: the nearest centroid has the largest
    ``x.c - ||c||^2 / 2``, which one matrix product gives directly when each point carries an extra 1
    (``points`` come with it, see :func:`_with_ones`) and each centroid its ``-||c||^2 / 2``. One buffer
    serves every block: a fresh ``rows x k`` allocation per block costs more than its product. On CPU the
    native :func:`~deepmetric.native.argmax_rows` takes each row's best in one vectorised pass.
    """
    augmented = torch.cat([centroids, (centroids * centroids).sum(1, keepdim=True) * -0.5], 1)
    buffer = points.new_empty(min(rows, len(points)), len(centroids))
    assignments = torch.empty(len(points), dtype=torch.long, device=points.device)
    best = torch.empty(len(points), dtype=points.dtype, device=points.device)
    for start in range(0, len(points), rows):
        stop = min(start + rows, len(points))
        scores = linalg.matmul_into(points[start:stop], augmented.T, buffer[: stop - start])
        if native_selection(points.device):
            best[start:stop], assignments[start:stop] = native.argmax_rows(scores)
        else:
            best[start:stop], assignments[start:stop] = scores.max(1)
    return assignments, (point_norms - 2 * best).clamp_min(0)


def _with_ones(points: torch.Tensor) -> torch.Tensor:
    """``points`` with a column of ones appended (see :func:`_nearest_centroid`)."""
    return torch.cat([points, points.new_ones(len(points), 1)], 1)


def kmeans_plus_plus(
    points: torch.Tensor, point_norms: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy variant is scikit-learn's default).

    Each new centre is the best of ``2 + ln k`` candidates drawn with probability ~ D(x)^2: the one that
    lowers the total squared distance most. Plain k-means++ now and then puts two seeds in one cluster,
    which Lloyd iterations rarely repair. Candidates are drawn by inverse transform sampling (cumulative
    sum + binary search), much cheaper per centre than ``torch.multinomial``.
    """
    trials = 2 + int(np.log(k))
    first = int(torch.randint(len(points), (1,), generator=generator))
    chosen = [first]
    closest = (point_norms + point_norms[first] - 2 * torch.mv(points, points[first])).clamp_min(0)
    for _ in range(1, k):
        cumulative = closest.cumsum(0, dtype=torch.float64)  # float64: no drift over many small terms
        if cumulative[-1] <= 0:  # fewer distinct points than clusters: any point will do
            cumulative = torch.arange(1, len(points) + 1, device=points.device, dtype=torch.float64)
        targets = (
            torch.rand(trials, generator=generator, dtype=torch.float64).to(points.device) * cumulative[-1]
        )
        candidates = torch.searchsorted(cumulative, targets, right=True).clamp_max(len(points) - 1)
        to_candidates = torch.addmm(
            point_norms[:, None] + point_norms[candidates][None, :], points, points[candidates].T, alpha=-2
        )
        updated = torch.minimum(closest[:, None], to_candidates.clamp_min_(0))
        best = int(updated.sum(0, dtype=torch.float64).argmin())
        chosen.append(int(candidates[best]))
        closest = updated[:, best].contiguous()
    return points[chosen]


def _faiss_kmeans(points: torch.Tensor, num_clusters: int, seed: int, max_iterations: int) -> torch.Tensor:
    """faiss's k-means (random seeding, ``max_iterations`` Lloyd iterations), as PML clusters."""
    try:
        import faiss
    except ImportError:
        raise ValueError("kmeans backend 'faiss' needs faiss (pip install faiss-cpu)") from None
    array = np.ascontiguousarray(points.detach().cpu().numpy(), dtype=np.float32)
    clustering = faiss.Kmeans(array.shape[1], num_clusters, niter=max_iterations, seed=seed, verbose=False)
    # faiss subsamples 256 points per centroid by default; cluster every point, as the torch backend does
    clustering.max_points_per_centroid = max(1, -(-len(array) // num_clusters))
    clustering.min_points_per_centroid = 1
    clustering.train(array)
    _, assignments = clustering.index.search(array, 1)
    return torch.from_numpy(assignments.reshape(-1).astype(np.int64)).to(points.device)


KMEANS_BACKENDS = ("torch", "faiss")
# k-means++ seeds from a random sample of this many points, or of SEEDING_PER_CLUSTER per cluster if more:
# its k passes are sequential, and a larger sample gave no better clusters (NMI) after Lloyd iterations.
SEEDING_SAMPLE = 4096
SEEDING_PER_CLUSTER = 4
# Points per assignment block at most: a block of distances that stays in cache is faster than a big one.
ASSIGNMENT_ROWS = 4096


def kmeans(
    embeddings: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    max_iterations: int = 20,
    memory_budget_mb: float = 512,
    backend: str = "torch",
) -> torch.Tensor:
    """Cluster ids (int64, on the embeddings' device) from k-means.

    ``backend="torch"``: k-means++ seeding and Lloyd iterations; stops when no assignment changes or after
    ``max_iterations``. An empty cluster is re-seeded with the point farthest from its centroid, so exactly
    ``num_clusters`` clusters exist whenever there are that many distinct points. ``backend="faiss"``:
    ``faiss.Kmeans`` (random seeding, ``max_iterations`` iterations), seeded with ``seed``.
    """
    if not 1 <= num_clusters <= len(embeddings):
        raise ValueError(f"num_clusters must be between 1 and {len(embeddings)}, got {num_clusters}")
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans backend must be one of {KMEANS_BACKENDS}, got {backend!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    if backend == "faiss":
        return _faiss_kmeans(embeddings, num_clusters, seed, max_iterations)
    points = embeddings.float()
    point_norms = (points * points).sum(1)
    rows = min(rows_per_block(num_clusters, memory_budget_mb), ASSIGNMENT_ROWS)
    generator = torch.Generator().manual_seed(seed)
    sample_size = max(SEEDING_SAMPLE, SEEDING_PER_CLUSTER * num_clusters)
    if len(points) > sample_size:
        sample = torch.randperm(len(points), generator=generator)[:sample_size].to(points.device)
        centroids = kmeans_plus_plus(points[sample], point_norms[sample], num_clusters, generator)
    else:
        centroids = kmeans_plus_plus(points, point_norms, num_clusters, generator)
    assignments = None
    points_with_ones = _with_ones(points)
    for _ in range(max_iterations):
        new_assignments, distances = _nearest_centroid(points_with_ones, point_norms, centroids, rows)
        if assignments is not None and torch.equal(new_assignments, assignments):
            break
        assignments = new_assignments
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
        counts = torch.bincount(assignments, minlength=num_clusters)
        centroids = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            farthest = distances.topk(len(empty)).indices
            centroids[empty] = points[farthest]
    return assignments


def cluster_scores(
    embeddings: torch.Tensor,
    labels: np.ndarray,
    which: tuple[str, ...] = ("nmi", "ami"),
    seed: int = 0,
    memory_budget_mb: float = 512,
    kmeans_backend: str = "torch",
) -> dict[str, float]:
    """``{"nmi": ..., "ami": ...}`` (those asked) of k-means with k = number of distinct ``labels``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("nmi/ami need 1-D class ids; multi-hot labels have no single class per embedding")
    num_classes = len(np.unique(labels))
    clusters = kmeans(
        embeddings, num_classes, seed=seed, memory_budget_mb=memory_budget_mb, backend=kmeans_backend
    )
    clusters = clusters.cpu().numpy()
    scores = {}
    if "nmi" in which:
        scores["nmi"] = float(normalized_mutual_info_score(labels, clusters))
    if "ami" in which:
        scores["ami"] = float(adjusted_mutual_info_score(labels, clusters))
    return scores
