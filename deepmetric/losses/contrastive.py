"""Contrastive loss (Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
CVPR 2006).

For every positive pair (i, j) and every negative pair (i, k) of the batch (or the mined pairs):

    L_pos(i, j) = [D_ij - m_pos]_+^p          L_neg(i, k) = [m_neg - D_ik]_+^p

with ``D`` the Euclidean distance by default, ``m_pos = 0``, ``m_neg = 1`` and ``p = 1`` (PML's form); with
``squared=True`` (``p = 2``) it is the paper's ``(1 - Y) ½ D² + Y ½ max(0, m - D)²`` up to the factor ½.
For a similarity (cosine, dot) the inequalities flip: ``[m_pos - S_ij]_+`` and ``[S_ik - m_neg]_+``.

The per-pair losses (positives, then negatives) are averaged over the non-zero ones by default
(``reduction="mean_nonzero"``), so pairs already beyond their margin do not dilute the gradient. The
Euclidean distance is NaN-safe, so identical embeddings (distance 0) give finite gradients.

The common configuration (Euclidean distance on raw embeddings, ``p = 1``, 1-D labels, no miner, no reference
set, a ``mean``/``sum``/``mean_nonzero`` reduction) runs as one autograd node: per pair the loss is
``[s_ij D_ij + o_ij]_+`` (sign ``s`` and offset ``o`` from the labels), whose gradient in ``D_ij²`` is
``c_ij = s_ij [loss > 0] / (2 D_ij)`` (0 where ``D`` is numerically 0), and the embeddings' gradient is
``2 (rowsum(C + Cᵀ) x - (C + Cᵀ) x)``: one matrix product each way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import SQRT_ZERO_THRESHOLD, Distance, EuclideanDistance, symmetrised
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


class _SelfContrastive(torch.autograd.Function):
    """The reduced (``mean``: over all pairs, ``sum``, ``mean_nonzero``) contrastive loss of a batch against
    itself with Euclidean distances, as one node."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        labels: torch.Tensor,
        pos_margin: float,
        neg_margin: float,
        reduction: str,
    ) -> torch.Tensor:
        squared_norms = (x * x).sum(1)
        # The same rounding as the distance module's (a duplicate's D is rounding noise that mean_nonzero counts).
        norm_sums = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0)
        distances = torch.addmm(norm_sums, x, x.T, alpha=-2)
        distances.clamp_min_(0).sqrt_()
        same = torch.eq(labels.unsqueeze(1), labels.unsqueeze(0), out=torch.empty_like(distances))
        # sign +1 on positives, -1 on negatives; offset -m_pos on positives, m_neg on negatives; both 0 on the
        # diagonal (no pair).
        sign = same.mul(2).sub_(1).fill_diagonal_(0)
        losses = same.mul_(-(pos_margin + neg_margin)).add_(neg_margin).fill_diagonal_(0)
        losses.addcmul_(sign, distances).relu_()
        active = torch.gt(losses, 0, out=torch.empty_like(losses))
        total = losses.sum()
        if reduction == "mean":
            count = float(len(x) * (len(x) - 1))
        else:
            count = active.sum().clamp_min_(1) if reduction == "mean_nonzero" else 1.0
        # d loss / d D² = sign [active] / (2 D), zero where D is numerically 0 (the NaN-safe square root's rule).
        nonzero = torch.gt(distances, SQRT_ZERO_THRESHOLD, out=torch.empty_like(distances))
        coefficient = active.mul_(sign).mul_(nonzero).div_(distances.clamp_min_(SQRT_ZERO_THRESHOLD))
        ctx.save_for_backward(x, coefficient, torch.as_tensor(count, dtype=x.dtype))
        return total / count

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        x, coefficient, count = ctx.saved_tensors
        symmetric = symmetrised(coefficient)
        # 2 (rowsum(S) x - S x) times the 1/2 of the coefficient, times the incoming gradient over the count.
        grad_x = torch.addmm(symmetric.sum(1, keepdim=True) * x, symmetric, x, beta=1, alpha=-1)
        return grad_x.mul_(grad / count), None, None, None, None


@LOSSES.register("contrastive")
class ContrastiveLoss(MetricLoss):
    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        squared: bool = False,
        distance: str | Distance | None = None,
        reduction: str = "mean_nonzero",
    ) -> None:
        super().__init__(distance, reduction)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.squared = squared

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if (
            type(self.distance) is EuclideanDistance
            and not self.distance.normalize_embeddings
            and not self.squared
            and indices is None
            and ref_embeddings is None
            and labels.ndim == 1
            and self.reduction != "none"
        ):
            # The shared reducer passes the scalar through unchanged.
            return _SelfContrastive.apply(
                embeddings, labels, self.pos_margin, self.neg_margin, self.reduction
            )
        dist = self.distance(embeddings, ref_embeddings)
        positives, negatives = self.pair_weights(labels, indices, ref_labels, dist.dtype)
        # Both hinges in one pass: [sign * (dist - margin)]_+ with sign +1 on positives, -1 on negatives and
        # 0 (a zero loss) elsewhere; flipped for a similarity, whose positives must exceed their margin.
        sign = positives - negatives
        offset = negatives * self.neg_margin - positives * self.pos_margin
        if self.distance.is_similarity:
            sign, offset = -sign, -offset
        losses = F.relu(torch.addcmul(offset, sign, dist))
        if self.squared:
            losses = losses * losses
        return self.reduce_pairs(losses, positives + negatives)

    def extra_repr(self) -> str:
        return f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, squared={self.squared}"
