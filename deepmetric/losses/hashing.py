"""The ``hashing`` loss: any deepmetric pair/triplet loss applied to relaxed codes, plus quantization.

    L = base(U, labels) + alpha(t) * Q(U) + beta * B(U)

``base`` is any registered loss (``triplet``, ``contrastive``, ``dtsh``, ...) built with ``base_params``;
``Q`` the quantization penalty and ``B`` the bit-balance penalty of
:mod:`deepmetric.losses.quantization`; ``alpha(t)`` follows an :class:`AlphaSchedule` over training,
advanced by the trainer through :meth:`HashingLoss.set_progress` (called every iteration).
"""

from __future__ import annotations

from typing import Any

import torch

from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.quantization import AlphaSchedule, bit_balance_penalty, quantization_penalty


@LOSSES.register("hashing")
class HashingLoss(MetricLoss):
    def __init__(
        self,
        base: str = "triplet",
        base_params: dict[str, Any] | None = None,
        alpha: float = 1.0,
        alpha_final: float | None = None,
        alpha_schedule: str = "constant",
        balance_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if base == "hashing":
            raise ValueError("the base loss of 'hashing' cannot be 'hashing' itself")
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight}")
        self.base = LOSSES.build(base, **(base_params or {}))
        if self.base.reduction == "none":
            raise ValueError("the base loss must reduce to a scalar to be combined with the penalties")
        self.distance = self.base.distance
        self.schedule = AlphaSchedule(alpha, alpha_final, alpha_schedule)
        self.alpha = alpha  # the current weight, moved by set_progress
        self.balance_weight = balance_weight

    def set_progress(self, iteration: int, total_iterations: int) -> None:
        self.alpha = self.schedule(iteration, total_iterations)
        if hasattr(self.base, "set_progress"):
            self.base.set_progress(iteration, total_iterations)

    def forward(self, embeddings, labels, indices=None, ref_embeddings=None, ref_labels=None) -> torch.Tensor:
        loss = self.base(embeddings, labels, indices, ref_embeddings, ref_labels)
        if self.alpha:
            loss = loss + self.alpha * quantization_penalty(embeddings)
        if self.balance_weight:
            loss = loss + self.balance_weight * bit_balance_penalty(embeddings)
        return loss

    def extra_repr(self) -> str:
        schedule = self.schedule.schedule
        return f"alpha={self.alpha:g}, schedule={schedule!r}, balance_weight={self.balance_weight:g}"
