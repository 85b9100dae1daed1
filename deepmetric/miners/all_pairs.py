"""All pairs: every positive and every negative pair of the batch, unfiltered.

Positives share a label (1-D ids, or at least one label of a multi-hot row); a sample is never paired
with itself unless a separate reference set is given. The baseline that contrastive losses use when no
miner is set, as an explicit miner.
"""

from __future__ import annotations

import torch

from deepmetric.masks import PairIndices, pair_masks
from deepmetric.miners._mining import mask_pairs
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("all_pairs")
class AllPairsMiner(Miner):
    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> PairIndices:
        positives, negatives = pair_masks(labels, ref_labels)
        return mask_pairs(positives, negatives)
