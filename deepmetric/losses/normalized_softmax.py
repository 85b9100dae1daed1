"""Normalized softmax (NormSoftmax) — Zhai & Wu, "Classification is a Strong Baseline for Deep Metric
Learning", BMVC 2019 (arXiv 2018).

A softmax classifier without bias whose embeddings and class weights are L2-normalised, with a
temperature ``T``::

    L_i = -log( exp(x_i . w_{y_i} / T) / sum_c exp(x_i . w_c / T) ),   ||x_i|| = ||w_c|| = 1

The default distance is cosine (both sides normalised, as in the paper); with ``distance="dot"`` only the
weights are normalised (PML's default), with a distance the logits are ``-d(x, w_c) / T``. The trainer's
embeddings are retrieved with the same similarity, so the learned weights act as class proxies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import CosineSimilarity, Distance, DotProductSimilarity
from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import similarity_logits, working_dtype
from deepmetric.losses.proxies import CosineSoftmaxLoss


@LOSSES.register("normalized_softmax")
class NormalizedSoftmaxLoss(CosineSoftmaxLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 0.05,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(
            num_classes, embedding_size, 1.0 / temperature, distance=distance, reduction=reduction
        )
        self.temperature = temperature

    def fused_normalize_x(self) -> bool | None:
        # The weights are always normalised, so the dot product (with or without normalised embeddings)
        # fuses too.
        if type(self.distance) in (CosineSimilarity, DotProductSimilarity):
            return self.distance.normalize_embeddings
        return None

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = working_dtype(embeddings, self.weight)
        # The weights are always normalised; the embeddings only when the distance normalises them.
        weight = F.normalize(self.weight.to(dtype), dim=-1)
        return similarity_logits(self.distance, embeddings, weight, self.temperature)
