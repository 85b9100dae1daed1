"""Supervised contrastive loss (SupCon) — Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.

The ``L^sup_out`` form of the paper (eq. 2), with ``z`` the L2-normalised embeddings (cosine similarity),
``P(i)`` the positives of anchor ``i`` and ``A(i)`` all its pairs (positives and negatives, never ``i``
itself) and temperature ``tau``::

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

Default ``tau = 0.1``. Per-element losses are per anchor with at least one positive. Multi-label data
(a multi-hot label matrix: positives share a label), a reference set and mined pairs come through the
shared pair masks; with mined ``indices``, ``P(i)``/``A(i)`` hold only the mined pairs. With a distance
instead of a similarity the logits are ``-d / tau``.

The head (everything after the logits) is one autograd node: ``L_i = lse_{A(i)} - mean_{P(i)}`` of the logits,
whose gradient is ``softmax_{A(i)} - [j in P(i)] / |P(i)|``.
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import PairSoftmaxLoss, similarity_logits, softmax_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


class _SupConHead(torch.autograd.Function):
    """Per-anchor losses from the logits and the 0/1 positive and negative pair weights, and which anchors have
    a positive (the others' losses are 0 and pass no gradient)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Entries outside A(i) are pushed down by a huge finite offset: exp gives exactly 0, and a row without
        # any pair stays finite. In-place work on the mask buffers: fresh N x N tensors cost page faults.
        offset = torch.finfo(logits.dtype).max / 8
        outside = negatives.add(positives).sub_(1)
        shifted = torch.add(logits, outside, alpha=offset)
        probs, lse = softmax_logsumexp(shifted)
        num_positives = positives.sum(1)
        has_positive = num_positives > 0
        positive_share = positives.div(num_positives.clamp_min_(1).unsqueeze(1))
        losses = lse.sub_(torch.mul(positive_share, logits, out=outside).sum(1)).mul_(has_positive)
        ctx.save_for_backward(probs.sub_(positive_share), has_positive)
        ctx.mark_non_differentiable(has_positive)
        return losses, has_positive

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        logit_grad, has_positive = ctx.saved_tensors
        return logit_grad * (grad * has_positive).unsqueeze(1), None, None


@LOSSES.register("supcon")
class SupConLoss(PairSoftmaxLoss):
    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = similarity_logits(self.distance, embeddings, ref_embeddings, self.temperature)
        positives, negatives = self.pair_weights(labels, indices, ref_labels, logits.dtype)
        losses, has_positive = _SupConHead.apply(logits, positives, negatives)
        # The mean and sum over anchors with a positive need no gathering (the others' losses are 0).
        if self.reduction == "mean":
            return losses.sum() / has_positive.sum().clamp_min(1)
        return losses.sum() if self.reduction == "sum" else losses[has_positive]
