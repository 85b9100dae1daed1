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


def _weighted_mean(values: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, Σ w v / Σ w over the masked entries with w = exp(scores) (constant); 0 for an empty row."""
    filled = scores.detach().masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=1) * mask
    return (weights * values).sum(1)


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
        dist, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        pos_excess = dist - (self.alpha - self.margin)
        neg_excess = self.alpha - dist
        hard_pos = positives & (pos_excess > 0)
        hard_neg = negatives & (neg_excess > 0)
        pos_loss = _weighted_mean(pos_excess, self.pos_temperature * pos_excess, hard_pos)
        neg_loss = _weighted_mean(neg_excess, self.temperature * neg_excess, hard_neg)
        return (1 - self.imbalance) * pos_loss + self.imbalance * neg_loss

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, alpha={self.alpha}, temperature={self.temperature}, "
            f"pos_temperature={self.pos_temperature}, imbalance={self.imbalance}"
        )
