"""Batch hard (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person Re-Identification").

One triplet per anchor: its farthest positive and its closest negative,
``(a, argmax_{p: y_p = y_a} d(a, p), argmin_{n: y_n != y_a} d(a, n))``
(least / most similar under a similarity). Anchors lacking a positive or a negative give no triplet.
Same as PML's ``BatchHardMiner``.
"""

from __future__ import annotations

import torch

from deepmetric.masks import TripletIndices
from deepmetric.miners._mining import masked_argmax, masked_argmin
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("batch_hard")
class BatchHardMiner(Miner):
    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        far, positives, negatives = self.pair_farness(embeddings, labels, ref_embeddings, ref_labels)
        hardest_positive, has_positive = masked_argmax(far, positives)
        hardest_negative, has_negative = masked_argmin(far, negatives)
        anchor = (has_positive & has_negative).nonzero(as_tuple=True)[0]
        return anchor, hardest_positive[anchor], hardest_negative[anchor]
