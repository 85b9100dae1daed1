"""ArcFace / additive angular margin loss — Deng et al., "ArcFace: Additive Angular Margin Loss for Deep
Face Recognition", CVPR 2019.

With ``theta_c`` the angle between the embedding and the (normalised, bias-free) weight of class ``c``,
scale ``s`` and angular margin ``m`` (radians)::

    L_i = -log( exp(s cos(theta_{y_i} + m))
                / (exp(s cos(theta_{y_i} + m)) + sum_{c != y_i} exp(s cos(theta_c))) )

Defaults ``s = 64``, ``m = 0.5``. Numerics: ``cos(theta + m)`` is computed as
``cos(theta) cos(m) - sin(theta) sin(m)`` with a zero-safe square root for ``sin(theta)``, never through
``arccos`` (whose gradient is infinite at ``cos = +-1``). ``cos(theta + m)`` is not monotonic once
``theta > pi - m``; there the target logit is ``cos(theta) - m sin(m)`` (InsightFace's convention, the
same as PML's). ``easy_margin=True`` instead applies the margin only where ``cos(theta) > 0``.
"""

from __future__ import annotations

import math

import torch

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES
from deepmetric.losses.proxies import (
    CosineSoftmaxLoss,
    additive_angular_margin,
    additive_angular_margin_with_slope,
)


@LOSSES.register("arcface")
class ArcFaceLoss(CosineSoftmaxLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"margin is an angle in radians in [0, pi/2), got {margin}")
        super().__init__(num_classes, embedding_size, scale, distance=distance, reduction=reduction)
        self.require_cosine()
        self.margin = margin
        self.easy_margin = easy_margin

    def target_logit(self, target: torch.Tensor) -> torch.Tensor:
        return additive_angular_margin(target, self.margin, self.easy_margin)

    def margin_with_slope(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return additive_angular_margin_with_slope(target, self.margin, self.easy_margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, easy_margin={self.easy_margin}"
