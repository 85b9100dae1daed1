"""SoftTriple — Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019.

``K`` learned centres ``w_c^k`` per class. The similarity of ``x`` to class ``c`` is a soft maximum over
its centres, with a softmax of temperature ``gamma``; the loss is a smoothed (``lambda``) softmax with a
margin ``delta`` on the target class, plus a regulariser that merges redundant centres::

    S_{i,c} = sum_k softmax_k(x_i . w_c^k / gamma) x_i . w_c^k
    l_i     = -log( exp(lambda (S_{i,y_i} - delta))
                    / (exp(lambda (S_{i,y_i} - delta)) + sum_{c != y_i} exp(lambda S_{i,c})) )
    R(w)    = sum_c sum_{t < k} ||w_c^t - w_c^k|| / (C K (K - 1))         (normalised centres)
    L       = mean_i l_i + tau R(w)

Defaults ``K = 10``, ``lambda = 20``, ``gamma = 0.1``, ``tau = 0.2``, ``delta = 0.01``; centres
initialised kaiming-uniform and compared by cosine similarity (embeddings and centres normalised).
Per-element losses are ``l_i + tau R(w)``, so their mean is ``L``. The square root of ``R`` is zero-safe
(the paper's code adds ``1e-5`` under it instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance, safe_sqrt
from deepmetric.losses.base import LOSSES
from deepmetric.losses.proxies import ClassWeightLoss, class_weights
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("soft_triple")
class SoftTripleLoss(ClassWeightLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        tau: float = 0.2,
        margin: float = 0.01,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        super().__init__(num_classes, embedding_size, distance=distance, reduction=reduction)
        self.centers_per_class = centers_per_class
        self.la = la
        self.gamma = gamma
        self.tau = tau
        self.margin = margin
        self.centers = class_weights(
            num_classes, embedding_size, "kaiming_uniform", per_class=centers_per_class
        )

    def class_similarities(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """``S``: the ``N x C`` soft-max similarity of each embedding to each class (inputs checked)."""
        centers = self.centers.reshape(-1, self.embedding_size)
        sims = self.class_logits(embeddings, labels, ref_embeddings, centers)
        sims = sims.reshape(-1, self.num_classes, self.centers_per_class)
        return (F.softmax(sims / self.gamma, dim=2) * sims).sum(2)

    def regulariser(self) -> torch.Tensor:
        """``R(w)``: mean distance between the centres of one class.

        Only the ``K (K - 1) / 2`` pairs ``t < k`` of each class are computed, from one batched Gram matrix
        of the normalised centres (``||a - b||^2 = 2 - 2 a.b`` for unit vectors).
        """
        k = self.centers_per_class
        centers = F.normalize(self.centers, dim=-1)  # C x K x D
        first, second = torch.triu_indices(k, k, offset=1, device=centers.device)
        cosines = (centers @ centers.transpose(1, 2))[:, first, second]
        return safe_sqrt(2 - 2 * cosines).sum() / (self.num_classes * k * (k - 1))

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sims = self.class_similarities(embeddings, labels, ref_embeddings)
        labels = labels.long()
        margins = torch.zeros_like(sims).scatter_(1, labels[:, None], self.margin)
        losses = F.cross_entropy(self.la * (sims - margins), labels, reduction="none")
        if self.tau > 0 and self.centers_per_class > 1:
            losses = losses + self.tau * self.regulariser().to(losses.dtype)
        return self.select(losses, indices)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, centers_per_class={self.centers_per_class}, la={self.la}, "
            f"gamma={self.gamma}, tau={self.tau}, margin={self.margin}"
        )
