"""The contract every loss follows.

``loss(embeddings, labels, indices=None, ref_embeddings=None, ref_labels=None) -> scalar``

- ``labels``: 1-D class ids, or a 2-D multi-hot relevance matrix (positives share a label) where the loss
  is defined through pairs.
- ``indices``: mined pairs ``(a_p, p, a_n, n)`` or triplets ``(a, p, n)`` from a miner; when given, only
  those pairs/triplets enter the loss. Indices of positives/negatives point into the reference set.
- ``ref_embeddings`` / ``ref_labels``: compare the batch against another set (a memory bank, a gallery,
  the global batch under torch.distributed) instead of against itself.

Subclasses implement :meth:`compute`, returning per-element losses that the shared reducer turns into
the scalar (or return a scalar themselves when the loss is defined over the whole batch). Pair losses
start from :meth:`MetricLoss.pair_matrix` (distances with the pair masks) and may hand a zero-padded
matrix of pair losses to :meth:`MetricLoss.reduce_pairs`; :meth:`MetricLoss.require_kind` refuses a distance
where the formula needs a similarity (and vice versa).
"""

from __future__ import annotations

import torch

from deepmetric.checks import check_pair
from deepmetric.distances import Distance, get_distance
from deepmetric.masks import (
    PairIndices,
    TripletIndices,
    indices_to_masks,
    indices_to_weights,
    pair_masks,
    pair_weights,
)
from deepmetric.reducers import check_reduction, reduce
from deepmetric.registry import Registry


class MetricLoss(torch.nn.Module):
    """Base class: holds the distance and the reduction, checks inputs, builds pair masks."""

    default_distance = "euclidean"
    supports_multilabel = True

    def __init__(self, distance: str | Distance | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.distance = get_distance(distance, default=self.default_distance)
        self.reduction = check_reduction(reduction)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None = None,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=embeddings.device)
        if ref_labels is not None:
            ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
        check_pair(embeddings, labels, ref_embeddings, ref_labels)
        if labels.ndim == 2 and not self.supports_multilabel:
            raise ValueError(f"{type(self).__name__} needs 1-D class labels, not a multi-hot matrix")
        losses = self.compute(embeddings, labels, indices, ref_embeddings, ref_labels)
        return reduce(losses, self.reduction, anchor=embeddings)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def require_kind(self, similarity: bool, examples: str) -> None:
        """Refuse a distance where the formula needs a similarity (``similarity``), or the reverse;
        ``examples`` names suitable choices for the error message."""
        if self.distance.is_similarity != similarity:
            wanted, given = ("similarity", "distance") if similarity else ("distance", "similarity")
            raise ValueError(f"{type(self).__name__} needs a {wanted} ({examples}), not a {given}")

    def pair_matrix(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(matrix, positives, negatives)``: the distance (or similarity) of every sample to every
        reference sample (the batch itself without ``ref_embeddings``) with the boolean :meth:`masks`."""
        return self.distance(embeddings, ref_embeddings), *self.masks(labels, indices, ref_labels)

    def reduce_pairs(self, losses: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Reduce a matrix of non-negative pair losses that is zero outside the pairs (``pairs``: a mask).

        Gathering the pairs (boolean indexing) costs more than the loss itself, so only ``none`` gathers;
        the sum and the mean over non-zero losses are unchanged by the zeros and are left to the shared
        reducer, and ``mean`` divides by the number of pairs here (a scalar passes the reducer unchanged).
        """
        if self.reduction == "none":
            return losses[pairs.bool()]
        if self.reduction == "mean":
            return losses.sum() / pairs.sum().clamp_min(1)
        return losses

    def masks(
        self,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative pair masks: all valid pairs, or only the mined ones."""
        if indices is None:
            return pair_masks(labels, ref_labels)
        num_cols = labels.shape[0] if ref_labels is None else ref_labels.shape[0]
        return indices_to_masks(indices, labels.shape[0], num_cols, device=labels.device)

    def pair_weights(
        self,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_labels: torch.Tensor | None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`masks` as 0/1 tensors of ``dtype``, for masking by arithmetic (cheaper than booleans)."""
        if indices is None:
            return pair_weights(labels, ref_labels, dtype)
        num_cols = labels.shape[0] if ref_labels is None else ref_labels.shape[0]
        return indices_to_weights(indices, labels.shape[0], num_cols, device=labels.device, dtype=dtype)


LOSSES = Registry("loss")
