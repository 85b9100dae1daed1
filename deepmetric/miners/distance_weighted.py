"""Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling Matters in Deep
Embedding Learning", section 4).

On the unit hypersphere in ``n`` dimensions, pairwise distances of random points follow
``q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2)``. Sampling negatives with weights ``q(d)^-1`` spreads them over
all distances instead of concentrating them near sqrt(2). As in the paper, distances are clipped below
at ``cutoff`` (0.5: bounds the weight of very close negatives, which give noisy gradients) and negatives
at distance ``nonzero_loss_cutoff`` (1.4) or more get weight 0 (a margin loss would ignore them).

Weights are computed as logs, ``log w = (2 - n) log d - ((n - 3)/2) log(1 - d^2/4)``, minus each anchor's
largest log-weight before exponentiating: for ``n`` in the hundreds ``q(d)^-1`` spans hundreds of orders
of magnitude, and a per-anchor shift keeps every anchor's own weights representable.

As in the paper's code, every positive pair ``(a, p)`` gets one negative drawn from ``a``'s weights
(independently, with replacement), giving triplets; a margin loss uses their ``(a, p)`` and ``(a, n)``
pairs. Anchors whose negatives all lie beyond ``nonzero_loss_cutoff`` give no triplet (the paper's code
falls back to uniform sampling there, which only adds zero-loss pairs; PML skips them too). PML's
``DistanceWeightedMiner`` instead draws random positives per anchor and subtracts one global maximum.

The distance must be euclidean on L2-normalised embeddings (the default). Draws come from the miner's own
generator, seeded by ``seed``.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance, EuclideanDistance
from deepmetric.masks import TripletIndices, pair_masks
from deepmetric.miners._mining import sample_columns
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("distance_weighted")
class DistanceWeightedMiner(Miner):
    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        seed: int = 0,
        distance: str | Distance | None = None,
    ) -> None:
        super().__init__(EuclideanDistance(normalize_embeddings=True) if distance is None else distance)
        if type(self.distance) is not EuclideanDistance or not self.distance.normalize_embeddings:
            raise ValueError(
                "distance_weighted needs the euclidean distance on normalised embeddings "
                "(its weights are for points on the unit hypersphere)"
            )
        if not 0 < cutoff < nonzero_loss_cutoff <= 2:
            raise ValueError(
                f"need 0 < cutoff < nonzero_loss_cutoff <= 2 (distances on the unit sphere), "
                f"got cutoff={cutoff}, nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.generator = torch.Generator().manual_seed(seed)

    def negative_weights(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``N x M`` sampling weights of each anchor's negatives, each row scaled so its largest is 1."""
        _, negatives = pair_masks(labels, ref_labels)
        distances = self.distance.pairwise(embeddings, ref_embeddings)
        allowed = negatives & (distances < self.nonzero_loss_cutoff)
        clipped = distances.clamp(min=self.cutoff, max=self.nonzero_loss_cutoff)
        dim = embeddings.shape[1]
        log_weights = (2.0 - dim) * clipped.log() - ((dim - 3.0) / 2.0) * torch.log1p(-0.25 * clipped**2)
        log_weights = log_weights.masked_fill(~allowed, -torch.inf)
        row_max = log_weights.amax(dim=1, keepdim=True)
        return torch.where(allowed, (log_weights - row_max).exp(), torch.zeros_like(log_weights))

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        weights = self.negative_weights(embeddings, labels, ref_embeddings, ref_labels)
        positives, _ = pair_masks(labels, ref_labels)
        anchor, positive = positives.nonzero(as_tuple=True)
        negative, valid = sample_columns(weights, anchor, self.generator)
        return anchor[valid], positive[valid], negative[valid]

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}"
