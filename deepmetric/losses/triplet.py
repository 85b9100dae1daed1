"""Triplet margin loss (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015) and its soft-margin form
(Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017).

For a triplet (anchor a, positive p, negative n):

    hinge (FaceNet):       L(a, p, n) = [D_ap - D_an + α]_+            (α = ``margin``, 0.2 as in FaceNet)
    soft margin (Hermans): L(a, p, n) = log(1 + exp(D_ap - D_an + α))  (``soft=True``; Hermans uses α = 0)

For a similarity (cosine, dot) ``D_ap - D_an`` becomes ``S_an - S_ap``.

Which triplets: with ``indices`` from a miner (triplets, or pairs joined per anchor with
:func:`deepmetric.masks.to_triplets`) exactly those; without, every valid triplet of the batch ("batch-all").
Semi-hard, hardest, batch-hard and random-negative selection are miners; this loss only consumes indices.

Batch-all never materialises the ``B x B x B`` tensor: anchors are processed in chunks over their
positives only (``B x K x R`` in all, ``K`` = positives per anchor), and the gradient with respect to the
distance matrix is accumulated in the same pass, so memory stays ``O(B * R)`` at any batch size.

Reduction: ``mean_nonzero`` by default — the average over the triplets with a positive loss, Hermans'
batch-all convention (PML's ``AvgNonZeroReducer``); ``mean`` averages over all valid triplets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.masks import PairIndices, TripletIndices, to_triplets

# Elements of one anchor chunk (chunk x positives x references): bounds the working memory of batch-all.
_CHUNK_ELEMENTS = 1 << 22


def _positive_lists(positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's positive columns, padded to the largest count: ``(columns, valid)`` both ``B x K``."""
    max_count = int(positives.sum(1).max())
    order = torch.sort(positives.to(torch.uint8), dim=1, descending=True, stable=True).indices
    columns = order[:, :max_count]
    return columns, positives.gather(1, columns)


class BatchAllTriplet(torch.autograd.Function):
    """Reduced batch-all triplet loss as a function of the distance matrix.

    Forward sums the loss over all valid triplets chunk by chunk and, in the same pass, accumulates
    ``d loss / d dist`` into a ``B x R`` matrix, so no per-triplet tensor outlives its chunk.
    """

    @staticmethod
    def forward(
        ctx,
        dist: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
        margin: float,
        sign: float,
        soft: bool,
        reduction: str,
    ) -> torch.Tensor:
        acc_dtype = torch.float64 if dist.dtype == torch.float64 else torch.float32
        grad = torch.zeros(dist.shape, dtype=acc_dtype, device=dist.device)
        total = torch.zeros((), dtype=acc_dtype, device=dist.device)
        num_valid = torch.zeros((), dtype=torch.long, device=dist.device)
        num_positive = torch.zeros((), dtype=torch.long, device=dist.device)
        if positives.any() and negatives.any():
            columns, valid_pos = _positive_lists(positives)
            work = dist.to(acc_dtype)
            chunk = max(1, _CHUNK_ELEMENTS // (columns.shape[1] * dist.shape[1]))
            for start in range(0, dist.shape[0], chunk):
                rows = slice(start, start + chunk)
                row_dist, cols = work[rows], columns[rows]
                ap = row_dist.gather(1, cols)
                violation = sign * (ap[:, :, None] - row_dist[:, None, :]) + margin
                valid = valid_pos[rows, :, None] & negatives[rows, None, :]
                if soft:
                    loss = F.softplus(violation).masked_fill_(~valid, 0)
                    weight = torch.sigmoid(violation).masked_fill_(~valid, 0)
                else:
                    loss = violation.clamp_min_(0).masked_fill_(~valid, 0)
                    weight = (loss > 0).to(acc_dtype)
                total += loss.sum()
                num_valid += valid.sum()
                num_positive += (loss > 0).sum()
                grad[rows].scatter_add_(1, cols, sign * weight.sum(2))
                grad[rows] -= sign * weight.sum(1)
        if reduction == "mean":
            divisor = num_valid.clamp_min(1).to(acc_dtype)
        elif reduction == "mean_nonzero":
            divisor = num_positive.clamp_min(1).to(acc_dtype)
        else:
            divisor = torch.ones((), dtype=acc_dtype, device=dist.device)
        ctx.save_for_backward(grad / divisor)
        ctx.out_dtype = dist.dtype
        return (total / divisor).to(dist.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.out_dtype), None, None, None, None, None, None


@LOSSES.register("triplet")
class TripletLoss(MetricLoss):
    def __init__(
        self,
        margin: float = 0.2,
        soft: bool = False,
        distance: str | Distance | None = None,
        reduction: str = "mean_nonzero",
    ) -> None:
        super().__init__(distance, reduction)
        self.margin = margin
        self.soft = soft

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        dist = self.distance(embeddings, ref_embeddings)
        sign = -1.0 if self.distance.is_similarity else 1.0
        if indices is None and self.reduction != "none":
            positives, negatives = self.masks(labels, None, ref_labels)
            return BatchAllTriplet.apply(
                dist, positives, negatives, self.margin, sign, self.soft, self.reduction
            )
        if indices is None:
            positives, negatives = self.masks(labels, None, ref_labels)
            anchor, positive, negative = (positives[:, :, None] & negatives[:, None, :]).nonzero(
                as_tuple=True
            )
        else:
            anchor, positive, negative = to_triplets(indices)
        violation = sign * (dist[anchor, positive] - dist[anchor, negative]) + self.margin
        return F.softplus(violation) if self.soft else F.relu(violation)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft={self.soft}"
