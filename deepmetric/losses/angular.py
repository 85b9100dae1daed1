"""Angular loss (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss", ICCV 2017, eq. 8).

N-pair form on L2-normalised embeddings, for every positive pair (a, p) with the negatives n of a:

    f_apn = 4 tan²α (x_a + x_p)ᵀ x_n - 2 (1 + tan²α) x_aᵀ x_p
    L_ap  = log(1 + Σ_{n ∈ N(a)} exp(f_apn))            L = mean over the positive pairs

with α in degrees (40 by default; the paper uses 36°–55°). Every positive pair of the batch (or the mined
ones) is used, which on an N-pair batch is the paper's sum over anchors. The inner products come from the
similarity (cosine by default, i.e. normalised embeddings); a Euclidean distance is refused.
"""

from __future__ import annotations

import math

import torch

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import masked_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("angular")
class AngularLoss(MetricLoss):
    default_distance = "cosine"

    def __init__(
        self, alpha: float = 40.0, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__(distance, reduction)
        self.require_kind(similarity=True, examples="cosine or dot")
        if not 0 < alpha < 90:
            raise ValueError(f"alpha is an angle in degrees in (0, 90), got {alpha}")
        self.alpha = alpha

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        positives, negatives = self.masks(labels, indices, ref_labels)
        anchor, positive = positives.nonzero(as_tuple=True)
        sim = self.distance(embeddings, ref_embeddings)
        # x_p . x_n needs the reference set against itself; without one it is the batch matrix.
        ref_sim = sim if ref_embeddings is None else self.distance(ref_embeddings)
        tan_sq = math.tan(math.radians(self.alpha)) ** 2
        exponent = 4 * tan_sq * (sim[anchor] + ref_sim[positive])
        exponent = exponent - (2 * (1 + tan_sq)) * sim[anchor, positive, None]
        return masked_logsumexp(exponent, negatives[anchor], dim=1, add_one=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
