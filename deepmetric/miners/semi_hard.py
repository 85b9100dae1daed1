"""Semi-hard negatives (Schroff, Kalenichenko & Philbin 2015, "FaceNet", section 3.2).

A negative ``n`` is semi-hard for the positive pair ``(a, p)`` when it is farther from the anchor than the
positive but still inside the margin::

    d(a, p) < d(a, n) <= d(a, p) + margin

(for a similarity ``s``: ``s(a, p) - margin <= s(a, n) < s(a, p)``). As in TensorFlow Addons'
``triplet_semihard_loss``, each positive pair gets the hardest of its semi-hard negatives, the one closest
to the anchor, giving at most one triplet per positive pair. Unlike TF, a pair without a semi-hard
negative is dropped instead of falling back to its easiest hard negative (TF's fallback triplet, or one
with a negative beyond the margin, would add a different kind of triplet or a zero loss). PML's
``TripletMarginMiner(type_of_triplets="semihard")`` returns *all* semi-hard triplets; ours are the
hardest of those per positive pair.

Two exact searches for the hardest semi-hard negative ``argmin {d(a, n) : d(a, n) > d(a, p)}``: with few
positives per anchor (P x K batches) each positive pair scans its anchor's row, ``O(pairs x M)`` time in
chunks of ``N x M`` memory; with many, each anchor's negatives are sorted once and all its positive
distances located with one batched ``searchsorted``, ``O(N M log M)`` time and ``O(N M)`` memory.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import TripletIndices
from deepmetric.miners._mining import rank_within_row
from deepmetric.miners.base import MINERS, Miner


@MINERS.register("semi_hard")
class SemiHardMiner(Miner):
    # Above this many positive pairs per anchor on average, sorting each row beats scanning it per pair.
    scan_limit_per_anchor = 8

    def __init__(self, margin: float = 0.2, distance: str | Distance | None = None) -> None:
        super().__init__(distance)
        if margin <= 0:
            raise ValueError(f"margin must be positive for semi-hard mining, got {margin}")
        self.margin = float(margin)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> TripletIndices:
        far, positives, negatives = self.pair_farness(embeddings, labels, ref_embeddings, ref_labels)
        anchor, positive = positives.nonzero(as_tuple=True)
        positive_far = far[anchor, positive]
        search = self._scan if len(anchor) <= self.scan_limit_per_anchor * len(far) else self._sorted_search
        negative_far, negative = search(far, negatives, anchor, positive_far)
        # No farther negative leaves an infinite gap, which never fits the margin.
        keep = negative_far - positive_far <= self.margin
        return anchor[keep], positive[keep], negative[keep]

    @staticmethod
    def _scan(
        far: torch.Tensor, negatives: torch.Tensor, anchor: torch.Tensor, positive_far: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Closest negative strictly farther than each positive (inf where none), one row per pair."""
        chunk = len(far)  # pairs per step: an N x M block
        nearest = [
            far[a].masked_fill(~(negatives[a] & (far[a] > threshold[:, None])), torch.inf).min(dim=1)
            for a, threshold in zip(anchor.split(chunk), positive_far.split(chunk))
        ]
        return torch.cat([n.values for n in nearest]), torch.cat([n.indices for n in nearest])

    @staticmethod
    def _sorted_search(
        far: torch.Tensor, negatives: torch.Tensor, anchor: torch.Tensor, positive_far: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as :meth:`_scan` through each anchor's sorted negatives."""
        sorted_far, order = far.masked_fill(~negatives, torch.inf).sort(dim=1)
        slot, pairs_per_anchor = rank_within_row(anchor, len(far))
        queries = torch.zeros(len(far), int(pairs_per_anchor.max()), dtype=far.dtype, device=far.device)
        queries[anchor, slot] = positive_far
        # First negative strictly farther (non-negatives sort last as inf and are excluded below).
        position = torch.searchsorted(sorted_far, queries, right=True)[anchor, slot]
        found = position < negatives.sum(dim=1)[anchor]
        position = position.clamp_max(far.shape[1] - 1)
        negative_far = torch.where(found, sorted_far[anchor, position], torch.inf)
        return negative_far, order[anchor, position]

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
