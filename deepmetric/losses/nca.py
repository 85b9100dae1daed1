"""Neighbourhood Components Analysis (NCA) — Goldberger et al., "Neighbourhood Components Analysis",
NIPS 2005.

Each sample picks a neighbour ``j != i`` with probability given by a softmax over negative squared
distances, scaled by ``s``; the loss is the negative log-probability of picking a same-class neighbour::

    p_ij = exp(-s d(x_i, x_j)) / sum_{k != i} exp(-s d(x_i, x_k)),   d = ||x_i - x_j||^2
    L_i  = -log sum_{j in P(i)} p_ij

Default distance: squared Euclidean on the raw embeddings (the paper's; PML's NCALoss normalises the
embeddings first — pass ``SquaredEuclideanDistance(normalize_embeddings=True)`` for that). With a
similarity the logits are ``s * sim``. Per-element losses are per sample with at least one positive.
Multi-label data, a reference set (``j`` runs over it) and mined pairs (only mined pairs enter the sums)
come through the shared pair masks.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import masked_logsumexp, row_logsumexp, similarity_logits
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("nca")
class NCALoss(MetricLoss):
    default_distance = "squared_euclidean"

    def __init__(
        self, scale: float = 1.0, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        super().__init__(distance=distance, reduction=reduction)
        self.scale = scale

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = self.scale * similarity_logits(self.distance, embeddings, ref_embeddings)
        positive, negative = self.masks(labels, indices, ref_labels)
        # Positives are few per row (K - 1 in a P x K batch): their log-sum-exp runs over those entries only.
        rows, cols = positive.nonzero(as_tuple=True)
        positive_lse = row_logsumexp(logits[rows, cols], rows, logits.shape[0])
        has_positive = positive.any(1)
        losses = masked_logsumexp(logits, positive | negative, dim=1) - positive_lse
        return losses[has_positive]

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
