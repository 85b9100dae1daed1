"""Post-processing of embeddings for retrieval: transforms fitted or applied after the network.

- :func:`power_normalize`: ``sign(x) |x|^alpha``, then L2 (Jégou et al.; tames bursty feature channels);
- :class:`PCAWhitening`: centre, rotate onto the principal axes and scale each by ``1/sqrt(variance)``,
  fitted on *training* classes, optionally reduced to ``dim`` axes, then L2 (Radenović et al. 2018);
- :func:`alpha_query_expansion`: a query becomes the L2-normalised sum of itself and its ``k`` nearest
  database vectors weighted by ``similarity^alpha`` (αQE, Radenović et al. 2018);
- :func:`database_augmentation`: the same applied to every database vector against the database
  (DBA), its own copy left out of its neighbours;
- :func:`k_reciprocal_rerank`: query/gallery distances re-ranked by k-reciprocal encoding (Zhong et al.
  2017).

All work on cosine similarity (rows are L2-normalised first) with float64 arithmetic and return float32.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{name} must be a non-empty N x D matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def power_normalize(x: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``sign(x) * |x|^alpha``, L2-normalised (``alpha=1``: L2 normalisation alone)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"power normalisation alpha must be in (0, 1], got {alpha}")
    x = np.asarray(_check_matrix(x, "embeddings"), dtype=np.float64)
    return l2_normalize(np.sign(x) * np.abs(x) ** alpha).astype(np.float32)


class PCAWhitening:
    """PCA whitening learnt on training embeddings: ``transform(x) = L2((x - mean) P / sqrt(var + eps))``.

    ``dim`` keeps the leading axes (None: all); ``eps`` is added to every variance, relative to the
    largest one, so that near-empty axes are not blown up."""

    def __init__(self, dim: int | None = None, eps: float = 1e-3) -> None:
        if dim is not None and dim <= 0:
            raise ValueError(f"whitening dim must be > 0, got {dim}")
        if eps < 0:
            raise ValueError(f"whitening eps must be >= 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> PCAWhitening:
        x = l2_normalize(_check_matrix(x, "training embeddings"))
        dim = self.dim if self.dim is not None else x.shape[1]
        if dim > min(x.shape):
            raise ValueError(f"whitening dim {dim} exceeds what {x.shape[0]} x {x.shape[1]} embeddings hold")
        self.mean = x.mean(axis=0)
        covariance = np.cov(x - self.mean, rowvar=False, bias=True)
        variances, axes = np.linalg.eigh(covariance)
        order = np.argsort(variances)[::-1][:dim]
        variances, axes = variances[order], axes[:, order]
        self.projection = axes / np.sqrt(variances + self.eps * variances[0])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.projection is None:
            raise ValueError("PCAWhitening is not fitted: call fit(training embeddings) first")
        x = l2_normalize(_check_matrix(x, "embeddings"))
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"embeddings have {x.shape[1]} dimensions, the whitening was fitted on {len(self.mean)}"
            )
        return l2_normalize((x - self.mean) @ self.projection).astype(np.float32)


def alpha_query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    k: int = 2,
    alpha: float = 3.0,
    exclude_self: bool = False,
) -> np.ndarray:
    """αQE: ``L2(q + sum_i max(s_i, 0)^alpha d_i)`` over the ``k`` database vectors ``d_i`` most similar
    to ``q`` (cosine ``s_i``). ``exclude_self``: queries are the database itself, row i is not its own
    neighbour."""
    queries = l2_normalize(_check_matrix(queries, "queries"))
    database = l2_normalize(_check_matrix(database, "database"))
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, the database {database.shape[1]}")
    if exclude_self and len(queries) != len(database):
        raise ValueError("exclude_self needs the queries to be the database")
    available = len(database) - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"query expansion k must be in 1..{available}, got {k}")
    if alpha < 0:
        raise ValueError(f"query expansion alpha must be >= 0, got {alpha}")
    similarity = queries @ database.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.maximum(np.take_along_axis(similarity, neighbours, axis=1), 0.0) ** alpha
    expanded = queries + np.einsum("nk,nkd->nd", weights, database[neighbours])
    return l2_normalize(expanded).astype(np.float32)


def database_augmentation(database: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """DBA: every database vector replaced by its αQE against the rest of the database."""
    return alpha_query_expansion(database, database, k, alpha, exclude_self=True)


def _k_reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """The ``k``-reciprocal neighbours of ``i``: those among its ``k + 1`` nearest that count ``i``
    among theirs (``rank``: every row's items, nearest first, itself included)."""
    forward = rank[i, : k + 1]
    return forward[(rank[forward, : k + 1] == i).any(axis=1)]


def k_reciprocal_rerank(
    queries: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked ``len(queries) x len(gallery)`` distances (Zhong et al. 2017, "Re-ranking Person
    Re-identification with k-reciprocal Encoding"): ``lambda * d + (1 - lambda) * d_Jaccard``.

    ``d`` is the cosine distance ``1 - cos`` over queries and gallery together, scaled per item by its
    largest distance (the authors' code). Each item's k1-reciprocal set, grown by the k1/2-reciprocal sets
    of its members that share more than 2/3 of theirs with it, becomes a vector of ``exp(-d)`` weights
    summing to 1, averaged over the item's ``k2`` nearest neighbours (local query expansion); the Jaccard
    distance of two items is ``1 - sum(min) / sum(max)`` of their vectors.
    """
    queries = l2_normalize(_check_matrix(queries, "queries"))
    gallery = l2_normalize(_check_matrix(gallery, "gallery"))
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, the gallery {gallery.shape[1]}")
    items = np.concatenate([queries, gallery])
    count, num_queries = len(items), len(queries)
    if not 1 <= k2 <= k1 < count:
        raise ValueError(f"re-ranking needs 1 <= k2 <= k1 < {count} items, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"re-ranking lambda must be in [0, 1], got {lambda_value}")
    distance = np.maximum(1.0 - items @ items.T, 0.0)
    distance = distance / np.maximum(distance.max(axis=0, keepdims=True), 1e-12)
    rank = np.argsort(distance, axis=1, kind="stable")
    vectors = np.zeros((count, count))
    for i in range(count):
        reciprocal = _k_reciprocal(rank, i, k1)
        expansion = [reciprocal]
        for candidate in reciprocal:
            theirs = _k_reciprocal(rank, candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(theirs, reciprocal)) > 2 / 3 * len(theirs):
                expansion.append(theirs)
        members = np.unique(np.concatenate(expansion))
        weights = np.exp(-distance[i, members])
        vectors[i, members] = weights / weights.sum()
    if k2 > 1:
        vectors = vectors[rank[:, :k2]].mean(axis=1)
    # sum(min) over the columns both vectors use; rows sum to 1, so sum(max) = 2 - sum(min)
    shared = np.zeros((num_queries, count))
    for i in range(num_queries):
        for column in np.flatnonzero(vectors[i]):
            holders = np.flatnonzero(vectors[:, column])
            shared[i, holders] += np.minimum(vectors[i, column], vectors[holders, column])
    jaccard = 1.0 - shared / (2.0 - shared)
    final = lambda_value * distance[:num_queries] + (1 - lambda_value) * jaccard
    return final[:, num_queries:].astype(np.float32)
