"""Multi-similarity loss (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019, eq. 12).

For each anchor i with positive set P_i and negative set N_i (cosine similarity S by default):

    L_i = 1/α log(1 + Σ_{k ∈ P_i} exp(-α (S_ik - λ))) + 1/β log(1 + Σ_{k ∈ N_i} exp(β (S_ik - λ)))

with α = 2, β = 50, λ = ``base`` = 0.5; the loss is the mean over the anchors of the batch. An empty set
contributes log(1) = 0. The MS pair mining step of the paper is a separate miner: pass its pairs as
``indices``. With a distance instead of a similarity the differences flip sign (``D - λ`` for positives).
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import masked_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("multi_similarity")
class MultiSimilarityLoss(MetricLoss):
    default_distance = "cosine"

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(distance, reduction)
        self.alpha = alpha
        self.beta = beta
        self.base = base

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sim, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        pos_exponent = self.alpha * self.distance.closer_by(self.base, sim)
        neg_exponent = self.beta * self.distance.closer_by(sim, self.base)
        pos_loss = masked_logsumexp(pos_exponent, positives, dim=1, add_one=True) / self.alpha
        neg_loss = masked_logsumexp(neg_exponent, negatives, dim=1, add_one=True) / self.beta
        return pos_loss + neg_loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}"
