"""Proxy-NCA — Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017.

One learned proxy ``p_c`` per class; NCA over proxies instead of samples, with the squared Euclidean
distance between L2-normalised embeddings and proxies and a softmax temperature ``T``::

    L_i = -log( sum_{c in Y_i} exp(-d(x_i, p_c) / T) / sum_{c=1..C} exp(-d(x_i, p_c) / T) ),
    d(x, p) = || x/||x|| - p/||p|| ||^2

``Y_i = {y_i}`` for class ids; for a multi-hot label row every labelled class is a positive proxy.

This is the common softmax-temperature variant (PML's ProxyNCALoss with ``softmax_scale = 1/T``, and
ProxyNCA++ of Teh et al. 2020, who recommend ``T = 1/9``): the denominator runs over all proxies. The
paper's original denominator leaves the positive proxy out (``sum_{c not in Y_i}``), which makes the loss
unbounded below; nobody trains with that form. ``T = 1`` (the default) is the paper's objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import CosineSimilarity, Distance, SquaredEuclideanDistance
from deepmetric.losses.base import LOSSES
from deepmetric.losses.cosine_softmax import cosine_cross_entropy
from deepmetric.losses.logits import masked_logsumexp, working_dtype
from deepmetric.losses.proxies import ClassWeightLoss, class_weights
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("proxy_nca")
class ProxyNCALoss(ClassWeightLoss):
    supports_multilabel = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 1.0,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if distance is None:
            distance = SquaredEuclideanDistance(normalize_embeddings=True)
        super().__init__(num_classes, embedding_size, distance=distance, reduction=reduction)
        self.temperature = temperature
        self.proxies = class_weights(num_classes, embedding_size, "normal")

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        cosine_scale = self.cosine_scale()
        if labels.ndim == 1 and cosine_scale is not None:
            self.check_inputs(embeddings, labels, ref_embeddings)
            dtype = working_dtype(embeddings, self.proxies)
            proxies = self.proxies.to(dtype)
            reduction = self.fused_reduction(indices)
            losses = cosine_cross_entropy(
                embeddings.to(dtype), proxies, labels, cosine_scale, reduction=reduction
            )
            return self.select(losses, indices)
        logits = self.class_logits(embeddings, labels, ref_embeddings, self.proxies, self.temperature)
        if labels.ndim == 1:
            return self.select(F.cross_entropy(logits, labels.long(), reduction="none"), indices)
        positives = labels.bool()
        losses = torch.logsumexp(logits, 1) - masked_logsumexp(logits, positives, 1)
        # A sample without any label has no positive proxy and does not enter the loss.
        return self.select(losses, indices, keep=positives.any(1))

    def cosine_scale(self) -> float | None:
        """The scale ``s`` with which the logits are ``s cos(x, p)`` up to a per-sample constant (which the
        softmax ignores), so that the fused head computes the loss; None for other distances.

        Between unit vectors ``||u - v||^2 = 2 - 2 u.v``, so the default's logits are ``(2 u.v - 2) / T``.
        """
        if type(self.distance) is CosineSimilarity:
            return 1 / self.temperature
        if type(self.distance) is SquaredEuclideanDistance and self.distance.normalize_embeddings:
            return 2 / self.temperature
        return None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
