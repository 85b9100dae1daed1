"""Pairwise distances and similarities: the one place where embeddings are compared.

Every loss, miner and the evaluation engine takes a :class:`Distance`. A distance knows whether larger
values mean "closer" (similarities) or "farther" (distances), so code that ranks or applies margins can be
written once for both kinds through :meth:`Distance.closer_by`.

Names for configs: ``euclidean``, ``squared_euclidean``, ``cosine``, ``dot``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ZERO_EPS = 1e-12
# Below this, a square root counts as zero and passes no gradient (see :func:`safe_sqrt`).
SQRT_ZERO_THRESHOLD = _ZERO_EPS**0.5


class _SafeSqrt(torch.autograd.Function):
    """``sqrt`` whose gradient is 0 (not infinite) where the input is (numerically) zero."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, squared: torch.Tensor) -> torch.Tensor:
        root = squared.clamp_min(0).sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (root,) = ctx.saved_tensors
        threshold = SQRT_ZERO_THRESHOLD
        # 1 / (2 root) where root > threshold, else 0, by arithmetic: a comparison written straight into a
        # float tensor and two products cost far less on CPU than a boolean mask with ``torch.where``.
        scale = torch.gt(root, threshold, out=torch.empty_like(root))
        scale /= 2 * root.clamp_min(threshold)
        return grad * scale


def safe_sqrt(squared: torch.Tensor) -> torch.Tensor:
    """Square root whose gradient stays finite at zero.

    ``d/dx sqrt(x)`` is infinite at 0, so identical embeddings (distance 0) would turn the gradient into
    NaN. Where ``squared`` is (numerically) zero the gradient is 0 instead. One fused autograd node: this
    sits under every Euclidean loss, so it is kept cheap.
    """
    return _SafeSqrt.apply(squared)


def symmetrised(matrix: torch.Tensor) -> torch.Tensor:
    """``M + Mᵀ`` (a new tensor). A contiguous copy of the transpose goes through ATen's blocked transpose
    kernel; adding the strided transpose directly is ~5x slower on CPU for a 1024 x 1024 matrix."""
    return matrix.T.contiguous().add_(matrix)


class _SelfGram(torch.autograd.Function):
    """``x xᵀ`` whose backward is one matrix product, ``(G + Gᵀ) x``, instead of autograd's two."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return symmetrised(grad) @ x


class _SelfSquaredEuclidean(torch.autograd.Function):
    """``[||x_i||² + ||x_j||² - 2 x_i.x_j]_+`` of a batch against itself: one matrix product forward and one
    backward (autograd's generic graph takes two backward).

    With ``S = G + Gᵀ`` (``G`` the incoming gradient, zero where the clamp was active), the gradient is
    ``2 (rowsum(S) x - S x)``.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        squared_norms = (x * x).sum(1)
        unclamped = torch.addmm(squared_norms[:, None] + squared_norms[None, :], x, x.T, alpha=-2)
        ctx.save_for_backward(x, unclamped)
        return unclamped.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        x, unclamped = ctx.saved_tensors
        grad = grad * torch.ge(unclamped, 0, out=torch.empty_like(unclamped))  # clamp_min's gradient
        symmetric = symmetrised(grad)
        return torch.addmm(symmetric.sum(1, keepdim=True) * x, symmetric, x, beta=2, alpha=-2)


class Distance(torch.nn.Module):
    """Base class. ``pairwise(x, y)`` gives the ``len(x) x len(y)`` matrix; ``paired(x, y)`` row by row."""

    is_similarity: bool = False
    name: str = ""

    def __init__(self, normalize_embeddings: bool = False) -> None:
        super().__init__()
        self.normalize_embeddings = normalize_embeddings

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize_embeddings else x

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.pairwise(x, y)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare(x)
        y = x if y is None else self.prepare(y)
        return self._pairwise(x, y)

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._paired(self.prepare(x), self.prepare(y))

    def closer_by(self, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
        """How much closer ``near`` is than ``far`` (positive when the ordering is right).

        ``far - near`` for distances, ``near - far`` for similarities: the quantity a margin is added to.
        """
        return near - far if self.is_similarity else far - near

    def worst(self, like: torch.Tensor) -> torch.Tensor:
        """The value meaning "infinitely far", used to mask entries out of min/max searches."""
        info = torch.finfo(like.dtype)
        return torch.tensor(
            info.min if self.is_similarity else info.max, dtype=like.dtype, device=like.device
        )

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"normalize_embeddings={self.normalize_embeddings}"


class SquaredEuclideanDistance(Distance):
    """``||x - y||^2`` computed as ``||x||^2 + ||y||^2 - 2 x.y`` (one matrix product), clamped at 0."""

    name = "squared_euclidean"

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is x and x.ndim == 2:  # a batch against itself: the symmetric case saves a matrix product
            return _SelfSquaredEuclidean.apply(x)
        x_sq = (x * x).sum(-1, keepdim=True)
        y_sq = (y * y).sum(-1, keepdim=True).transpose(-2, -1)
        if x.ndim == 2:  # one fused multiply-add for the common case
            return torch.addmm(x_sq + y_sq, x, y.T, alpha=-2).clamp_min(0)
        return (x_sq + y_sq - 2 * x @ y.transpose(-2, -1)).clamp_min(0)

    def _paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x - y) ** 2).sum(-1)


class EuclideanDistance(SquaredEuclideanDistance):
    """``||x - y||``, NaN-safe at zero distance (see :func:`safe_sqrt`)."""

    name = "euclidean"

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return safe_sqrt(super()._pairwise(x, y))

    def _paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return safe_sqrt(super()._paired(x, y))


class DotProductSimilarity(Distance):
    """``x . y`` (a similarity: larger is closer)."""

    is_similarity = True
    name = "dot"

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is x and x.ndim == 2:  # a batch against itself: the symmetric case saves a matrix product
            return _SelfGram.apply(x)
        return x @ y.transpose(-2, -1)

    def _paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(-1)


class CosineSimilarity(DotProductSimilarity):
    """``x . y / (||x|| ||y||)``: the dot product of L2-normalised embeddings."""

    name = "cosine"

    def __init__(self, normalize_embeddings: bool = True) -> None:
        if not normalize_embeddings:
            raise ValueError(
                "CosineSimilarity always normalises; use DotProductSimilarity for raw dot products"
            )
        super().__init__(normalize_embeddings=True)


DISTANCES: dict[str, type[Distance]] = {
    cls.name: cls
    for cls in (EuclideanDistance, SquaredEuclideanDistance, CosineSimilarity, DotProductSimilarity)
}


def get_distance(distance: str | Distance | None, default: str = "euclidean", **kwargs) -> Distance:
    """A :class:`Distance` from its name (``euclidean``, ``squared_euclidean``, ``cosine``, ``dot``)."""
    if distance is None:
        distance = default
    if isinstance(distance, Distance):
        return distance
    try:
        return DISTANCES[distance](**kwargs)
    except KeyError:
        raise ValueError(f"unknown distance {distance!r}; choose one of {sorted(DISTANCES)}") from None
