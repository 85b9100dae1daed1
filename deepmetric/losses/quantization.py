"""Pulling relaxed codes to binary: the quantization and bit-balance penalties and the alpha schedule.

- quantization: ``Q(U) = mean_{n,k} (|u_nk| - 1)^2 = mean ||sign(u_n) - u_n||^2 / K`` — the gap between the
  relaxed code and its binary code (DPSH's ``||b - u||^2``, DTSH's quantization term), per bit so that its
  weight does not depend on the code length.
- bit balance: ``B(U) = mean_k (mean_n u_nk)^2`` — each bit should be +1 for half of the data (the balance
  constraint of spectral hashing / DSDH); zero when every bit is balanced over the batch.
- :class:`AlphaSchedule`: the weight of ``Q`` as training progresses: constant, or increased from ``alpha``
  to ``alpha_final`` linearly or geometrically (the continuation of HashNet / the DeepHash schedule, e.g.
  1 -> 16): a small weight first lets the codes organise, a large weight at the end makes them binary.
"""

from __future__ import annotations

import torch

from deepmetric.losses.base import MetricLoss

ALPHA_SCHEDULES = ("constant", "linear", "geometric")


def quantization_penalty(codes: torch.Tensor) -> torch.Tensor:
    return ((codes.abs() - 1) ** 2).mean()


def bit_balance_penalty(codes: torch.Tensor) -> torch.Tensor:
    return (codes.mean(dim=0) ** 2).mean()


class QuantizedCodeLoss(MetricLoss):
    """Base of the hashing losses on relaxed codes (DTSH, DPSH): the subclass's loss on the logits
    ``Theta = scale * U U'^T / K`` plus ``quantization_weight * Q(U)``, a term over the whole batch.

    The papers' ``Theta = 1/2 u_i . u_j`` is ``scale = K / 2`` (``scale=None``), whose range [-K/2, K/2]
    grows with the code length ``K``; a fixed ``scale`` keeps the logits in [-scale, scale] at any ``K``, so
    one default fits every code length. The subclasses' defaults are large (sharp logits): a pair or
    triplet on the right side stops contributing, where the papers' soft logits keep pushing every pair
    and, on tanh codes, fit them to the training classes (benchmarks/RESULTS.md, the demo table)."""

    default_distance = "dot"

    def __init__(self, quantization_weight: float, reduction: str, scale: float | None) -> None:
        super().__init__(distance="dot", reduction=reduction)
        if quantization_weight < 0:
            raise ValueError(f"quantization_weight must be >= 0, got {quantization_weight}")
        if quantization_weight > 0 and reduction == "none":
            raise ValueError(
                "reduction='none' returns per-element losses without the batch term; set quantization_weight=0"
            )
        if scale is not None and scale <= 0:
            raise ValueError(f"scale must be positive (or None for the paper's bits / 2), got {scale}")
        self.quantization_weight = quantization_weight
        self.scale = scale

    def theta(self, embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None) -> torch.Tensor:
        """``Theta_ij = scale * u_i . u_j / K`` (``u_i . u_j / 2`` for ``scale=None``)."""
        factor = 0.5 if self.scale is None else self.scale / embeddings.shape[1]
        return factor * self.distance(embeddings, ref_embeddings)

    def forward(self, embeddings, labels, indices=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        loss = super().forward(embeddings, labels, indices, ref_embeddings, ref_labels)
        if self.quantization_weight:
            loss = loss + self.quantization_weight * quantization_penalty(embeddings)
        return loss


class AlphaSchedule:
    """``alpha(p)`` for training progress ``p = iteration / (total_iterations - 1)`` in [0, 1].

    constant: ``alpha``; linear: ``alpha + p (alpha_final - alpha)``; geometric:
    ``alpha (alpha_final / alpha)^p`` (equal ratios per step; needs both weights > 0).
    """

    def __init__(
        self, alpha: float = 1.0, alpha_final: float | None = None, schedule: str = "constant"
    ) -> None:
        if schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"unknown alpha schedule {schedule!r}; choose one of {list(ALPHA_SCHEDULES)}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if schedule != "constant":
            if alpha_final is None:
                raise ValueError(f"the {schedule!r} alpha schedule needs alpha_final")
            if alpha_final < 0:
                raise ValueError(f"alpha_final must be >= 0, got {alpha_final}")
            if schedule == "geometric" and (alpha <= 0 or alpha_final <= 0):
                raise ValueError("the geometric alpha schedule needs alpha > 0 and alpha_final > 0")
        elif alpha_final is not None and alpha_final != alpha:
            raise ValueError("alpha_final is only used by the linear and geometric schedules; set schedule")
        self.alpha = alpha
        self.alpha_final = alpha if alpha_final is None else alpha_final
        self.schedule = schedule

    def __call__(self, iteration: int, total_iterations: int) -> float:
        if total_iterations <= 0:
            raise ValueError(f"total_iterations must be positive, got {total_iterations}")
        progress = min(max(iteration / max(total_iterations - 1, 1), 0.0), 1.0)
        if self.schedule == "linear":
            return self.alpha + progress * (self.alpha_final - self.alpha)
        if self.schedule == "geometric":
            return self.alpha * (self.alpha_final / self.alpha) ** progress
        return self.alpha
