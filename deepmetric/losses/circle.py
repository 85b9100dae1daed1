"""Circle loss, pair form (Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, "Circle Loss: A Unified
Perspective of Pair Similarity Optimization", CVPR 2020, eq. 4 with the settings of §3.3).

For each anchor with positive similarities s_p and negative similarities s_n (cosine):

    L = log(1 + Σ_j exp(γ α_n^j (s_n^j - Δ_n)) · Σ_i exp(-γ α_p^i (s_p^i - Δ_p)))
    α_p = [1 + m - s_p]_+ ,  α_n = [s_n + m]_+ ,  Δ_p = 1 - m ,  Δ_n = m

with m = 0.25 and γ = 256 (the paper's face-recognition setting; it uses γ = 80, m = 0.4 for fine-grained
retrieval). The weights α are treated as constants (no gradient through them), as in the paper. Anchors
with no positive or no negative are left out; the loss is the mean over the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import anchor_logsumexps
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("circle")
class CircleLoss(MetricLoss):
    default_distance = "cosine"

    def __init__(
        self,
        m: float = 0.25,
        gamma: float = 256.0,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(distance, reduction)
        self.require_kind(similarity=True, examples="cosine or dot")
        self.m = m
        self.gamma = gamma

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sim, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        detached = sim.detach()
        pos_logits = -self.gamma * (1 + self.m - detached).clamp_min(0) * (sim - (1 - self.m))
        neg_logits = self.gamma * (detached + self.m).clamp_min(0) * (sim - self.m)
        pos_lse, neg_lse = anchor_logsumexps(pos_logits, neg_logits, positives, negatives)
        return F.softplus(pos_lse + neg_lse)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}"
