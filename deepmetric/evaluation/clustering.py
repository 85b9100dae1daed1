"""Clustering quality: k-means on the query embeddings, scored against the labels by NMI and AMI.

``nmi`` = ``I(Y; C) / ((H(Y) + H(C)) / 2)`` (arithmetic normalisation, scikit-learn's default and PML's),
``ami`` = ``(I(Y; C) - E[I]) / ((H(Y) + H(C)) / 2 - E[I])`` with ``E[I]`` the mutual information expected
under a random permutation model (Vinh et al. 2010), where ``Y`` are the class ids and ``C`` the k-means
clusters with ``k`` = number of distinct classes among the embeddings clustered. The scores themselves come
from scikit-learn; the clustering is our own torch k-means (k-means++ seeding, Lloyd iterations),
deterministic under a seed and chunked so that only ``rows x k`` distances exist at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepmetric.evaluation.knn import rows_per_block


def _nearest_centroid(
    points: torch.Tensor, point_norms: torch.Tensor, centroids: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for every point, ``rows`` points at a time.

    ``||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c``; ``point_norms`` (the ``||x||^2``) are computed once.
    """
    centroid_norms = (centroids * centroids).sum(1)
    assignments, distances = [], []
    for start in range(0, len(points), rows):
        block = torch.addmm(centroid_norms[None, :], points[start : start + rows], centroids.T, alpha=-2)
        best, index = block.min(1)
        assignments.append(index)
        distances.append((best + point_norms[start : start + rows]).clamp_min(0))
    return torch.cat(assignments), torch.cat(distances)


def kmeans_plus_plus(
    points: torch.Tensor, point_norms: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with prob. ~ D(x)^2.

    Drawn by inverse transform sampling (cumulative sum + binary search), which is much cheaper per
    centre than ``torch.multinomial``.
    """
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64).to(points.device)
    chosen = [min(int(uniforms[0] * len(points)), len(points) - 1)]
    closest = torch.full_like(point_norms, torch.inf, dtype=torch.float64)
    for step in range(1, k + 1):
        centre = points[chosen[-1]]
        to_centre = (point_norms + point_norms[chosen[-1]] - 2 * torch.mv(points, centre)).clamp_min(0)
        closest = torch.minimum(closest, to_centre.double())
        if step == k:
            break
        cumulative = closest.cumsum(0)
        if cumulative[-1] <= 0:  # fewer distinct points than clusters: any point will do
            cumulative = torch.arange(1, len(points) + 1, device=points.device, dtype=torch.float64)
        target = uniforms[step : step + 1] * cumulative[-1]
        chosen.append(min(int(torch.searchsorted(cumulative, target, right=True)), len(points) - 1))
    return points[chosen]


def kmeans(
    embeddings: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    max_iterations: int = 30,
    memory_budget_mb: float = 512,
) -> torch.Tensor:
    """Cluster ids (int64, on the embeddings' device) from k-means++ seeding and Lloyd iterations.

    Stops when no assignment changes or after ``max_iterations``. An empty cluster is re-seeded with the
    point farthest from its centroid, so exactly ``num_clusters`` clusters exist whenever there are that
    many distinct points.
    """
    if not 1 <= num_clusters <= len(embeddings):
        raise ValueError(f"num_clusters must be between 1 and {len(embeddings)}, got {num_clusters}")
    points = embeddings.float()
    point_norms = (points * points).sum(1)
    rows = rows_per_block(num_clusters, memory_budget_mb)
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(points, point_norms, num_clusters, generator)
    assignments = None
    for _ in range(max_iterations):
        new_assignments, distances = _nearest_centroid(points, point_norms, centroids, rows)
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
) -> dict[str, float]:
    """``{"nmi": ..., "ami": ...}`` (those asked) of k-means with k = number of distinct ``labels``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("nmi/ami need 1-D class ids; multi-hot labels have no single class per embedding")
    num_classes = len(np.unique(labels))
    clusters = kmeans(embeddings, num_classes, seed=seed, memory_budget_mb=memory_budget_mb).cpu().numpy()
    scores = {}
    if "nmi" in which:
        scores["nmi"] = float(normalized_mutual_info_score(labels, clusters))
    if "ami" in which:
        scores["ami"] = float(adjusted_mutual_info_score(labels, clusters))
    return scores
