"""Any image collection laid out as one sub-folder per class (``root/<class>/<images>``).

Split rule: when ``root/<split>`` is a folder (``root/train/<class>/...``, ``root/test/<class>/...``), the
split is read from it. Otherwise the classes under ``root`` are sorted by folder name and the
metric-learning class-disjoint rule applies: the first half of the classes is ``train``, the second half
``test`` (the extra class of an odd count goes to ``test``); ``split="all"`` keeps every class.
Images are the files with an image extension anywhere under a class folder, in sorted order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, class_disjoint_half

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@DATASETS.register("folder")
class ImageFolder(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        base = check_root("folder", root)
        self.root, self.split = base, split  # identify the dataset in feature caches
        if (base / split).is_dir():
            classes = class_folders(base / split)
        elif split in ("train", "test", "all"):
            classes = class_folders(base)
            if split != "all":
                chosen = set(class_disjoint_half([c.name for c in classes], split))
                classes = [c for c in classes if c.name in chosen]
        else:
            raise ValueError(
                f"folder split {split!r} is neither a sub-folder of {base} nor one of 'train', 'test', 'all'"
            )
        paths, labels = [], []
        for label, class_folder in enumerate(classes):
            images = image_files(class_folder)
            paths += images
            labels += [label] * len(images)
        if not paths:
            raise FileNotFoundError(
                f"folder dataset {base} (split {split!r}) has no images in class sub-folders"
            )
        super().__init__(paths, np.asarray(labels, dtype=np.int64), [c.name for c in classes], transform)
