"""DSH: Deep Supervised Hashing for Fast Image Retrieval (Liu, Wang, Shan & Chen, CVPR 2016).

For a pair of relaxed codes with ``y = 0`` when similar and ``y = 1`` when dissimilar:

    L(b1, b2, y) = 1/2 (1 - y) ||b1 - b2||^2 + 1/2 y max(m - ||b1 - b2||^2, 0)
                   + alpha (|| |b1| - 1 ||_1 + || |b2| - 1 ||_1)

averaged over all pairs ``i != j`` of the batch (or the mined pairs), the last term the paper's regulariser
that draws each unit to ±1.

Defaults: ``m = K / 64`` and ``alpha = 0``, not the paper's ``m = 2K`` and ``alpha = 0.01``: the paper's
network ends in a linear layer, ours in tanh (codes already in (-1, 1)). On tanh codes a margin of half the
largest squared distance ``4K`` and the pull to ±1 saturate the units, which fits binary corners to the
training classes and loses the unseen ones (the demo: Recall@1 0.887 untrained, 0.606 trained with the
paper's values, 0.904 with these; ``K / 16`` fails on other seeds; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("dsh")
class DSHLoss(MetricLoss):
    default_distance = "squared_euclidean"

    def __init__(self, margin: float | None = None, alpha: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(distance="squared_euclidean", reduction=reduction)
        if margin is not None and margin <= 0:
            raise ValueError(f"margin must be positive (or None for bits / 64), got {margin}")
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
        margin = embeddings.shape[1] / 64 if self.margin is None else self.margin
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
