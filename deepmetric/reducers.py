"""Reductions from per-element losses to the scalar that is back-propagated: the one reducer of the library.

``mean``: average over all elements; ``sum``; ``mean_nonzero``: average over the elements whose loss is
positive (the "batch-all" convention of Hermans et al. 2017, PML's AvgNonZeroReducer); ``none``: no
reduction. An empty set of elements (no valid pair or triplet in the batch) gives a zero that is still
connected to the graph, so ``backward()`` works and yields zero gradients.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    return reduction


def reduce(losses: torch.Tensor, reduction: str = "mean", anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``losses``. ``anchor`` (usually the embeddings) keeps an empty result attached to the graph."""
    if reduction == "none" or losses.ndim == 0:  # a loss that reduced itself (every reduction keeps a scalar)
        return losses
    if losses.numel() == 0:
        zero = losses.sum()
        return zero + anchor.sum() * 0 if anchor is not None else zero
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    if reduction == "mean_nonzero":
        # The count as a float sum of a comparison written straight into a float tensor: on CPU a boolean
        # mask and its sum cost over ten times more, and the count ends up in the losses' dtype anyway.
        positive = torch.gt(losses.detach(), 0, out=torch.empty_like(losses, requires_grad=False))
        return losses.sum() / positive.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
