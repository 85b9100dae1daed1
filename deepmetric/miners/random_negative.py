"""Random negative: every anchor-positive pair with a negative of its anchor drawn uniformly at random.

For each positive pair ``(a, p)`` one negative ``n`` of ``a``, independently and uniformly (so two pairs
of one anchor may draw the same negative). Anchors without a negative give no triplet. The draws come
from the miner's own generator, seeded by ``seed``: a fixed seed gives the same sequence of draws on any
device; the stream advances with every call.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import TripletIndices, pair_masks
from deepmetric.miners._mining import sample_columns
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("random_negative")
class RandomNegativeMiner(Miner):
    def __init__(self, seed: int = 0, distance: str | Distance | None = None) -> None:
        super().__init__(distance)
        self.generator = torch.Generator().manual_seed(seed)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        positives, negatives = pair_masks(labels, ref_labels)
        anchor, positive = positives.nonzero(as_tuple=True)
        negative, valid = sample_columns(negatives, anchor, self.generator)
        return anchor[valid], positive[valid], negative[valid]
