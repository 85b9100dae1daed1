"""What every dataset exposes, and the registry behind :func:`deepmetric.data.get_dataset`.

A dataset yields ``(image, label)``; ``dataset.labels`` is the integer label array (read from the
annotation files, no image decoded) and ``dataset.class_names[label]`` names a class. Splits follow the
metric-learning convention: ``train`` and ``test`` hold disjoint classes (In-Shop: ``train``, ``query``,
``gallery``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepmetric.registry import Registry

DATASETS = Registry("dataset")


class LabeledDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill ``labels`` (int64 array) and ``class_names`` and implement ``load``."""

    labels: np.ndarray
    class_names: list[str]

    def __init__(self, transform: Callable[[Any], Any] | None = None) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Any:
        """The raw sample (a PIL image or an array) at ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))


class ArrayDataset(LabeledDataset):
    """Images held in memory as a ``N x H x W`` (grey) or ``N x H x W x C`` uint8 array."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: list[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(transform)
        if len(images) != len(labels):
            raise ValueError(f"images has {len(images)} entries but labels has {len(labels)}")
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be N x H x W or N x H x W x C, got shape {images.shape}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        num = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num)]

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class ImageFileDataset(LabeledDataset):
    """Images read from files; a missing or corrupt file raises an error naming it."""

    def __init__(
        self,
        paths: list[Path],
        labels: np.ndarray,
        class_names: list[str],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(transform)
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)

    def load(self, index: int) -> Image.Image:
        return load_image(self.paths[index])


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB, with an error that names the file when it is missing or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read image {path}: {error}") from error


def subset(dataset: LabeledDataset, keep: np.ndarray) -> torch.utils.data.Subset:
    """A view of ``dataset`` restricted to the boolean mask or index array ``keep``, with ``labels`` set."""
    indices = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
    view = torch.utils.data.Subset(dataset, indices.tolist())
    view.labels = dataset.labels[indices]
    view.class_names = dataset.class_names
    return view


def image_paths(dataset: torch.utils.data.Dataset) -> list[str] | None:
    """The absolute image file of each item of ``dataset`` (through ``Subset``s), or None without files."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, torch.utils.data.Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    paths = getattr(dataset, "paths", None)
    return None if paths is None else [str(Path(paths[i]).resolve()) for i in indices]


def get_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **kwargs,
) -> LabeledDataset:
    """Build the dataset registered as ``name`` (``cub200``, ``cars196``, ``sop``, ``inshop``, ``cifar10``, ...)."""
    return DATASETS.build(name, root=root, split=split, transform=transform, **kwargs)
