"""Statistics of one training batch, logged with the loss: what the miner gave the loss, how many of
those tuples are active (violate their margin, so that they have a gradient), and embedding norms.

The active fraction is computed from the miner's output and the embeddings for losses whose active set
is defined by margins on the loss's own distance: the triplet loss (``D_ap - D_an + margin > 0``, every
valid triplet of the batch without a miner) and the contrastive loss (positives beyond ``pos_margin``,
negatives within ``neg_margin``). Other losses log no active fraction.
"""

from __future__ import annotations

import torch

from deepmetric.losses.contrastive import ContrastiveLoss
from deepmetric.losses.triplet import TripletLoss
from deepmetric.masks import PairIndices, TripletIndices, pair_masks, to_triplets


@torch.no_grad()
def batch_statistics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    indices: PairIndices | TripletIndices | None,
    loss: torch.nn.Module,
) -> dict[str, float]:
    """``embedding_norm_mean/std``; ``triplets`` or ``positive_pairs`` and ``negative_pairs`` when the loss
    was given indices (from a miner or a tuple sampler); ``active_fraction`` where it is defined."""
    embeddings = embeddings.detach().float()
    norms = embeddings.norm(dim=1)
    stats = {
        "embedding_norm_mean": norms.mean().item(),
        "embedding_norm_std": norms.std().item() if len(norms) > 1 else 0.0,
    }
    if indices is not None:
        if len(indices) == 3:
            stats["triplets"] = len(indices[0])
        else:
            stats["positive_pairs"], stats["negative_pairs"] = len(indices[0]), len(indices[2])
    active = active_fraction(loss, embeddings, labels, indices)
    if active is not None:
        stats["active_fraction"] = active
    return stats


def active_fraction(
    loss: torch.nn.Module,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    indices: PairIndices | TripletIndices | None,
) -> float | None:
    """The fraction of the loss's tuples with a positive hinge; None where the loss defines none, where
    there are no tuples, or for multi-hot labels."""
    if labels.ndim != 1 or not isinstance(loss, TripletLoss | ContrastiveLoss):
        return None
    matrix = loss.distance(embeddings)
    # "larger is farther": a similarity is negated, and so are its margins' directions below
    sign = -1.0 if loss.distance.is_similarity else 1.0
    farness = sign * matrix
    if isinstance(loss, TripletLoss):
        if indices is None:
            return _batch_all_active(farness, labels, loss.margin)
        anchor, positive, negative = to_triplets(indices)
        if len(anchor) == 0:
            return None
        violation = farness[anchor, positive] - farness[anchor, negative] + loss.margin
        return (violation > 0).float().mean().item()
    if indices is None:
        positives, negatives = pair_masks(labels)
        pos_values, neg_values = matrix[positives], matrix[negatives]
    else:
        pairs = indices if len(indices) == 4 else (indices[0], indices[1], indices[0], indices[2])
        pos_values, neg_values = matrix[pairs[0], pairs[1]], matrix[pairs[2], pairs[3]]
    total = len(pos_values) + len(neg_values)
    if total == 0:
        return None
    # a distance's positives are active beyond pos_margin and its negatives within neg_margin; reversed
    # for a similarity
    active = (sign * (pos_values - loss.pos_margin) > 0).sum() + (
        sign * (loss.neg_margin - neg_values) > 0
    ).sum()
    return active.item() / total


def _batch_all_active(farness: torch.Tensor, labels: torch.Tensor, margin: float) -> float | None:
    """Active fraction over every valid triplet (a, p, n) of the batch without building B x B x B: per
    anchor, the negatives with ``f_an < f_ap + margin`` are counted by a binary search in its sorted
    negative row."""
    positives, negatives = pair_masks(labels)
    total = (positives.sum(1) * negatives.sum(1)).sum().item()
    if total == 0:
        return None
    sorted_negatives = farness.masked_fill(~negatives, float("inf")).sort(dim=1).values
    closer = torch.searchsorted(sorted_negatives, (farness + margin).contiguous(), side="left")
    return closer[positives].sum().item() / total
