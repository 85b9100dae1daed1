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
from deepmetric.retrieval.knn import native_selection, rows_per_block


def _two_nearest(
    points_with_ones: torch.Tensor, augmented: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid and the scores of the nearest and second nearest, ``rows`` points at
    a time.

    ``||x - c||^2 = ||x||^2 - 2 (x.c - ||c||^2 / 2)``: the nearest centroid has the largest score
    ``x.c - ||c||^2 / 2``, which one matrix product gives directly when each point carries an extra 1
    (see :func:`_with_ones`) and each row of ``augmented`` is a centroid with its ``-||c||^2 / 2``. One
    buffer serves every block: a fresh ``rows x k`` allocation per block costs more than its product. On CPU
    the native :func:`~deepmetric.native.argmax_rows` takes each row's best and second best in one
    vectorised pass; elsewhere the second best is the best once the first is masked (``-inf`` where there
    is a single centroid).
    """
    count = len(points_with_ones)
    buffer = points_with_ones.new_empty(min(rows, count), len(augmented))
    assignments = torch.empty(count, dtype=torch.long, device=points_with_ones.device)
    best = points_with_ones.new_empty(count)
    second = points_with_ones.new_empty(count)
    native_rows = native_selection(points_with_ones.device)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        scores = linalg.matmul_into(points_with_ones[start:stop], augmented.T, buffer[: stop - start])
        if native_rows:
            best[start:stop], assignments[start:stop], second[start:stop] = native.argmax_rows(
                scores, second=True
            )
            continue
        first, index = scores.max(1)
        best[start:stop], assignments[start:stop] = first, index
        second[start:stop] = scores.scatter_(1, index[:, None], -torch.inf).max(1).values
    return assignments, best, second


def _with_ones(points: torch.Tensor) -> torch.Tensor:
    """``points`` with a column of ones appended (see :func:`_two_nearest`)."""
    return torch.cat([points, points.new_ones(len(points), 1)], 1)


def kmeans_plus_plus(
    points: torch.Tensor, point_norms: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy variant is scikit-learn's default).

    Each new centre is the best of ``2 + ln k`` candidates drawn with probability ~ D(x)^2: the one that
    lowers the total squared distance most. Plain k-means++ now and then puts two seeds in one cluster,
    which Lloyd iterations rarely repair. Candidates are drawn by inverse transform sampling (cumulative
    sum + binary search), much cheaper per centre than ``torch.multinomial``; one ``trials x points``
    product per centre gives their squared distances, the points' norms folded into it. On CPU the native
    :func:`~deepmetric.native.kmeans_plus_plus` takes the same steps from the same draws (a torch step
    is mostly the fixed cost of its dozen operators: 50 -> 23 ms for 200 centres from 2,048 points).
    """
    trials = 2 + int(np.log(k))
    first = torch.randint(len(points), (1,), generator=generator).to(points.device)
    uniform = torch.rand(k - 1, trials, generator=generator, dtype=torch.float64).to(points.device)
    if native_selection(points.device):  # the same steps in C: a torch step is mostly per-op overhead
        return points.index_select(0, native.kmeans_plus_plus(points, point_norms, k, int(first), uniform))
    ones = points.new_ones(len(points), 1)
    # [x, 1, ||x||^2] . [-2 c, ||c||^2, 1] = ||x - c||^2: one product per step for every point and candidate
    lifted = torch.cat([points, ones, point_norms[:, None]], 1)
    dual = torch.cat([points * -2, point_norms[:, None], ones], 1)
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    chosen[0] = first[0]
    closest = torch.mv(lifted, dual[first[0]]).clamp_min_(0)
    for step in range(1, k):
        cumulative = closest.cumsum(0, dtype=torch.float64)  # float64: no drift over many small terms
        if cumulative[-1] <= 0:  # fewer distinct points than clusters: any point will do
            cumulative = torch.arange(1, len(points) + 1, device=points.device, dtype=torch.float64)
        targets = uniform[step - 1] * cumulative[-1]
        candidates = torch.searchsorted(cumulative, targets, right=True).clamp_max_(len(points) - 1)
        to_candidates = torch.mm(dual.index_select(0, candidates), lifted.T).clamp_min_(0)  # trials x points
        torch.minimum(to_candidates, closest[None, :], out=to_candidates)
        best = to_candidates.sum(1, dtype=torch.float64).argmin()
        chosen[step] = candidates[best]
        closest = to_candidates[best]
    return points.index_select(0, chosen)


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


def _augmented(centroids: torch.Tensor) -> torch.Tensor:
    """Each centroid with its ``-||c||^2 / 2`` appended (see :func:`_two_nearest`)."""
    return torch.cat([centroids, (centroids * centroids).sum(1, keepdim=True) * -0.5], 1)


def _drop_lower_bounds(
    points_with_ones: torch.Tensor,
    point_norms: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    drift: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    rows: int,
    tolerance: float,
) -> bool:
    """Lower bounds made valid for centroids that moved by ``drift``, in place; False where a full pass of
    every point is cheaper (``lower`` then untouched).

    Dropping every bound by the largest drift would let the one centroid that moved far send most points
    to a full pass. So the centroids are taken in order of drift, in tiers of 1, 1, 2, 4, ... (the ``m``
    largest movers in all): a point whose margin (lower bound minus upper bound) is at most a tier's
    largest drift gets its exact distances to that tier's centroids; its bound then drops by the largest
    drift among the tiers it is not near and the centroids beyond the ``m``. ``m`` is the one with the
    fewest distances in all, counting a full pass for the points whose margin stays below the largest
    drift beyond the ``m``.
    """
    num_points, num_clusters = len(points_with_ones), len(drift)
    margin = lower - upper
    ordered, order = drift.sort(descending=True)
    sizes = [0] + [2**i for i in range(int(np.log2(num_clusters)) + 1) if 2**i < num_clusters]
    thresholds = ordered[sizes]  # the largest drift beyond the sizes[i] largest
    near = (margin[:, None] <= thresholds[None, :]).sum(0).tolist()
    costs, exact = [], 0
    for tier, size in enumerate(sizes):
        if tier:
            exact += near[tier - 1] * (size - sizes[tier - 1])
        costs.append(exact + near[tier] * num_clusters)
    chosen = int(np.argmin(costs))
    if costs[chosen] >= num_points * num_clusters:
        return False
    # each bound drops by the largest of the chosen thresholds below its margin, or by the smallest one
    ascending = thresholds[: chosen + 1].flip(0)
    below = (torch.searchsorted(ascending, margin) - 1).clamp_min_(0)
    lower -= ascending[below]
    tier = 1
    while tier <= chosen:
        # tiers that most points are near share one pass over every point
        last = tier
        while last < chosen and 2 * near[last] > num_points:
            last += 1
        movers = order[sizes[tier - 1] : sizes[last]]
        _lower_by_movers(
            points_with_ones, point_norms, centroids, assignments, movers, lower,
            margin <= thresholds[tier - 1], rows, tolerance,
        )  # fmt: skip
        tier = last + 1
    return True


def _lower_by_movers(
    points_with_ones: torch.Tensor,
    point_norms: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    movers: torch.Tensor,
    lower: torch.Tensor,
    near: torch.Tensor,
    rows: int,
    tolerance: float,
) -> None:
    """``lower`` lowered in place to the exact distance to the nearest of ``movers`` other than the point's
    own centroid (see :func:`_drop_lower_bounds`), for the points ``near`` marks at least: for every point
    when most are marked, which spares gathering them."""
    which = near.nonzero().flatten() if int(near.sum()) <= len(near) // 2 else None
    count = len(near) if which is None else len(which)
    augmented = _augmented(centroids.index_select(0, movers))
    # column of each point's own centroid among the movers, or -1
    own_column = torch.full((len(centroids),), -1, dtype=torch.long, device=lower.device)
    own_column[movers] = torch.arange(len(movers), device=lower.device)
    own_column = own_column[assignments if which is None else assignments[which]]
    rows = max(rows, rows * len(centroids) // len(movers))  # the same memory as a block of every centroid
    buffer = points_with_ones.new_empty(min(rows, count), len(movers))
    native_rows = native_selection(lower.device)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        if which is None:
            block, norms = points_with_ones[start:stop], point_norms[start:stop]
        else:  # index_select: several times faster than indexing on CPU
            block, norms = points_with_ones.index_select(0, which[start:stop]), point_norms[which[start:stop]]
        scores = linalg.matmul_into(block, augmented.T, buffer[: stop - start])
        own = (own_column[start:stop] >= 0).nonzero().flatten()
        scores[own, own_column[start:stop][own]] = -torch.inf
        best = native.argmax_rows(scores)[0] if native_rows else scores.max(1).values
        nearest = (norms - 2 * best - tolerance).clamp_min_(0).sqrt_()
        if which is None:
            torch.minimum(lower[start:stop], nearest, out=lower[start:stop])
        else:
            lower.scatter_reduce_(0, which[start:stop], nearest, "amin")


def _nearest_with_bounds(
    points_with_ones: torch.Tensor,
    point_norms: torch.Tensor,
    centroids: torch.Tensor,
    rows: int,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A full pass: each point's nearest centroid, an upper bound on the distance to it and a lower bound on
    the distance to every other centroid, widened by ``tolerance`` (see :func:`_lloyd`)."""
    assignments, best, second = _two_nearest(points_with_ones, _augmented(centroids), rows)
    upper = (point_norms - 2 * best + tolerance).clamp_min_(0).sqrt_()
    lower = (point_norms - 2 * second - tolerance).clamp_min_(0).sqrt_()
    return assignments, upper, lower


def _lloyd(
    points: torch.Tensor,
    point_norms: torch.Tensor,
    centroids: torch.Tensor,
    max_iterations: int,
    rows: int,
    points_with_ones: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lloyd iterations from ``centroids``; the final assignments. ``points_with_ones``: the points with a
    column of ones (:func:`_with_ones`), built here when not given.

    Lloyd's iterations, without the distances that cannot change an assignment. Each point keeps an upper
    bound on the distance to its centroid and a lower bound on the distance to every other centroid
    (Hamerly 2010): a centroid that moves by ``delta`` changes no distance by more than ``delta``, so the
    upper bound grows by the drift of the point's own centroid, the lower bound drops (by the largest
    drift, except that the distances to the centroids that moved farthest are computed exactly:
    :func:`_drop_lower_bounds`), and a point whose upper bound stays below its lower bound keeps its
    centroid. Where they overlap, the upper bound is first tightened to the exact distance; the points
    still in doubt (every point, where that is cheaper) get a full pass (:func:`_nearest_with_bounds`),
    which resets their bounds. Bounds are widened by a bound on float32's rounding, so a point is skipped
    only where a full pass would keep its assignment too. Only the clusters that gained or lost points get
    a new mean; the others keep their centroid, which is what makes most bounds hold once few points change
    clusters.
    """
    num_clusters = len(centroids)
    if points_with_ones is None:
        points_with_ones = _with_ones(points)
    # |computed - true| squared distance <= (D + 8) eps (||x|| + ||c||)^2, and ||c|| <= max ||x||; a drift,
    # and a bound moved by it, are off by at most (D + 4) eps max ||x|| more
    eps, largest_norm = torch.finfo(torch.float32).eps, float(point_norms.max())
    tolerance = (points.shape[1] + 8) * eps * 4 * largest_norm
    slack = (points.shape[1] + 4) * eps * largest_norm**0.5
    assignments, upper, lower = _nearest_with_bounds(
        points_with_ones, point_norms, centroids, rows, tolerance
    )
    moved = torch.ones(num_clusters, dtype=torch.bool, device=points.device)
    for _ in range(1, max_iterations):
        previous = centroids
        centroids, moved = _update_centroids(points, centroids, assignments, moved)
        drift = (centroids - previous).norm(dim=1) + slack
        upper += drift[assignments]
        if not _drop_lower_bounds(
            points_with_ones, point_norms, centroids, assignments, drift, upper, lower, rows, tolerance
        ):
            new_assignments, upper, lower = _nearest_with_bounds(
                points_with_ones, point_norms, centroids, rows, tolerance
            )
        else:
            # where the bounds overlap, the exact distance to the point's own centroid may separate them
            doubtful = (upper >= lower).nonzero().flatten()
            gap = points.index_select(0, doubtful) - centroids.index_select(0, assignments[doubtful])
            upper[doubtful] = ((gap * gap).sum(1) + tolerance).sqrt_()
            stale = doubtful[upper[doubtful] >= lower[doubtful]]
            new_assignments = assignments.clone()
            if len(stale):
                new_assignments[stale], upper[stale], lower[stale] = _nearest_with_bounds(
                    points_with_ones.index_select(0, stale), point_norms[stale], centroids, rows, tolerance
                )
        changed = (new_assignments != assignments).nonzero().flatten()
        if not len(changed):
            break
        moved = torch.zeros(num_clusters, dtype=torch.bool, device=points.device)
        moved[assignments[changed]] = True
        moved[new_assignments[changed]] = True
        assignments = new_assignments
    return assignments


def _update_centroids(
    points: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor, moved: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of each ``moved`` cluster (one that gained or lost points; the others keep their centroid,
    which is their mean already) and the clusters that moved. An empty cluster is re-seeded with the point
    farthest from its centroid, so exactly ``k`` clusters exist whenever there are that many distinct
    points."""
    counts = torch.bincount(assignments, minlength=len(centroids))
    empty = (counts == 0).nonzero().flatten()
    moved = moved.clone()
    moved[empty] = True
    members = moved[assignments]
    if int(members.sum()) > len(points) // 2:  # summing every point is cheaper than gathering most
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
    else:
        members = members.nonzero().flatten()
        sums = torch.zeros_like(centroids).index_add_(
            0, assignments[members], points.index_select(0, members)
        )
    updated = centroids.clone()
    updated[moved] = sums[moved] / counts[moved].clamp_min(1)[:, None].to(sums.dtype)
    if len(empty):
        gap = points - centroids.index_select(0, assignments)
        updated[empty] = points.index_select(0, (gap * gap).sum(1).topk(len(empty)).indices)
    return updated, moved


KMEANS_BACKENDS = ("torch", "faiss")
# k-means++ seeds from a random sample of this many points, or of SEEDING_PER_CLUSTER per cluster if more:
# its k passes are sequential, and a larger sample gave no better clusters (NMI) after Lloyd iterations
# (benchmarks/evaluation.py's 10k embeddings, 5 data x 8 seeds: 4096 0.9859 +- 0.0032, 2048 0.9856 +- 0.0030).
SEEDING_SAMPLE = 2048
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
    points = embeddings.detach().float()
    # k-means does not see a translation; centred, the points' distances lose no precision to a large offset.
    # The centred points are written into the matrix that also carries the column of ones of _two_nearest,
    # and used as a view of it: one copy of the embeddings, not two.
    points_with_ones = points.new_empty(len(points), points.shape[1] + 1)
    torch.sub(points, points.mean(0), out=points_with_ones[:, :-1])
    points_with_ones[:, -1] = 1
    points = points_with_ones[:, :-1]
    point_norms = (points * points).sum(1)
    rows = min(rows_per_block(num_clusters, memory_budget_mb), ASSIGNMENT_ROWS)
    generator = torch.Generator().manual_seed(seed)
    sample_size = max(SEEDING_SAMPLE, SEEDING_PER_CLUSTER * num_clusters)
    if len(points) > sample_size:
        sample = torch.randperm(len(points), generator=generator)[:sample_size].to(points.device)
        centroids = kmeans_plus_plus(
            points.index_select(0, sample), point_norms[sample], num_clusters, generator
        )
    else:
        centroids = kmeans_plus_plus(points.contiguous(), point_norms, num_clusters, generator)
    return _lloyd(points, point_norms, centroids, max_iterations, rows, points_with_ones)


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
