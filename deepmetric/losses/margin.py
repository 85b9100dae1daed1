"""Margin-based loss (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep Embedding Learning",
ICCV 2017, eqs. 4-5).

For every positive (y_ij = +1) and negative (y_ij = -1) pair, with the Euclidean distance D:

    ℓ(i, j) = [α + y_ij (D_ij - β_i)]_+
    L = 1/|{ℓ > 0}| Σ_{(i,j)} ℓ(i, j)  +  ν · mean_{(i,j)} β_i

α = ``margin`` = 0.2 is the margin around the boundary β (1.2 at the start). β is learnable by default
(``learn_beta``): one global value, or one per class when ``num_classes`` is given (β_i = β_{class of i},
a module parameter, so labels must be class ids below ``num_classes``). ν = ``nu`` regularises β (the
paper's β-regulariser; 0 by default). The paper normalises the sum by the number of non-zero pair losses,
the default ``mean_nonzero`` reduction; the regulariser is added after the reduction and left out by
``reduction="none"``, which returns the per-pair losses.

The pairs are all pairs of the batch or the mined ones: the paper's distance-weighted sampling is a
miner; pass its pairs or triplets as ``indices``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices
from deepmetric.reducers import reduce


@LOSSES.register("margin")
class MarginLoss(MetricLoss):
    def __init__(
        self,
        margin: float = 0.2,
        beta: float = 1.2,
        learn_beta: bool = True,
        num_classes: int | None = None,
        nu: float = 0.0,
        distance: str | Distance | None = None,
        reduction: str = "mean_nonzero",
    ) -> None:
        super().__init__(distance, reduction)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.margin = margin
        self.nu = nu
        self.num_classes = num_classes
        self.supports_multilabel = num_classes is None
        initial = torch.full((num_classes or 1,), float(beta))
        if learn_beta:
            self.beta = torch.nn.Parameter(initial)
        else:
            self.register_buffer("beta", initial)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        dist, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        beta = self.row_beta(labels).to(dist.dtype)[:, None]
        pos_loss = F.relu(self.margin + self.distance.closer_by(beta, dist))
        neg_loss = F.relu(self.margin + self.distance.closer_by(dist, beta))
        losses = self.reduce_pairs(pos_loss * positives + neg_loss * negatives, positives | negatives)
        if self.reduction == "none" or not self.nu:
            return losses
        pairs_per_row = (positives.sum(1) + negatives.sum(1)).to(dist.dtype)
        mean_beta = (beta.squeeze(1) * pairs_per_row).sum() / pairs_per_row.sum().clamp_min(1)
        # Already reduced: the shared reducer passes a scalar through unchanged.
        return reduce(losses, self.reduction, anchor=embeddings) + self.nu * mean_beta

    def row_beta(self, labels: torch.Tensor) -> torch.Tensor:
        """β for every row of the batch: the global value, or the value of the row's class."""
        if self.num_classes is None:
            return self.beta.expand(labels.shape[0])
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"labels must be class ids in [0, num_classes={self.num_classes}) for per-class beta, "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return self.beta[labels]

    def extra_repr(self) -> str:
        return f"margin={self.margin}, nu={self.nu}, num_classes={self.num_classes}"
