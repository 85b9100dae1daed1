"""Supervised contrastive loss (SupCon) — Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.

The ``L^sup_out`` form of the paper (eq. 2), with ``z`` the L2-normalised embeddings (cosine similarity),
``P(i)`` the positives of anchor ``i`` and ``A(i)`` all its pairs (positives and negatives, never ``i``
itself) and temperature ``tau``::

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

Default ``tau = 0.1``. Per-element losses are per anchor with at least one positive. Multi-label data
(a multi-hot label matrix: positives share a label), a reference set and mined pairs come through the
shared pair masks; with mined ``indices``, ``P(i)``/``A(i)`` hold only the mined pairs. With a distance
instead of a similarity the logits are ``-d / tau``.
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import PairSoftmaxLoss, masked_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


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
        logits, positive, negative = self.pair_logits(embeddings, labels, indices, ref_embeddings, ref_labels)
        log_prob = logits - masked_logsumexp(logits, positive | negative, dim=1)[:, None]
        num_positives = positive.sum(1)
        has_positive = num_positives > 0
        mean_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
        return -(mean_log_prob / num_positives.clamp_min(1).to(logits.dtype))[has_positive]
