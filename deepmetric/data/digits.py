"""scikit-learn's bundled 8x8 digits: the embedded default behind ``deepmetric demo`` (no download).

Class-disjoint split: ``train`` holds digits 0-4 and ``test`` digits 5-9 (labels stay 0-9).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ArrayDataset


@DATASETS.register("digits")
class Digits(ArrayDataset):
    def __init__(
        self, root: str | Path | None = None, split: str = "train", transform: Callable | None = None
    ) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
        bunch = load_digits()
        # 0..16 grey levels -> 0..255 uint8 images, as any image dataset
        images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
        keep = bunch.target <= 4 if split == "train" else bunch.target >= 5
        names = [str(d) for d in range(10)]
        super().__init__(images[keep], bunch.target[keep], names, transform)
