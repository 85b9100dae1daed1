"""Any timm model as a backbone: registered as ``timm`` with ``model_name`` (``timm:<name>`` in configs).

Convolutional models return their last feature map (``spatial=True``); models whose features are
tokens (ViTs) return timm's own pooled pre-logits vector (``spatial=False``). The input spec comes from
the model's pretrained config (size, crop fraction, mean, std). ``weights=PATH`` loads a local file in
timm's naming (the classifier in it is dropped).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deepmetric.extras import require
from deepmetric.models.backbones import BACKBONES, Backbone, InputSpec
from deepmetric.models.weights import download_failed

TIMM_PREFIX = "timm:"


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module, pooled: bool) -> None:
        super().__init__()
        self.model = model
        self.pooled = pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        return self.model.forward_head(features, pre_logits=True) if self.pooled else features


def timm_input_spec(model: nn.Module) -> InputSpec:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    channels, _, size = config["input_size"]
    return InputSpec(
        image_size=size,
        resize_size=round(size / config.get("crop_pct", 0.875)),
        channels=channels,
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
    )


@BACKBONES.register("timm")
def timm_backbone(model_name: str, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """``timm.create_model(model_name)`` without its classifier."""
    timm = require("timm", "timm backbones")

    name = model_name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
    if pretrained and weights:
        raise ValueError(
            f"timm:{name}: give pretrained=True (download) or weights=PATH (local file), not both"
        )
    options: dict = {"num_classes": 0}
    if weights and not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if weights:
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    try:
        model = timm.create_model(name, pretrained=pretrained or bool(weights), **options)
    except Exception as error:  # hub / network errors come in many types
        if weights:
            raise ValueError(f"cannot load weights file {weights} into timm:{name}: {error}") from error
        raise download_failed(f"timm:{name}", error) from error
    spec = timm_input_spec(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # one small forward tells a feature map from tokens
        probe = model.forward_features(torch.zeros(1, spec.channels, spec.image_size, spec.image_size))
    model.train(was_training)
    pooled = probe.ndim != 4
    feature_dim = model.num_features
    return Backbone(_TimmFeatures(model, pooled), feature_dim, spec, spatial=not pooled)
