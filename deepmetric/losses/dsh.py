"""DSH: Deep Supervised Hashing for Fast Image Retrieval (Liu, Wang, Shan & Chen, CVPR 2016).

For a pair of relaxed codes with ``y = 0`` when similar and ``y = 1`` when dissimilar:

    L(b1, b2, y) = 1/2 (1 - y) ||b1 - b2||^2 + 1/2 y max(m - ||b1 - b2||^2, 0)
                   + alpha (|| |b1| - 1 ||_1 + || |b2| - 1 ||_1)

averaged over all pairs ``i != j`` of the batch (or the mined pairs); ``m = 2K`` by default (the paper's
choice), the last term the paper's regulariser that draws each unit to ±1.
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("dsh")
class DSHLoss(MetricLoss):
    default_distance = "squared_euclidean"

    def __init__(self, margin: float | None = None, alpha: float = 0.01, reduction: str = "mean") -> None:
        super().__init__(distance="squared_euclidean", reduction=reduction)
        if margin is not None and margin <= 0:
            raise ValueError(f"margin must be positive (or None for 2 * bits), got {margin}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.margin = margin
        self.alpha = alpha

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        margin = 2.0 * embeddings.shape[1] if self.margin is None else self.margin
        ref = embeddings if ref_embeddings is None else ref_embeddings
        squared = self.distance(embeddings, ref)
        regulariser = self.alpha * (
            (embeddings.abs() - 1).abs().sum(1)[:, None] + (ref.abs() - 1).abs().sum(1)[None, :]
        )
        positives, negatives = self.masks(labels, indices, ref_labels)
        return torch.cat(
            [
                0.5 * squared[positives] + regulariser[positives],
                0.5 * (margin - squared[negatives]).clamp_min(0) + regulariser[negatives],
            ]
        )
