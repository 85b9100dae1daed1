"""The contract every miner follows.

``miner(embeddings, labels, ref_embeddings=None, ref_labels=None) -> indices``

Pair miners return ``(anchor_p, positive, anchor_n, negative)``, triplet miners ``(anchor, positive,
negative)``: 1-D long tensors that any loss accepts as ``indices``. Positives and negatives index the
reference set when one is given. Mining never needs gradients, so it runs under ``torch.no_grad``.
Miners that rank pairs start from :meth:`Miner.pair_farness` (one "larger is farther" matrix with the pair
masks).
"""

from __future__ import annotations

import torch

from deepmetric.checks import check_pair
from deepmetric.distances import Distance, get_distance
from deepmetric.masks import PairIndices, TripletIndices, pair_masks
from deepmetric.miners._mining import farness
from deepmetric.registry import Registry

MINERS = Registry("miner")


class Miner(torch.nn.Module):
    default_distance = "euclidean"

    def __init__(self, distance: str | Distance | None = None) -> None:
        super().__init__()
        self.distance = get_distance(distance, default=self.default_distance)

    @torch.no_grad()
    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> PairIndices | TripletIndices:
        labels = torch.as_tensor(labels, device=embeddings.device)
        if ref_labels is not None:
            ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
        check_pair(embeddings, labels, ref_embeddings, ref_labels)
        return self.mine(embeddings.detach(), labels, ref_embeddings, ref_labels)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> PairIndices | TripletIndices:
        raise NotImplementedError

    def pair_farness(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(far, positives, negatives)``: :func:`~deepmetric.miners._mining.farness` of every sample to
        every reference sample (the batch itself without ``ref_embeddings``) with the pair masks."""
        return farness(self.distance, embeddings, ref_embeddings), *pair_masks(labels, ref_labels)
