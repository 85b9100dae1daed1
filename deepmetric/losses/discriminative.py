"""Discriminative loss (Do, Tran, Reid, Kumar, Hoang & Carneiro, "A Theoretically Sound Upper Bound on the
Triplet Loss for Improving the Efficiency of Deep Distance Metric Learning", CVPR 2019).

The triplet loss is bounded from above by a loss that is linear in the number of samples, through class
centroids c_1..c_C that stay fixed during training (so no centroid optimisation step is needed):

    L(i) = ||x_i - c_{y_i}||² - 1 / (2 (C - 1)) Σ_{m ≠ y_i} ||x_i - c_m||²          L = mean_i L(i)

(pull each sample to its class centroid, push it from the others; the ½ keeps the quadratic in x_i
convex, so the loss is bounded below). The centroids are fixed and mutually equidistant: the unit vectors
e_1..e_C when C ≤ ``embedding_size``, otherwise seeded random unit vectors. Needs 1-D class ids below
``num_classes``; it compares samples with centroids only, so it takes neither mined indices nor a
reference set. The squared Euclidean distance is the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


def fixed_centroids(num_classes: int, embedding_size: int, seed: int = 0) -> torch.Tensor:
    """Equidistant unit centroids when possible (one-hot), else seeded random unit vectors."""
    if num_classes <= embedding_size:
        return torch.eye(num_classes, embedding_size)
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, embedding_size, generator=gen), dim=1)


@LOSSES.register("discriminative")
class DiscriminativeLoss(MetricLoss):
    default_distance = "squared_euclidean"
    supports_multilabel = False

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(distance, reduction)
        if num_classes < 2:
            raise ValueError(f"discriminative loss needs num_classes >= 2, got {num_classes}")
        self.require_kind(similarity=False, examples="squared_euclidean")
        self.num_classes = num_classes
        self.register_buffer("centroids", fixed_centroids(num_classes, embedding_size))

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if indices is not None or ref_embeddings is not None:
            raise ValueError(
                "discriminative loss compares samples with fixed centroids; it takes no indices nor ref set"
            )
        if embeddings.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]}, "
                f"but embedding_size is {self.centroids.shape[1]}"
            )
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class ids in [0, num_classes={self.num_classes})")
        dist = self.distance(embeddings, self.centroids.to(embeddings.dtype))
        own = dist.gather(1, labels[:, None]).squeeze(1)
        others = dist.sum(1) - own
        return own - others / (2 * (self.num_classes - 1))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
