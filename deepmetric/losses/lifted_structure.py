"""Lifted structured loss (Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted Structured
Feature Embedding", CVPR 2016) and its generalized form (Hermans, Beyer & Leibe 2017, §2).

Original (``generalized=False``), one term per positive pair (i, j), the hard negative max softened by
log-sum-exp as in the paper (eq. 4):

    J_ij = log( Σ_{k ∈ N(i)} exp(α - D_ik) + Σ_{l ∈ N(j)} exp(α - D_jl) ) + D_ij - m_pos
    L    = 1 / (2|P|) Σ_{(i,j) ∈ P} [J_ij]_+²                    (α = ``neg_margin``, 1.0 by default)

``P`` holds ordered pairs, so each unordered pair counts twice, hence the ½. ``N(j)`` are the batch samples
that are negatives of ``j`` (column ``j`` of the negative mask — the same as row ``j`` when the batch is
compared with itself, and still defined when ``j`` lives in a separate reference set).

Generalized (``generalized=True``), one term per anchor a with positives and negatives:

    L_a = [ log Σ_{p ∈ P(a)} exp(D_ap - m_pos) + log Σ_{n ∈ N(a)} exp(α - D_an) ]_+

For similarities the differences flip sign (``S - α`` for negatives, ``m_pos - S`` for positives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import anchor_logsumexps, masked_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("lifted_structure")
class LiftedStructureLoss(MetricLoss):
    def __init__(
        self,
        neg_margin: float = 1.0,
        pos_margin: float = 0.0,
        generalized: bool = False,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(distance, reduction)
        self.neg_margin = neg_margin
        self.pos_margin = pos_margin
        self.generalized = generalized

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        dist, positives, negatives = self.pair_matrix(embeddings, labels, indices, ref_embeddings, ref_labels)
        pos_term = self.distance.closer_by(self.pos_margin, dist)
        neg_term = self.distance.closer_by(dist, self.neg_margin)
        if self.generalized:
            pos_lse, neg_lse = anchor_logsumexps(pos_term, neg_term, positives, negatives)
            return F.relu(pos_lse + neg_lse)
        anchor, positive = positives.nonzero(as_tuple=True)
        if anchor.numel() == 0 or not negatives.any():
            return dist.new_zeros(0)
        # An empty negative set gives -inf; clamping it to the most negative finite value keeps the
        # logaddexp gradient finite (and zero through the clamp) when both sets of a pair are empty.
        lowest = torch.finfo(dist.dtype).min
        row_neg = masked_logsumexp(neg_term, negatives, dim=1).clamp_min(lowest)
        col_neg = masked_logsumexp(neg_term, negatives, dim=0).clamp_min(lowest)
        lifted = torch.logaddexp(row_neg[anchor], col_neg[positive]) + pos_term[anchor, positive]
        return F.relu(lifted).square() / 2

    def extra_repr(self) -> str:
        return f"neg_margin={self.neg_margin}, pos_margin={self.pos_margin}, generalized={self.generalized}"
