"""Backbones: networks that turn an image batch into a feature vector per image.

``build_backbone(name, pretrained=..., weights=...)`` returns a :class:`Backbone`: the network, the size
of its features and its input convention (:class:`InputSpec`: image size, channels, normalisation), so the
transforms always match the network they feed.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from deepmetric.data.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec  # noqa: F401  (re-exported)
from deepmetric.registry import Registry

BACKBONES = Registry("backbone")

# ``model.trainable``: which part of the backbone trains. ``head``: none (cached pooled features);
# ``last_stage`` / ``last_2_stages``: the backbone's last one or two stages, trained from cached feature maps
# of the frozen stages before them (partial fine-tuning on a CPU); ``all``: end-to-end fine-tuning.
TRAINABLE = ("head", "last_stage", "last_2_stages", "all")
CUT_POINTS = {"last_stage": 1, "last_2_stages": 2}  # cut point -> number of trailing stages trained


class Backbone(nn.Module):
    """A feature extractor: ``forward(images) -> (N, feature_dim)`` (or a feature map when ``pooling`` is off)."""

    def __init__(
        self, body: nn.Module, feature_dim: int, input_spec: InputSpec, spatial: bool = True
    ) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.input_spec = input_spec
        self.spatial = spatial  # True when ``body`` returns an N x C x H x W map that the head pools

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    @property
    def cut_points(self) -> tuple[str, ...]:
        """The ``model.trainable`` cut points this backbone can be split at (its body lists ``stages()``)."""
        return tuple(CUT_POINTS) if callable(getattr(self.body, "stages", None)) else ()

    def split(self, cut: str) -> tuple[nn.Module, nn.Module]:
        """``(trunk, tail)`` with ``tail(trunk(images)) == self(images)``: the frozen stages and the last
        ``CUT_POINTS[cut]`` stages. Both share this backbone's modules (no copy)."""
        if cut not in self.cut_points:
            available = list(self.cut_points) or "none"
            raise ValueError(f"this backbone has no cut point {cut!r} (cut points: {available})")
        stages = list(self.body.stages())
        count = CUT_POINTS[cut]
        return nn.Sequential(*stages[:-count]), nn.Sequential(*stages[-count:])


class StagedSequential(nn.Sequential):
    """An ``nn.Sequential`` body that also lists its stages: ``stage_starts`` are the indices where stages
    begin (after the first), so that the backbone can be cut between them."""

    def __init__(self, *layers: nn.Module, stage_starts: tuple[int, ...]) -> None:
        super().__init__(*layers)
        self.stage_starts = stage_starts

    def stages(self) -> list[nn.Module]:
        bounds = [0, *self.stage_starts, len(self)]
        layers = list(self)
        return [nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds)]


@BACKBONES.register("small_cnn")
def small_cnn(
    pretrained: bool = False,
    weights: str | None = None,
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 32,
) -> Backbone:
    """A small convolutional network for tiny grey images (MNIST-sized inputs, the demo's 8x8 digits).

    Images are resized to ``image_size`` x ``image_size`` (default 28, MNIST's and Fashion-MNIST's own size,
    so they pass unchanged; the demo upsamples its 8x8 digits to 16). Layers: two 3x3 convolutions of
    ``width`` channels, a 2x2 max-pool, then a 3x3 convolution of ``2 * width`` channels (the width
    doubles in the third block), each followed by BatchNorm and ReLU: the feature map has ``2 * width``
    channels (``feature_dim``) and ``image_size / 2`` pixels a side. ``in_channels``: 1 (grey) or 3 (RGB,
    e.g. CIFAR); each channel is normalised with mean 0.5 and std 0.5.
    """
    for name, value in (("in_channels", in_channels), ("image_size", image_size), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"small_cnn: {name} must be a positive integer, got {value!r}")
    if pretrained or weights:
        raise ValueError("small_cnn has no pretrained weights; set model.pretrained=false")
    body = StagedSequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        stage_starts=(3, 7),  # three stages: conv, conv + pool, conv
    )
    # trained from scratch, so no dataset statistics apply: every channel maps 0..1 to -1..1
    half = (0.5,) * in_channels
    spec = InputSpec(image_size=image_size, resize_size=image_size, channels=in_channels, mean=half, std=half)
    return Backbone(body, 2 * width, spec)


def build_backbone(name: str, **kwargs) -> Backbone:
    """Build the backbone registered as ``name``, or any timm model as ``timm:<model name>``."""
    if name.startswith("timm:"):
        return BACKBONES.build("timm", model_name=name.removeprefix("timm:"), **kwargs)
    return BACKBONES.build(name, **kwargs)


def is_backbone_name(name: str) -> bool:
    return name in BACKBONES or (name.startswith("timm:") and len(name) > len("timm:"))
