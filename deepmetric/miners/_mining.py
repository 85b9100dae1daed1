"""Machinery shared by the miners: one "farther is larger" matrix, masked searches, per-anchor sampling.

All of it works on ``N x M`` matrices (batch x reference set), so every miner stays within O(N M) memory.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import PairIndices, TripletIndices


def farness(
    distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None
) -> torch.Tensor:
    """Pairwise matrix where larger always means farther apart: distances as they are, similarities negated.

    Negation is exact in floating point, so ``farness[a, n] - farness[a, p]`` equals
    ``distance.closer_by(matrix[a, p], matrix[a, n])`` bit for bit and margins compare the same way.
    """
    matrix = distance.pairwise(embeddings, ref_embeddings)
    return -matrix if distance.is_similarity else matrix


def masked_argmax(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column of the largest value where ``mask`` holds, and whether the row has any."""
    masked = values.masked_fill(~mask, -torch.inf)
    return masked.argmax(dim=1), mask.any(dim=1)


def masked_argmin(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column of the smallest value where ``mask`` holds, and whether the row has any."""
    masked = values.masked_fill(~mask, torch.inf)
    return masked.argmin(dim=1), mask.any(dim=1)


def rank_within_row(rows: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For row indices sorted ascending: each entry's position among its row's entries, and the row counts."""
    counts = torch.bincount(rows, minlength=num_rows)
    starts = counts.cumsum(0) - counts
    return torch.arange(len(rows), device=rows.device) - starts[rows], counts


def sample_columns(
    weights: torch.Tensor, rows: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one column for each entry of ``rows`` with probability proportional to ``weights[row]``.

    ``rows`` must be sorted ascending (as ``nonzero`` gives them). Draws are independent (with
    replacement). Returns ``(columns, valid)``; ``valid`` is False where the row's weights are all zero.
    The uniform numbers come from ``generator`` on the CPU, so a seed gives the same draws on any device.
    Inverse-CDF sampling through one batched ``searchsorted`` keeps memory at ``N x M``.
    """
    num_rows, num_cols = weights.shape
    cdf = weights.to(torch.float64).cumsum(dim=1)
    totals = cdf[:, -1]
    uniforms = torch.rand(len(rows), generator=generator, dtype=torch.float64).to(weights.device)
    slot, counts = rank_within_row(rows, num_rows)
    targets = torch.zeros(num_rows, int(counts.max()), dtype=torch.float64, device=cdf.device)
    targets[rows, slot] = uniforms * totals[rows]
    columns = torch.searchsorted(cdf, targets, right=True)[rows, slot]
    # ``u * total`` can round up to ``total``; fall back to the row's last column with weight.
    last_weighted = num_cols - 1 - (weights > 0).flip(1).to(torch.uint8).argmax(dim=1)
    columns = torch.minimum(columns, last_weighted[rows])
    return columns, totals[rows] > 0


def mask_pairs(positives: torch.Tensor, negatives: torch.Tensor) -> PairIndices:
    """Pair indices ``(anchor_p, positive, anchor_n, negative)`` of the True entries of two pair masks."""
    anchor_p, positive = positives.nonzero(as_tuple=True)
    anchor_n, negative = negatives.nonzero(as_tuple=True)
    return anchor_p, positive, anchor_n, negative


def empty_pairs(device: torch.device) -> PairIndices:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(4))


def empty_triplets(device: torch.device) -> TripletIndices:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(3))
