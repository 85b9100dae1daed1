"""DREML's loss — Xuan, Souvenir & Pless, "Deep Randomized Ensembles for Metric Learning", ECCV 2018.

The embedding ``x_i = [x_i^1 | ... | x_i^D]`` concatenates ``D`` learners' embeddings (see
:mod:`deepmetric.models.ensemble`). Learner ``d`` has its own random partition ``m_d`` of the classes into
meta-classes and a softmax classifier over them (linear layer with bias, :class:`SoftmaxLoss`)::

    L_i = sum_d CE( W_d x_i^d + b_d, m_d(y_i) )

Summing over learners whose parameters are disjoint trains each one exactly as if it were alone. With a
config, set ``ensemble: {size: D, meta_classes: L}`` and ``loss: dreml``: the trainer draws the partitions
from ``config.seed`` (:func:`deepmetric.models.ensemble.meta_class_partitions`) and passes them in; the
table is also saved with the loss's state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepmetric.losses.base import LOSSES
from deepmetric.losses.proxies import ClassWeightLoss
from deepmetric.losses.softmax import SoftmaxLoss
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("dreml")
class DREMLLoss(ClassWeightLoss):
    """``partitions``: ``D x num_classes`` meta-class ids; ``embedding_size``: the whole (``D x dim``)."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        partitions: np.ndarray | torch.Tensor,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, embedding_size, reduction=reduction)
        table = torch.as_tensor(np.asarray(partitions), dtype=torch.long)
        if table.ndim != 2 or table.shape[1] != num_classes:
            raise ValueError(
                f"partitions must be a learners x num_classes ({num_classes}) table, "
                f"got shape {tuple(table.shape)}"
            )
        if table.shape[0] == 0 or table.min() < 0:
            raise ValueError("partitions must hold at least one learner and non-negative meta-class ids")
        size = table.shape[0]
        if embedding_size % size:
            raise ValueError(
                f"embedding_size={embedding_size} does not split into {size} equal learner embeddings"
            )
        self.size = size
        self.meta_classes = int(table.max()) + 1
        self.learner_size = embedding_size // size
        self.register_buffer("partitions", table)
        self.learners = nn.ModuleList(SoftmaxLoss(self.meta_classes, self.learner_size) for _ in range(size))

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self.check_inputs(embeddings, labels, ref_embeddings)
        labels = labels.long()
        chunks = embeddings.split(self.learner_size, dim=1)
        per_learner = [
            learner.compute(chunk, meta_labels[labels], indices, None, None)
            for learner, chunk, meta_labels in zip(self.learners, chunks, self.partitions)
        ]
        return torch.stack(per_learner).sum(0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learners={self.size}, meta_classes={self.meta_classes}"
