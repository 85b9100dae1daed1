"""Which pairs are positives and which negatives: the one mask helper every loss and miner uses.

Labels are either 1-D class ids (two samples are positives when their ids are equal) or a 2-D multi-hot
relevance matrix ``N x C`` (multi-label data: two samples are positives when they share at least one
label). When no separate reference set is given, a sample is never paired with itself.

Mined ``indices`` come in two shapes, as in PML: pairs ``(anchor_p, positive, anchor_n, negative)`` and
triplets ``(anchor, positive, negative)``; :func:`indices_to_masks` turns either into pair masks.

:func:`pair_weights` / :func:`indices_to_weights` give the same masks as 0/1 floating-point tensors, for
losses that mask by arithmetic: on CPU, comparisons writing straight into a float tensor and products
with 0/1 weights are several times faster than boolean tensors with ``masked_fill`` / ``where`` / ``any``.
"""

from __future__ import annotations

import torch

PairIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
TripletIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def same_class(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``len(labels) x len(ref_labels)`` matrix: True where the two samples share a label."""
    ref_labels = labels if ref_labels is None else ref_labels
    if labels.ndim == 1:
        return labels[:, None] == ref_labels[None, :]
    return (labels.float() @ ref_labels.float().T) > 0


def pair_masks(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive_mask, negative_mask)`` over all pairs; the diagonal is excluded when ``ref_labels`` is None."""
    related = same_class(labels, ref_labels)
    positives, negatives = related.clone(), ~related
    if ref_labels is None:
        positives.fill_diagonal_(False)
        negatives.fill_diagonal_(False)
    return positives, negatives


def pair_weights(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_masks` as 0/1 tensors of ``dtype``: ``(positive_weights, negative_weights)``."""
    refs = labels if ref_labels is None else ref_labels
    related = torch.empty(labels.shape[0], refs.shape[0], dtype=dtype, device=labels.device)
    if labels.ndim == 1:
        torch.eq(labels[:, None], refs[None, :], out=related)
    else:
        torch.gt(labels.to(dtype) @ refs.to(dtype).T, 0, out=related)
    unrelated = 1 - related
    if ref_labels is None:
        related.fill_diagonal_(0)
        unrelated.fill_diagonal_(0)
    return related, unrelated


def indices_to_weights(
    indices: PairIndices | TripletIndices,
    num_rows: int,
    num_cols: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`indices_to_masks` as 0/1 tensors of ``dtype``."""
    anchor_p, positive, anchor_n, negative = to_pairs(indices)
    positives = torch.zeros(num_rows, num_cols, dtype=dtype, device=device)
    negatives = torch.zeros(num_rows, num_cols, dtype=dtype, device=device)
    positives[anchor_p, positive] = 1
    negatives[anchor_n, negative] = 1
    return positives, negatives


def indices_to_masks(
    indices: PairIndices | TripletIndices, num_rows: int, num_cols: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair masks holding exactly the mined pairs (triplets contribute their (a, p) and (a, n) pairs)."""
    anchor_p, positive, anchor_n, negative = to_pairs(indices)
    positives = torch.zeros(num_rows, num_cols, dtype=torch.bool, device=device)
    negatives = torch.zeros(num_rows, num_cols, dtype=torch.bool, device=device)
    positives[anchor_p, positive] = True
    negatives[anchor_n, negative] = True
    return positives, negatives


def to_pairs(indices: PairIndices | TripletIndices) -> PairIndices:
    """Pair indices from pair or triplet indices."""
    if len(indices) == 4:
        return indices
    if len(indices) == 3:
        anchor, positive, negative = indices
        return anchor, positive, anchor, negative
    raise ValueError(f"indices must be a pair 4-tuple or a triplet 3-tuple, got a {len(indices)}-tuple")


def to_triplets(indices: PairIndices | TripletIndices) -> TripletIndices:
    """Triplet indices from triplet indices, or from pairs by joining positives and negatives of one anchor."""
    if len(indices) == 3:
        return indices
    if len(indices) != 4:
        raise ValueError(f"indices must be a pair 4-tuple or a triplet 3-tuple, got a {len(indices)}-tuple")
    anchor_p, positive, anchor_n, negative = indices
    if anchor_p.numel() == 0 or anchor_n.numel() == 0:
        empty = anchor_p.new_empty(0)
        return empty, empty, empty
    joined = anchor_p[:, None] == anchor_n[None, :]
    p_idx, n_idx = joined.nonzero(as_tuple=True)
    return anchor_p[p_idx], positive[p_idx], negative[n_idx]


def positive_pairs(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of all positive pairs."""
    return pair_masks(labels, ref_labels)[0].nonzero(as_tuple=True)


def negative_pairs(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of all negative pairs."""
    return pair_masks(labels, ref_labels)[1].nonzero(as_tuple=True)
