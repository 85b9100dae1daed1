"""NT-Xent (normalised temperature-scaled cross-entropy) — Chen et al., "A Simple Framework for
Contrastive Learning of Visual Representations" (SimCLR), ICML 2020.

For every positive pair ``(i, p)``, with ``s`` the cosine similarity, ``N(i)`` the negatives of anchor
``i`` and temperature ``tau``::

    l_{i,p} = -log( exp(s(i, p) / tau) / (exp(s(i, p) / tau) + sum_{n in N(i)} exp(s(i, n) / tau)) )

SimCLR's labels are "the two views of one image"; here, as in PML's NTXentLoss, any labels define the
positive pairs (same label) and the negatives (different label), so the self-supervised case is labels
``[0, 1, ..., B-1]`` repeated for the two views. Per-element losses are per positive pair; an anchor
without negatives gives 0 for its pairs. Default ``tau = 0.1`` (SimCLR's; PML defaults to 0.07).

Cost: one ``B x B`` similarity matrix, one masked log-sum-exp over each row's negatives, and one
``logaddexp`` per positive pair: ``O(B^2 D)`` time, ``O(B^2)`` memory, no per-pair ``B``-long rows.
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import PairSoftmaxLoss, masked_logsumexp
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("ntxent")
class NTXentLoss(PairSoftmaxLoss):
    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        logits, positive, negative = self.pair_logits(embeddings, labels, indices, ref_embeddings, ref_labels)
        negatives_lse = masked_logsumexp(logits, negative, dim=1)
        anchor, pos = positive.nonzero(as_tuple=True)
        pos_logits = logits[anchor, pos]
        return torch.logaddexp(pos_logits, negatives_lse[anchor]) - pos_logits
