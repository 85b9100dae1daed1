"""Hardest negative: every anchor-positive pair with the closest negative of its anchor.

For each positive pair ``(a, p)`` the triplet ``(a, p, argmin_n d(a, n))`` over the negatives ``n`` of
``a`` (the most similar negative under a similarity). Anchors without a negative give no triplet. This is
the "batch all positives, hardest negative" scheme (e.g. Schroff et al. 2015 note that hardest negatives
alone can collapse training; pair it with a margin or use ``semi_hard``). PML: ``BatchEasyHardMiner(
pos_strategy="all", neg_strategy="hard")`` gives the same triplets as pairs.
"""

from __future__ import annotations

import torch

from deepmetric.masks import TripletIndices
from deepmetric.miners._mining import masked_argmin
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("hardest_negative")
class HardestNegativeMiner(Miner):
    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        far, positives, negatives = self.pair_farness(embeddings, labels, ref_embeddings, ref_labels)
        hardest, has_negative = masked_argmin(far, negatives)
        anchor, positive = (positives & has_negative[:, None]).nonzero(as_tuple=True)
        return anchor, positive, hardest[anchor]
