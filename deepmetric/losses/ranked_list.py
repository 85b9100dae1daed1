"""Ranked list loss (Wang, Hua, Kodirov, Hu, Garnier & Robertson, "Ranked List Loss for Deep Metric
Learning", CVPR 2019, eqs. 3-8) on L2-normalised embeddings with the Euclidean distance D.

For each anchor i, the non-trivial positives P* = {j ∈ P_i : D_ij > α - m} and negatives
N* = {j ∈ N_i : D_ij < α}:

    L_P(i) = Σ_{j ∈ P*} w_ij (D_ij - (α - m)) / Σ_{j ∈ P*} w_ij ,   w_ij = exp(T_p (D_ij - (α - m)))
    L_N(i) = Σ_{j ∈ N*} w_ij (α - D_ij)       / Σ_{j ∈ N*} w_ij ,   w_ij = exp(T_n (α - D_ij))
    L(i)   = (1 - λ) L_P(i) + λ L_N(i)

α = ``alpha`` = 1.2 (the negatives' boundary), m = ``margin`` = 0.4, T_n = ``temperature`` = 10 weights the
harder negatives more, T_p = ``pos_temperature`` = 0 (uniform positives, the paper's choice), λ =
``imbalance`` = 0.5. An empty set contributes 0. The weights are constants (no gradient flows through
them), as in the paper. The loss is the mean over the anchors.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance, EuclideanDistance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


def _weighted_excess(
    excess: torch.Tensor, temperature: float, pairs: torch.Tensor, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, ``(sum w e / sum w, w / sum w)`` over the pairs (0/1 ``pairs``) whose excess ``e`` is
    positive, with constant weights ``w = exp(temperature e)``; an empty row gives 0 and zero weights."""
    # Buffers are reused in place: at large batches every fresh N x N tensor costs page faults.
    hard = torch.gt(excess, 0, out=torch.empty_like(excess)).mul_(pairs).sub_(1)  # 0 inside, -1 outside
    # Pairs outside the hard set are pushed down by a huge finite offset: their softmax weight is exactly 0.
    weights = torch.softmax(torch.mul(excess, temperature).add_(hard, alpha=offset), 1).mul_(hard.add_(1))
    return torch.mul(weights, excess, out=hard).sum(1), weights


class _RankedListHead(torch.autograd.Function):
    """The per-anchor loss from the distance matrix as one node: the weights are constants, so the gradient in
    ``D_ij`` is ``(1 - lambda) w+_ij - lambda w-_ij``, kept from the forward pass."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        dist: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
        loss: RankedListLoss,
    ) -> torch.Tensor:
        offset = torch.finfo(dist.dtype).max / 8
        pos_loss, pos_weights = _weighted_excess(
            dist - (loss.alpha - loss.margin), loss.pos_temperature, positives, offset
        )
        neg_loss, neg_weights = _weighted_excess(loss.alpha - dist, loss.temperature, negatives, offset)
        ctx.save_for_backward(pos_weights.mul_(1 - loss.imbalance).sub_(neg_weights, alpha=loss.imbalance))
        return pos_loss.mul_(1 - loss.imbalance).add_(neg_loss, alpha=loss.imbalance)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        (dist_grad,) = ctx.saved_tensors
        return dist_grad * grad.unsqueeze(1), None, None, None


@LOSSES.register("ranked_list")
class RankedListLoss(MetricLoss):
    def __init__(
        self,
        margin: float = 0.4,
        alpha: float = 1.2,
        temperature: float = 10.0,
        pos_temperature: float = 0.0,
        imbalance: float = 0.5,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            EuclideanDistance(normalize_embeddings=True) if distance is None else distance, reduction
        )
        self.require_kind(similarity=False, examples="euclidean")
        if not 0 <= imbalance <= 1:
            raise ValueError(f"imbalance must be in [0, 1], got {imbalance}")
        self.margin = margin
        self.alpha = alpha
        self.temperature = temperature
        self.pos_temperature = pos_temperature
        self.imbalance = imbalance

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        dist = self.distance(embeddings, ref_embeddings)
        positives, negatives = self.pair_weights(labels, indices, ref_labels, dist.dtype)
        return _RankedListHead.apply(dist, positives, negatives, self)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, alpha={self.alpha}, temperature={self.temperature}, "
            f"pos_temperature={self.pos_temperature}, imbalance={self.imbalance}"
        )
