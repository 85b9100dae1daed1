"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) from the official IDX files.

``root`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not, directly, under ``raw/`` or under
torchvision's ``MNIST/raw`` / ``FashionMNIST/raw``. Splits are the official ``train`` (60,000) and
``test`` (10,000) with the same ten classes; ``class_disjoint=True`` gives the zero-shot protocol:
``train`` keeps classes 0-4 of the training images, ``test`` classes 5-9 of the test images
(labels remapped to ``0..4``, ``class_names`` keep the digits / garment names).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ArrayDataset
from deepmetric.data.splits import check_root, check_split, class_disjoint_half, find_file, remap_labels

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)  # fmt: skip
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array: magic ``0 0 <type> <ndim>``, big-endian sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        content = handle.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[content[2]])
    data = np.frombuffer(content, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header announces shape {shape} but holds {data.size} values")
    return data.reshape(shape)


class _IDXDataset(ArrayDataset):
    name: str
    torchvision_folder: str
    class_names_all: tuple[str, ...]

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        class_disjoint: bool = False,
    ) -> None:
        check_split(self.name, split)
        folder = check_root(self.name, root)
        self.root, self.split = folder, split  # identify the dataset in feature caches
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(self._find(folder, f"{prefix}-images-idx3-ubyte"))
        original = read_idx(self._find(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        keep = np.ones(len(original), dtype=bool)
        if class_disjoint:
            keep = np.isin(original, class_disjoint_half(range(10), split).astype(np.int64))
        labels, kept = remap_labels(original[keep])
        self.class_ids = np.asarray(kept, dtype=np.int64)
        super().__init__(images[keep], labels, [self.class_names_all[c] for c in kept], transform)

    def _find(self, folder: Path, stem: str) -> Path:
        places = [folder, folder / "raw", folder / self.torchvision_folder / "raw"]
        return find_file(self.name, [place / f"{stem}{ext}" for place in places for ext in ("", ".gz")])


@DATASETS.register("mnist")
class MNIST(_IDXDataset):
    name, torchvision_folder = "mnist", "MNIST"
    class_names_all = tuple(str(d) for d in range(10))


@DATASETS.register("fashion_mnist")
class FashionMNIST(_IDXDataset):
    name, torchvision_folder = "fashion_mnist", "FashionMNIST"
    class_names_all = FASHION_CLASSES
