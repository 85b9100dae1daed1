"""Turning dataset images (PIL) into arrays matplotlib can draw at a chosen size."""

from __future__ import annotations

import numpy as np
from PIL import Image


def image_array(image: Image.Image, size_px: int | None = None) -> np.ndarray:
    """The image as a uint8 array (``H x W`` grey or ``H x W x 3`` colour), longest side ``size_px``.

    Small images (8x8 digits) are enlarged with nearest-neighbour so their pixels stay sharp; large ones
    are reduced with a smoothing filter. Palette, alpha and 16-bit modes are converted to RGB or L.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"load_image must return a PIL.Image, got {type(image).__name__}")
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    if size_px is not None:
        scale = size_px / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        image = image.resize(new_size, resample)
    return np.asarray(image)
