"""What images must look like for a backbone: :class:`InputSpec`.

It lives with the data, which turns images into tensors (:func:`deepmetric.data.transforms.build_transform`);
each backbone (:mod:`deepmetric.models.backbones`) declares the spec of its network.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How images must look for a backbone: resized to ``resize_size``, centre-cropped to ``image_size``."""

    image_size: int = 224
    resize_size: int = 256
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale_255: bool = False  # inputs in 0..255 instead of 0..1 (BN-Inception's convention)
    bgr: bool = False  # channel order BGR instead of RGB
