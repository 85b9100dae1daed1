"""Multi-similarity pair mining (Wang et al. 2019, "Multi-Similarity Loss with General Pair Weighting
for Deep Metric Learning", section 5.1).

With cosine similarities ``S`` and ``epsilon`` (0.1 in the paper), for anchor ``i``:

- a negative pair ``(i, j)`` is kept when ``S_ij + epsilon > min_{k: y_k = y_i} S_ik``
  (it is more similar than the hardest positive, up to epsilon);
- a positive pair ``(i, j)`` is kept when ``S_ij - epsilon < max_{k: y_k != y_i} S_ik``
  (it is less similar than the hardest negative, up to epsilon).

An anchor without positives or without negatives keeps nothing. For a distance ``d`` the same rule reads
``d_ij - epsilon < max d(positives)`` for negatives and ``d_ij + epsilon > min d(negatives)`` for
positives. Same pairs as PML's ``MultiSimilarityMiner``.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import PairIndices
from deepmetric.miners._mining import mask_pairs
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("multi_similarity")
class MultiSimilarityMiner(Miner):
    default_distance = "cosine"

    def __init__(self, epsilon: float = 0.1, distance: str | Distance | None = None) -> None:
        super().__init__(distance)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> PairIndices:
        far, positives, negatives = self.pair_farness(embeddings, labels, ref_embeddings, ref_labels)
        # Rows without positives (negatives) give -inf (+inf), so nothing passes the comparisons below.
        hardest_positive = far.masked_fill(~positives, -torch.inf).amax(dim=1, keepdim=True)
        hardest_negative = far.masked_fill(~negatives, torch.inf).amin(dim=1, keepdim=True)
        negatives &= far - self.epsilon < hardest_positive
        positives &= far + self.epsilon > hardest_negative
        return mask_pairs(positives, negatives)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"
