"""Pair margin: the pairs a contrastive loss with these margins would penalise.

Positive pairs farther apart than ``pos_margin`` and negative pairs closer than ``neg_margin``
(Hadsell, Chopra & LeCun 2006 contrastive loss; PML's ``PairMarginMiner``). Margins are in the units of
the distance: for a similarity, positives with similarity below ``pos_margin`` and negatives above
``neg_margin``. Boundary values are not mined (strict inequalities, as in PML).
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import PairIndices, pair_masks
from deepmetric.miners._mining import mask_pairs
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("pair_margin")
class PairMarginMiner(Miner):
    def __init__(
        self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: str | Distance | None = None
    ) -> None:
        super().__init__(distance)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> PairIndices:
        positives, negatives = pair_masks(labels, ref_labels)
        matrix = self.distance.pairwise(embeddings, ref_embeddings)
        # closer_by(x, margin) > 0: the pair is closer than the margin (for distances and similarities).
        positives &= self.distance.closer_by(matrix, torch.tensor(self.pos_margin, dtype=matrix.dtype)) < 0
        negatives &= self.distance.closer_by(matrix, torch.tensor(self.neg_margin, dtype=matrix.dtype)) > 0
        return mask_pairs(positives, negatives)

    def extra_repr(self) -> str:
        return f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}"
