"""Softmax machinery shared by the softmax-type losses (proxy, classification and set-based).

- :func:`similarity_logits`: the pairwise logits every softmax-type loss starts from (the similarity, or
  the negated distance, over a temperature) in the working dtype; :func:`similarities` without the cast.
- :class:`PairSoftmaxLoss`: the base of NT-Xent and SupCon (temperature, cosine default, pair logits).
- :func:`working_dtype`: these losses exponentiate logits scaled by up to 64 (ArcFace) or 1/0.05
  (temperatures), which overflows float16; they compute in at least float32 and the gradient flows back
  to half-precision embeddings through the cast.
- :func:`masked_logsumexp`: ``log sum_{mask} exp(x)`` along a dimension where rows may be empty (an anchor
  without positives or negatives). A naive masked ``logsumexp`` of an all ``-inf`` row has a NaN gradient;
  here empty rows give ``-inf`` (``0`` with ``add_one``) and exactly zero gradient. It runs on the fused
  softmax kernel with arithmetic masking, the hot spot of most pair losses. :func:`row_logsumexp`
  does the same for a sparse set of entries; :func:`anchor_logsumexps` is the per-anchor pair of
  positive and negative log-sum-exps that circle and generalised lifted-structure losses combine.
- :func:`mined_samples`: which samples a miner's pair/triplet indices mention, for losses defined per
  sample (a sample enters the loss when the miner picked it as an anchor, positive or negative; only as
  an anchor when positives and negatives index a reference set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import MetricLoss
from deepmetric.masks import PairIndices, TripletIndices, to_pairs


class PairSoftmaxLoss(MetricLoss):
    """Base of the losses that take a softmax over each anchor's pairs with logits ``s(i, j) / tau``
    (NT-Xent, SupCon): cosine similarity by default, a positive temperature ``tau``."""

    default_distance = "cosine"

    def __init__(
        self, temperature: float = 0.1, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(distance=distance, reduction=reduction)
        self.temperature = temperature

    def pair_logits(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, positives, negatives)``: :func:`similarity_logits` over the temperature, with the
        pair masks."""
        logits = similarity_logits(self.distance, embeddings, ref_embeddings, self.temperature)
        return logits, *self.masks(labels, indices, ref_labels)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to compute softmax losses in: the promoted dtype of ``tensors``, at least float32."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def similarities(distance: Distance, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Pairwise logits where larger means closer: the similarity itself, or the negated distance."""
    matrix = distance.pairwise(x, y)
    return matrix if distance.is_similarity else -matrix


def similarity_logits(
    distance: Distance,
    embeddings: torch.Tensor,
    reference: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """:func:`similarities` of ``embeddings`` against ``reference`` (themselves when None) in the
    :func:`working_dtype` of both, divided by ``temperature``."""
    if reference is None:
        dtype = working_dtype(embeddings)
        logits = similarities(distance, embeddings.to(dtype), None)
    else:
        dtype = working_dtype(embeddings, reference)
        logits = similarities(distance, embeddings.to(dtype), reference.to(dtype))
    return logits if temperature == 1 else logits / temperature


def softmax_logsumexp(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(x), logsumexp(x))`` along ``dim`` from one softmax kernel: the largest probability is
    ``exp(max - lse)``, so ``lse = max - log(max probability)``. On CPU ``torch.logsumexp`` and
    ``log_softmax`` go through ``exp``, several times slower than the softmax kernel when many terms
    underflow (masked entries, the large scales of softmax losses); fused heads need both anyway."""
    probs = torch.softmax(x, dim)
    return probs, x.amax(dim).sub_(probs.amax(dim).log_())


class _LogSumExp(torch.autograd.Function):
    """``logsumexp`` along ``dim`` through :func:`softmax_logsumexp`; the gradient is the softmax itself."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, dim: int) -> torch.Tensor:
        probs, lse = softmax_logsumexp(x, dim)
        ctx.dim = dim
        ctx.save_for_backward(probs)
        return lse

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (probs,) = ctx.saved_tensors
        return probs * grad.unsqueeze(ctx.dim), None


def masked_logsumexp(
    x: torch.Tensor, mask: torch.Tensor, dim: int = -1, add_one: bool = False
) -> torch.Tensor:
    """``log(sum_{mask} exp(x))`` along ``dim`` (``log(1 + sum_{mask} exp(x))`` with ``add_one``).

    ``mask`` is boolean or 0/1 floating point (cheaper: see :func:`deepmetric.masks.pair_weights`). Rows of
    ``mask`` with no True entry give ``-inf`` (``0`` with ``add_one``) and a zero gradient.
    """
    # At least float32, so that the offset below dwarfs any logit.
    work = x if x.dtype.itemsize >= 4 else x.float()
    weights = mask if mask.dtype == work.dtype else mask.to(work.dtype)
    # Masked-out entries are pushed down by a huge finite offset instead of -inf: their exp is exactly 0,
    # and an empty row stays finite (no NaN in the softmax); its result is set (or squashed) below.
    offset = torch.finfo(work.dtype).max / 8
    lse = _LogSumExp.apply(torch.add(work, weights - 1, alpha=offset), dim)
    if add_one:
        # softplus(-offset) is exactly 0, with a zero gradient: empty rows need no special case.
        return F.softplus(lse).to(x.dtype)
    return lse.masked_fill(weights.amax(dim) == 0, float("-inf")).to(x.dtype)


def anchor_logsumexps(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor (row) that has both a positive and a negative: ``log sum_{positives} exp(pos_logits)`` and
    ``log sum_{negatives} exp(neg_logits)``. Anchors lacking either are left out (their loss is undefined)."""
    rows = positives.any(1) & negatives.any(1)
    pos_lse = masked_logsumexp(pos_logits[rows], positives[rows], dim=1)
    return pos_lse, masked_logsumexp(neg_logits[rows], negatives[rows], dim=1)


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
