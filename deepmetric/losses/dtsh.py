"""DTSH: Deep Supervised Hashing with Triplet Labels (Wang, Shi & Kitani, ACCV 2016).

With ``Theta_ij = 1/2 u_i . u_j`` (half the inner product of relaxed codes, which equals
``K/2 - Hamming(b_i, b_j)`` for binary codes), a triplet (anchor ``i``, positive ``j``, negative ``k``) has
likelihood ``p = sigma(Theta_ij - Theta_ik - margin)``. The loss is the negative log-likelihood

    L = mean_triplets  -log sigma(Theta_ij - Theta_ik - margin)
                     = mean_triplets  softplus(Theta_ik - Theta_ij + margin)
        + lambda * mean_n ||b_n - u_n||^2 / K,      b_n = sign(u_n)

over all valid triplets of the batch (or the mined ones), the second term being the paper's quantization
loss (:func:`deepmetric.losses.quantization.quantization_penalty`, per bit). The first term is the
soft-margin triplet loss on the similarity ``Theta``: without a miner it is reduced by the batch-all machinery
of :mod:`deepmetric.losses.triplet` (anchor chunks, gradient accumulated in the same pass), so memory stays
``O(N^2)`` instead of the ``N^3`` triplet mask.

``Theta_ij = scale * u_i . u_j / K`` (:class:`~deepmetric.losses.quantization.QuantizedCodeLoss`); the
paper's ``1/2`` is ``scale=None``. Defaults ``scale = 1024`` (a sharp sigmoid: satisfied triplets stop
pushing) and ``lambda = 0.1`` (1.0 drives the tanh codes to ±1 fitted to the training classes): in the demo
Recall@1 goes 0.887 untrained -> 0.702 with the paper's ``1/2`` and ``lambda = 1`` -> 0.896 with
these (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.losses.base import LOSSES
from deepmetric.losses.quantization import QuantizedCodeLoss
from deepmetric.losses.triplet import BatchAllTriplet
from deepmetric.masks import PairIndices, TripletIndices, to_triplets


@LOSSES.register("dtsh")
class DTSHLoss(QuantizedCodeLoss):
    def __init__(
        self,
        margin: float = 5.0,
        quantization_weight: float = 0.1,
        scale: float | None = 1024.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(quantization_weight, reduction, scale)
        self.margin = margin

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        theta = self.theta(embeddings, ref_embeddings)
        if indices is None:
            positives, negatives = self.masks(labels, None, ref_labels)
            if self.reduction != "none":
                # softplus(Theta_ik - Theta_ij + margin) is the soft-margin triplet loss on the similarity
                # Theta: reduced over all triplets in anchor chunks, in O(N^2) memory
                return BatchAllTriplet.apply(
                    theta, positives, negatives, self.margin, -1.0, True, self.reduction
                )
            anchor, positive, negative = (positives[:, :, None] & negatives[:, None, :]).nonzero(
                as_tuple=True
            )  # one loss per triplet was asked for: the output itself is that large
        else:
            anchor, positive, negative = to_triplets(indices)
        return F.softplus(theta[anchor, negative] - theta[anchor, positive] + self.margin)
