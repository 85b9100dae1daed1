"""Softmax machinery shared by the softmax-type losses (proxy, classification and set-based).

- :func:`working_dtype`: these losses exponentiate logits scaled by up to 64 (ArcFace) or 1/0.05
  (temperatures), which overflows float16; they compute in at least float32 and the gradient flows back
  to half-precision embeddings through the cast.
- :func:`masked_logsumexp`: ``log sum_{mask} exp(x)`` along a dimension where rows may be empty (an anchor
  without positives or negatives). A naive masked ``logsumexp`` of an all ``-inf`` row has a NaN gradient;
  here empty rows give ``-inf`` (``0`` with ``add_one``) and exactly zero gradient. :func:`row_logsumexp`
  does the same for a sparse set of entries.
- :func:`mined_samples`: which samples a miner's pair/triplet indices mention, for losses defined per
  sample (a sample enters the loss when the miner picked it as an anchor, positive or negative; only as
  an anchor when positives and negatives index a reference set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.masks import PairIndices, TripletIndices, to_pairs


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to compute softmax losses in: the promoted dtype of ``tensors``, at least float32."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def masked_logsumexp(
    x: torch.Tensor, mask: torch.Tensor, dim: int = -1, add_one: bool = False
) -> torch.Tensor:
    """``log(sum_{mask} exp(x))`` along ``dim`` (``log(1 + sum_{mask} exp(x))`` with ``add_one``).

    Rows of ``mask`` with no True entry give ``-inf`` (``0`` with ``add_one``) and a zero gradient.
    """
    has_any = mask.any(dim, keepdim=True)
    # Empty rows keep their (finite) values so that their logsumexp, and its backward pass, stay NaN-free;
    # their result is then overwritten with -inf, which passes no gradient back.
    lse = torch.logsumexp(x.masked_fill(~(mask | ~has_any), float("-inf")), dim=dim)
    lse = lse.masked_fill(~has_any.squeeze(dim), float("-inf"))
    return F.softplus(lse) if add_one else lse


def row_logsumexp(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-row ``log sum exp`` of scattered entries: ``values[k]`` belongs to row ``rows[k]``.

    For sparse masks (the positives of a P x K batch) this exponentiates only the selected entries instead
    of a whole masked ``N x M`` matrix. Rows without entries give ``-inf`` and pass no gradient.
    """
    row_max = torch.full((num_rows,), float("-inf"), dtype=values.dtype, device=values.device)
    row_max = row_max.scatter_reduce(0, rows, values.detach(), reduce="amax")
    has_any = torch.isfinite(row_max)
    shift = row_max.masked_fill(~has_any, 0)
    sums = torch.zeros(num_rows, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, rows, torch.exp(values - shift[rows]))
    lse = torch.log(sums.masked_fill(~has_any, 1)) + shift
    return lse.masked_fill(~has_any, float("-inf"))


def mined_samples(
    indices: PairIndices | TripletIndices, num_samples: int, device: torch.device, anchors_only: bool = False
) -> torch.Tensor:
    """Boolean mask over the batch: True for every sample that appears in ``indices``.

    ``anchors_only`` counts only anchors (needed when positives/negatives index a separate reference set).
    """
    anchor_p, positive, anchor_n, negative = to_pairs(indices)
    mentioned = (anchor_p, anchor_n) if anchors_only else (anchor_p, positive, anchor_n, negative)
    selected = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for index in mentioned:
        selected[torch.as_tensor(index, device=device).long()] = True
    return selected
