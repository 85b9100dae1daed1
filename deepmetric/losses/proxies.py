"""Machinery of the losses that learn vectors per class (proxies, classifier weights, SoftTriple centres).

- :class:`ClassWeightLoss`: base class holding ``num_classes`` / ``embedding_size``, checking that labels
  are class ids in ``[0, num_classes)`` (or a ``N x num_classes`` multi-hot matrix where the loss allows it)
  and that embeddings have ``embedding_size`` columns, and turning the loss's distance into logits.
- :func:`class_weights`: a learned ``num_classes x [per_class x] embedding_size`` parameter with the
  initialisation the paper uses.
- :class:`CosineSoftmaxLoss`: cross-entropy over scaled similarities to one weight vector per class with a
  margin applied to the target class; NormSoftmax, CosFace and ArcFace differ only in the margin.
- :func:`additive_angular_margin`: ArcFace's ``cos(theta + m)`` without ``arccos``, and
  :func:`additive_angular_margin_with_slope`, the same with its derivative for the fused head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.distances import SQRT_ZERO_THRESHOLD, CosineSimilarity, Distance, safe_sqrt
from deepmetric.losses.base import MetricLoss
from deepmetric.losses.cosine_softmax import cosine_cross_entropy
from deepmetric.losses.logits import mined_samples, similarity_logits, working_dtype
from deepmetric.masks import PairIndices, TripletIndices

INITIALISATIONS = {
    "normal": nn.init.normal_,
    # Kim et al. 2020 (Proxy-Anchor): kaiming-normal over the proxies, fan computed over classes.
    "kaiming_normal": lambda weight: nn.init.kaiming_normal_(weight, mode="fan_out"),
    # Qian et al. 2019 (SoftTriple): the PyTorch default for linear layers.
    "kaiming_uniform": lambda weight: nn.init.kaiming_uniform_(weight, a=math.sqrt(5)),
    "xavier_normal": nn.init.xavier_normal_,
}


def class_weights(
    num_classes: int, embedding_size: int, init: str, per_class: int | None = None
) -> nn.Parameter:
    """A learned ``num_classes x [per_class x] embedding_size`` parameter, initialised by ``init``."""
    for name, value in (
        ("num_classes", num_classes),
        ("embedding_size", embedding_size),
        ("per_class", per_class),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if init not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {init!r}; choose one of {sorted(INITIALISATIONS)}")
    rows = num_classes if per_class is None else num_classes * per_class
    weight = torch.empty(rows, embedding_size)
    INITIALISATIONS[init](weight)
    if per_class is not None:
        weight = weight.reshape(num_classes, per_class, embedding_size)
    return nn.Parameter(weight)


def additive_angular_margin(cosine: torch.Tensor, margin: float, easy_margin: bool = False) -> torch.Tensor:
    """ArcFace's ``cos(theta + m)`` as ``cos(theta) cos(m) - sin(theta) sin(m)``.

    ``sin(theta) = sqrt(1 - cos^2)`` goes through :func:`safe_sqrt`, so ``cos = +-1`` gives a finite
    gradient (``arccos`` has an infinite one there). ``cos(theta + m)`` stops decreasing once
    ``theta + m > pi``; beyond that point (``theta > pi - m``) the target logit continues as the linear
    ``cos(theta) - m sin(m)`` (the InsightFace convention, also PML's), which keeps it monotonic.
    With ``easy_margin`` the margin applies only where ``cos(theta) > 0`` and the logit is ``cos(theta)``
    elsewhere.
    """
    sine = safe_sqrt(1 - cosine * cosine)
    shifted = cosine * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        return torch.where(cosine > 0, shifted, cosine)
    return torch.where(cosine >= -math.cos(margin), shifted, cosine - margin * math.sin(margin))


def additive_angular_margin_with_slope(
    cosine: torch.Tensor, margin: float, easy_margin: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`additive_angular_margin` and its derivative in ``cosine``, without autograd, for the fused head:
    ``cos(m) + sin(m) cos / sin`` on the shifted branch (``cos(m)`` where the sine is numerically zero, as
    :func:`safe_sqrt` has it), 1 on the others."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    sine = (cosine * cosine).neg_().add_(1).clamp_min_(0).sqrt_()
    shifted = torch.add(cosine * cos_m, sine, alpha=-sin_m)
    shifted_slope = torch.where(sine > SQRT_ZERO_THRESHOLD, cosine / sine, 0).mul_(sin_m).add_(cos_m)
    if easy_margin:
        on_shifted = cosine > 0
        value = torch.where(on_shifted, shifted, cosine)
    else:
        on_shifted = cosine >= -cos_m
        value = torch.where(on_shifted, shifted, cosine - margin * sin_m)
    return value, torch.where(on_shifted, shifted_slope, 1.0)


class ClassWeightLoss(MetricLoss):
    """Base of the losses that compare embeddings with learned per-class vectors."""

    supports_multilabel = False
    default_distance = "cosine"

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.num_classes = num_classes
        self.embedding_size = embedding_size

    def check_inputs(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None
    ) -> None:
        name = type(self).__name__
        if ref_embeddings is not None:
            raise ValueError(
                f"{name} compares embeddings with its learned class vectors; it takes no ref_embeddings"
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"{name} was built for embedding_size={self.embedding_size} but embeddings have "
                f"{embeddings.shape[1]} dimensions"
            )
        if labels.ndim == 2:
            if labels.shape[1] != self.num_classes:
                raise ValueError(
                    f"multi-hot labels have {labels.shape[1]} columns but {name} has "
                    f"num_classes={self.num_classes}"
                )
            return
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
            raise ValueError(f"{name} needs integer class ids as labels, got dtype {labels.dtype}")
        if not labels.numel():
            return
        low, high = (bound.item() for bound in torch.aminmax(labels))
        if low < 0 or high >= self.num_classes:
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise ValueError(f"label {bad} is outside [0, num_classes={self.num_classes}) of {name}")

    def class_logits(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None,
        class_vectors: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Checked inputs, then the ``N x rows`` :func:`similarity_logits` of the embeddings against the
        learned class vectors (``rows x embedding_size``)."""
        self.check_inputs(embeddings, labels, ref_embeddings)
        return similarity_logits(self.distance, embeddings, class_vectors, temperature)

    def fused_reduction(self, indices: PairIndices | TripletIndices | None) -> str:
        """The reduction a fused head may apply itself (its scalar passes the shared reducer unchanged):
        ``mean`` or ``sum`` over all samples, else ``none`` (per-sample losses for :meth:`select`)."""
        return self.reduction if indices is None and self.reduction in ("mean", "sum") else "none"

    def select(
        self,
        losses: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The per-sample losses in ``keep`` (default: all) that a miner picked (all without ``indices``)."""
        if indices is not None:
            mined = mined_samples(indices, losses.shape[0], losses.device)
            keep = mined if keep is None else keep & mined
        return losses if keep is None else losses[keep]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


class CosineSoftmaxLoss(ClassWeightLoss):
    """``CE(scale * [s(x, w_1), ..., target_logit(s(x, w_y)), ..., s(x, w_C)], y)`` per sample.

    ``s`` is the loss's similarity (cosine by default: normalised embeddings and weights); subclasses
    define the margin through :meth:`target_logit`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        scale: float,
        distance: str | Distance | None = None,
        reduction: str = "mean",
        init: str = "normal",
    ) -> None:
        super().__init__(num_classes, embedding_size, distance=distance, reduction=reduction)
        self.scale = scale
        self.weight = class_weights(num_classes, embedding_size, init)

    def require_cosine(self) -> None:
        if not isinstance(self.distance, CosineSimilarity):
            raise ValueError(
                f"{type(self).__name__} defines its margin on angles and needs the cosine distance"
            )

    def target_logit(self, target: torch.Tensor) -> torch.Tensor:
        return target

    def margin_with_slope(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`target_logit` and its derivative at ``target`` (None for a slope of 1), without autograd: the
        margin of the fused head."""
        return self.target_logit(target), None

    def fused_normalize_x(self) -> bool | None:
        """Whether the fused head (:func:`cosine_cross_entropy`) normalises the embeddings, or None where it
        does not compute this loss's logits (then :meth:`logits` and autograd's graph are used)."""
        return True if type(self.distance) is CosineSimilarity else None

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scaled logits, margin included, in the working dtype."""
        sims = similarity_logits(self.distance, embeddings, self.weight)
        target_index = labels.long()[:, None]
        target = self.target_logit(sims.gather(1, target_index))
        return self.scale * sims.scatter(1, target_index, target)

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self.check_inputs(embeddings, labels, ref_embeddings)
        normalize_x = self.fused_normalize_x()
        if normalize_x is None:
            losses = F.cross_entropy(self.logits(embeddings, labels), labels.long(), reduction="none")
        else:
            dtype = working_dtype(embeddings, self.weight)
            losses = cosine_cross_entropy(
                embeddings.to(dtype),
                self.weight.to(dtype),
                labels,
                self.scale,
                normalize_x,
                self.margin_with_slope,
                self.fused_reduction(indices),
            )
        return self.select(losses, indices)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"
