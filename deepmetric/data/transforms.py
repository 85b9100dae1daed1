"""Image transforms that match a backbone's :class:`~deepmetric.data.spec.InputSpec`.

``build_transform(spec, train)`` turns a PIL image into the tensor the backbone expects:

- evaluation: ``Resize(spec.resize_size)`` (shorter side) + ``CenterCrop(spec.image_size)``;
- training, ``augment="standard"``: ``RandomResizedCrop(spec.image_size)`` + ``RandomHorizontalFlip``
  (the usual metric-learning augmentation); ``augment="light"``: the evaluation pipeline followed by a small
  random affine warp (rotation, shift, scale; no flip: for digits, characters and text);
  ``augment="none"``: the evaluation pipeline;

then the channels are converted to ``spec.channels`` (grey -> RGB or RGB -> grey), the image becomes a
float tensor in 0..1 (0..255 with ``spec.scale_255``), channels are reversed with ``spec.bgr`` and the
result is normalised with ``spec.mean`` / ``spec.std`` (given in the backbone's channel order, so BGR
when ``spec.bgr``). Every step has a stable ``repr``, so the pipeline's ``repr`` can key a feature cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from deepmetric.data.spec import InputSpec

AUGMENTATIONS = ("standard", "light", "none")


class ConvertChannels:
    """PIL image -> ``channels`` channels: 1 = grey ("L"), 3 = RGB (grey is replicated)."""

    def __init__(self, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"images can be converted to 1 or 3 channels, not {channels}")
        self.channels = channels

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        mode = "L" if self.channels == 1 else "RGB"
        return image if image.mode == mode else image.convert(mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


class ScaleTo255:
    """0..1 tensor -> 0..255 (networks ported from Caffe, e.g. BN-Inception, expect raw pixel values)."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * 255.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReverseChannels:
    """RGB -> BGR on a C x H x W tensor (Caffe ordering)."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.flip(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transform(
    spec: InputSpec, train: bool, augment: str = "standard"
) -> Callable[[Image.Image], torch.Tensor]:
    """The PIL image -> normalised tensor pipeline for a backbone with input convention ``spec``."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; choose one of {list(AUGMENTATIONS)}")
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise ValueError(
            f"InputSpec has {spec.channels} channels but mean {spec.mean} and std {spec.std}; "
            "give one mean and std per channel"
        )
    # channel conversion first: resizing one grey plane is cheaper than three equal ones
    steps: list[Callable] = [ConvertChannels(spec.channels)]
    if train and augment == "standard":
        steps += [T.RandomResizedCrop(spec.image_size), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(spec.resize_size), T.CenterCrop(spec.image_size)]
        if train and augment == "light":
            steps.append(T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    steps.append(T.ToTensor())
    if spec.scale_255:
        steps.append(ScaleTo255())
    if spec.bgr:
        steps.append(ReverseChannels())
    steps.append(T.Normalize(spec.mean, spec.std))
    return T.Compose(steps)
