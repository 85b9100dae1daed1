"""Neighbourhood Components Analysis (NCA) — Goldberger et al., "Neighbourhood Components Analysis",
NIPS 2005.

Each sample picks a neighbour ``j != i`` with probability given by a softmax over negative squared
distances, scaled by ``s``; the loss is the negative log-probability of picking a same-class neighbour::

    p_ij = exp(-s d(x_i, x_j)) / sum_{k != i} exp(-s d(x_i, x_k)),   d = ||x_i - x_j||^2
    L_i  = -log sum_{j in P(i)} p_ij

Default distance: squared Euclidean on the raw embeddings (the paper's; PML's NCALoss normalises the
embeddings first — pass ``SquaredEuclideanDistance(normalize_embeddings=True)`` for that). With a
similarity the logits are ``s * sim``. Per-element losses are per sample with at least one positive.
Multi-label data, a reference set (``j`` runs over it) and mined pairs (only mined pairs enter the sums)
come through the shared pair masks.

The common configuration (squared Euclidean distance, 1-D labels, no miner, no reference set) runs as one
autograd node: the row constant ``||x_i||^2`` cancels in both log-sum-exps, so the logits are
``s (2 x_i.x_j - ||x_j||^2)`` (one matrix product), and with ``G = g_i (softmax_all - softmax_positives)``
the gradient is ``2 s ((G + Gᵀ) X - colsum(G) X)`` (one more).
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance, SquaredEuclideanDistance, symmetrised
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import (
    masked_logsumexp,
    row_logsumexp,
    similarity_logits,
    softmax_logsumexp,
    working_dtype,
)
from deepmetric.masks import PairIndices, TripletIndices


class _SelfNCA(torch.autograd.Function):
    """Per-sample NCA losses of a batch against itself, with squared Euclidean distances, as one node; also
    returns which samples have a positive (the others' losses are 0 and pass no gradient)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, labels: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        squared_norms = (x * x).sum(1)
        logits = torch.addmm(squared_norms.mul_(-scale), x, x.T, alpha=2 * scale)
        # Excluded entries get a huge finite offset (exp gives exactly 0; a row without any stays finite).
        excluded = -torch.finfo(logits.dtype).max / 8
        logits.fill_diagonal_(excluded)
        # Arithmetic masking (a 0/1 float mask and one add) costs a fraction of a boolean torch.where on CPU.
        unrelated = torch.ne(labels.unsqueeze(1), labels.unsqueeze(0), out=torch.empty_like(logits))
        # In the mask's buffer (a fresh N x N tensor costs page faults); the diagonal is already excluded.
        positive_logits = unrelated.mul_(excluded).add_(logits)
        has_positive = positive_logits.amax(1) > excluded / 2
        probs, lse = softmax_logsumexp(logits)
        positive_probs, positive_lse = softmax_logsumexp(positive_logits)
        losses = lse.sub_(positive_lse)
        losses *= has_positive
        ctx.scale = scale
        ctx.save_for_backward(x, probs.sub_(positive_probs), has_positive)
        ctx.mark_non_differentiable(has_positive)
        return losses, has_positive

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        x, prob_difference, has_positive = ctx.saved_tensors
        logit_grad = prob_difference * (grad * has_positive).unsqueeze(1)
        symmetric = symmetrised(logit_grad)
        return (
            torch.addmm(x * logit_grad.sum(0).unsqueeze(1), symmetric, x, beta=-1).mul_(2 * ctx.scale),
            None,
            None,
        )


@LOSSES.register("nca")
class NCALoss(MetricLoss):
    default_distance = "squared_euclidean"

    def __init__(
        self, scale: float = 1.0, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        super().__init__(distance=distance, reduction=reduction)
        self.scale = scale

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if (
            type(self.distance) is SquaredEuclideanDistance
            and indices is None
            and ref_embeddings is None
            and labels.ndim == 1
        ):
            dtype = working_dtype(embeddings)
            losses, has_positive = _SelfNCA.apply(
                self.distance.prepare(embeddings.to(dtype)), labels, self.scale
            )
            # The mean and sum over samples with a positive need no gathering (the others' losses are 0).
            if self.reduction == "mean":
                return losses.sum() / has_positive.sum().clamp_min(1)
            return losses.sum() if self.reduction == "sum" else losses[has_positive]
        logits = self.scale * similarity_logits(self.distance, embeddings, ref_embeddings)
        positive, negative = self.masks(labels, indices, ref_labels)
        # Positives are few per row (K - 1 in a P x K batch): their log-sum-exp runs over those entries only.
        rows, cols = positive.nonzero(as_tuple=True)
        positive_lse = row_logsumexp(logits[rows, cols], rows, logits.shape[0])
        has_positive = positive.any(1)
        losses = masked_logsumexp(logits, positive | negative, dim=1) - positive_lse
        return losses[has_positive]

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
