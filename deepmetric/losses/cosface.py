"""CosFace / large margin cosine loss — Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
Recognition", CVPR 2018.

With ``cos(theta_c)`` the cosine between the embedding and the (normalised, bias-free) weight of class
``c``, scale ``s`` and additive cosine margin ``m``::

    L_i = -log( exp(s (cos(theta_{y_i}) - m))
                / (exp(s (cos(theta_{y_i}) - m)) + sum_{c != y_i} exp(s cos(theta_c))) )

Defaults ``s = 64``, ``m = 0.35`` (the paper's face-recognition setting).
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES
from deepmetric.losses.proxies import CosineSoftmaxLoss


@LOSSES.register("cosface")
class CosFaceLoss(CosineSoftmaxLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.35,
        scale: float = 64.0,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, embedding_size, scale, distance=distance, reduction=reduction)
        self.require_cosine()
        self.margin = margin

    def target_logit(self, target: torch.Tensor) -> torch.Tensor:
        return target - self.margin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"
