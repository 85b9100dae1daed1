"""Binomial deviance loss (Yi, Lei, Liao & Li, "Deep Metric Learning for Person Re-Identification",
ICPR 2014, eq. 4) on cosine similarity S:

    L = Σ_{i,j} w_ij log(1 + exp(-α (S_ij - β) M_ij))

with M_ij = 1 for positive pairs and -C for negative pairs (C = ``neg_cost`` = 25 balances the cost of
the many negatives), w_ij = 1/n_pos for positives and 1/n_neg for negatives, α = 2, β = 0.5.

The per-pair losses come out already weighted by 1/n_pos and 1/n_neg, so the default ``reduction="sum"``
gives the paper's value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("binomial_deviance")
class BinomialDevianceLoss(MetricLoss):
    default_distance = "cosine"

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 0.5,
        neg_cost: float = 25.0,
        distance: str | Distance | None = None,
        reduction: str = "sum",
    ) -> None:
        super().__init__(distance, reduction)
        self.require_kind(similarity=True, examples="cosine or dot")
        self.alpha = alpha
        self.beta = beta
        self.neg_cost = neg_cost

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sim, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        shifted = sim - self.beta
        pos_weight = positives / positives.sum().clamp_min(1)
        neg_weight = negatives / negatives.sum().clamp_min(1)
        pos_loss = F.softplus(-self.alpha * shifted) * pos_weight
        neg_loss = F.softplus(self.alpha * self.neg_cost * shifted) * neg_weight
        return self.reduce_pairs(pos_loss + neg_loss, positives | negatives)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, neg_cost={self.neg_cost}"
