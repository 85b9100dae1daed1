"""Any image collection laid out as one sub-folder per class (``root/<class>/<images>``).

Split rule: when ``root/<split>`` is a folder (``root/train/<class>/...``, ``root/test/<class>/...``), the
split is read from it. Otherwise the classes under ``root`` are sorted by folder name and the
metric-learning class-disjoint rule applies: the first half of the classes is ``train``, the second half
``test`` (the extra class of an odd count goes to ``test``); ``split="all"`` keeps every class.
Images are the files with an image extension anywhere under a class folder, in sorted order.

Every class folder must hold at least ``min_images`` images (default 2: a class of one image has no
positive pair to train on or retrieve); a class below that, an empty folder included, is refused by name
before the split, since dropping it silently would move the train/test boundary. ``min_images=1``
(``data.options: {min_images: 1}``) accepts single-image classes.
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


def images_by_class(classes: list[Path], min_images: int) -> dict[str, list[Path]]:
    """Class name -> its image files; every class must have ``min_images`` of them."""
    found = {c.name: image_files(c) for c in classes}
    small = [(name, len(images)) for name, images in found.items() if len(images) < min_images]
    if small:
        listed = ", ".join(f"{name!r} ({count})" for name, count in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise ValueError(
            f"folder dataset {classes[0].parent}: class folders with fewer than {min_images} images: "
            f"{listed}{more}; remove them or add images (data.options.min_images=1 accepts single images)"
        )
    return found


@DATASETS.register("folder")
class ImageFolder(ImageFileDataset):
    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        min_images: int = 2,
    ) -> None:
        base = check_root("folder", root)
        if not base.is_dir():
            raise ValueError(f"folder dataset root {base} is a file; give the folder of class sub-folders")
        if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
            raise ValueError(f"folder: min_images must be a positive integer, got {min_images!r}")
        self.root, self.split = base, split  # identify the dataset in feature caches
        if (base / split).is_dir():
            classes = class_folders(base / split)
            images = images_by_class(classes, min_images)
        elif split in ("train", "test", "all"):
            classes = class_folders(base)
            images = images_by_class(classes, min_images)
            if split != "all":
                chosen = set(class_disjoint_half([c.name for c in classes], split))
                classes = [c for c in classes if c.name in chosen]
        else:
            raise ValueError(
                f"folder split {split!r} is neither a sub-folder of {base} nor one of 'train', 'test', 'all'"
            )
        paths, labels = [], []
        for label, class_folder in enumerate(classes):
            paths += images[class_folder.name]
            labels += [label] * len(images[class_folder.name])
        if not paths:
            raise FileNotFoundError(
                f"folder dataset {base} (split {split!r}) has no images in class sub-folders"
            )
        super().__init__(paths, np.asarray(labels, dtype=np.int64), [c.name for c in classes], transform)
