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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


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
