"""All triplets: every ``(a, p, n)`` with ``p`` a positive and ``n`` a negative of anchor ``a``.

Enumerated without the ``N x M x M`` triplet mask other libraries build: anchor ``a`` contributes each of
its positives repeated once per negative, and the negatives are read from one list of negative pairs
grouped by anchor. Memory is that of the output (the number of triplets) plus ``O(N M)``. Triplets come
ordered by anchor, then positive, then negative.
"""

from __future__ import annotations

import torch

from deepmetric.masks import TripletIndices, pair_masks
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("all_triplets")
class AllTripletsMiner(Miner):
    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        positives, negatives = pair_masks(labels, ref_labels)
        pos_anchor, positive = positives.nonzero(as_tuple=True)
        negative = negatives.nonzero(as_tuple=True)[1]  # grouped by anchor, in row-major order
        negatives_per_anchor = negatives.sum(dim=1)
        first_negative = negatives_per_anchor.cumsum(0) - negatives_per_anchor
        repeats = negatives_per_anchor[pos_anchor]
        anchor = pos_anchor.repeat_interleave(repeats)
        positive = positive.repeat_interleave(repeats)
        # Position of each triplet within its (a, p) block: 0 .. (negatives of a) - 1.
        block_start = (repeats.cumsum(0) - repeats).repeat_interleave(repeats)
        offset = torch.arange(len(anchor), device=anchor.device) - block_start
        return anchor, positive, negative[first_negative[anchor] + offset]
