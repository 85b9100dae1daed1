"""Softmax cross-entropy through a linear classifier: the classification baseline of metric learning.

A linear layer with bias maps the embedding ``x_i`` to class logits; the loss is plain cross-entropy::

    z_i = W x_i + b,        L_i = -log( exp(z_{i, y_i}) / sum_c exp(z_{i, c}) )

The embedding is the classifier's input (the network's penultimate layer), so retrieval with the trained
embeddings shows what a plain classifier gives, and a benchmark can show what metric learning adds (Zhai &
Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019; Boudiaf et al., "A unifying
mutual information view of metric learning: cross-entropy vs. pairwise losses", ECCV 2020).

No normalisation, scale or margin (``normalized_softmax``, ``cosface`` and ``arcface`` add those). Train it
with ``model.normalize: false`` so the classifier sees unconstrained embeddings; retrieval may still use
the cosine distance (``eval.distance``). The loss has no distance of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import working_dtype
from deepmetric.losses.proxies import ClassWeightLoss
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("softmax")
class SoftmaxLoss(ClassWeightLoss):
    """``CE(W x + b, y)`` per sample; with a miner's ``indices`` only the samples it mentions count."""

    def __init__(self, num_classes: int, embedding_size: int, reduction: str = "mean") -> None:
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        super().__init__(num_classes, embedding_size, reduction=reduction)
        self.classifier = nn.Linear(embedding_size, num_classes, bias=True)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        dtype = working_dtype(embeddings, self.classifier.weight)
        weight, bias = self.classifier.weight.to(dtype), self.classifier.bias.to(dtype)
        return F.linear(embeddings.to(dtype), weight, bias)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self.check_inputs(embeddings, labels, ref_embeddings)
        losses = F.cross_entropy(self.logits(embeddings), labels.long(), reduction="none")
        return self.select(losses, indices)
