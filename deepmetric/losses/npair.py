"""Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
NeurIPS 2016, eq. 6) with its optional L2 regularisation of the embeddings.

Given N pairs (f_i, f_i⁺) from N different classes:

    L_i = log(1 + Σ_{j ≠ i} exp(f_iᵀ f_j⁺ - f_iᵀ f_i⁺))  =  cross-entropy of softmax_j(f_iᵀ f_j⁺) at j = i
    L   = 1/N Σ_i L_i + λ/(4N) Σ_i (||f_i||² + ||f_i⁺||²)          (λ = ``l2_reg_weight``, 0 by default)

(the ¼ scaling of the regulariser is the one of the reference TensorFlow ``npairs_loss``).

Pairs from a P x K batch, chosen deterministically: for every class, the anchor is its first sample (in
batch order) that has a positive, and the positive is that anchor's first positive (its next sample of the
class, or the first one of the reference set). With mined ``indices`` only mined positive pairs are
candidates, chosen by the same rule. Needs 1-D class labels; the inner product is the default similarity
(with a distance, logits are ``-D``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices


def _first_of_each_class(
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(classes, first, counts, order)``: sorted classes, the position in ``labels[order]`` where each starts,
    its number of samples, and the stable sort order (so the first position of a class is its first sample in
    batch order)."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    return classes, counts.cumsum(0).sub_(counts), counts, order


@LOSSES.register("npair")
class NPairLoss(MetricLoss):
    default_distance = "dot"
    supports_multilabel = False

    def __init__(
        self, l2_reg_weight: float = 0.0, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__(distance, reduction)
        self.l2_reg_weight = l2_reg_weight

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if indices is None:
            anchor, positive = self.first_pairs(labels, ref_labels)
        else:
            anchor, positive = self.one_pair_per_class(labels, self.masks(labels, indices, ref_labels)[0])
        if anchor.numel() == 0:
            return embeddings.new_zeros(0)
        if ref_embeddings is None:  # one gather (and one scatter in the backward pass) for both sides
            anchors, pairs = embeddings[torch.cat((anchor, positive))].split(len(anchor))
        else:
            anchors, pairs = embeddings[anchor], ref_embeddings[positive]
        logits = self.distance(anchors, pairs)
        if not self.distance.is_similarity:
            logits = -logits
        targets = torch.arange(len(anchor), device=logits.device)
        if self.reduction in ("mean", "sum") and not self.l2_reg_weight:
            # Reduced by cross_entropy itself: the shared reducer passes the scalar through unchanged.
            return F.cross_entropy(logits, targets, reduction=self.reduction)
        losses = F.cross_entropy(logits, targets, reduction="none")
        if self.l2_reg_weight:
            losses = losses + self.l2_reg_weight / 4 * (anchors.square().sum(1) + pairs.square().sum(1))
        return losses

    @staticmethod
    def first_pairs(
        labels: torch.Tensor, ref_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same rule as :meth:`one_pair_per_class` for all pairs, from a stable sort of the labels
        (no ``B x B`` mask): per class its first sample and, as positive, its second sample (or the first
        sample of the class in the reference set)."""
        classes, firsts, counts, order = _first_of_each_class(labels)
        if ref_labels is None:
            firsts = firsts[counts > 1]
            return order[firsts], order[firsts + 1]
        ref_classes, ref_firsts, _, ref_order = _first_of_each_class(ref_labels)
        slot = torch.searchsorted(ref_classes, classes).clamp_max(len(ref_classes) - 1)
        shared = ref_classes[slot] == classes
        return order[firsts[shared]], ref_order[ref_firsts[slot[shared]]]

    @staticmethod
    def one_pair_per_class(
        labels: torch.Tensor, positives: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(anchor, positive)``: per class, the first row with a positive and that row's first positive."""
        rows = positives.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return rows, rows
        classes, inverse = torch.unique(labels[rows], return_inverse=True)
        first = torch.full((len(classes),), len(labels), dtype=rows.dtype, device=rows.device)
        anchor = first.scatter_reduce(0, inverse, rows, reduce="amin")
        # argmax returns the first maximal entry, i.e. the first positive column.
        positive = positives[anchor].to(torch.uint8).argmax(1)
        return anchor, positive

    def extra_repr(self) -> str:
        return f"l2_reg_weight={self.l2_reg_weight}"
