"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official python pickle batches.

``root`` holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or
``cifar-100-python/`` (``train``, ``test``, ``meta``), or is that folder itself. Splits are the official
``train`` (50,000) and ``test`` (10,000) images, which share their classes (the retrieval protocol of the
hashing papers). ``class_disjoint=True`` gives the zero-shot protocol instead: ``train`` keeps the first
half of the classes from the official training images, ``test`` the second half from the official test
images. CIFAR-100's 20 coarse classes are kept in ``super_labels`` / ``super_class_names``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ArrayDataset
from deepmetric.data.splits import check_root, check_split, class_disjoint_half, remap_labels, require_file


def _unpickle(path: Path, dataset: str) -> dict:
    with require_file(path, dataset).open("rb") as handle:
        try:
            return pickle.load(handle, encoding="latin1")
        except Exception as error:  # a truncated or foreign file raises several types
            raise ValueError(f"cannot read CIFAR batch {path}: {error}") from error


def _batches_to_images(data: np.ndarray) -> np.ndarray:
    # rows are 1024 red, 1024 green, 1024 blue values of a 32 x 32 image
    return np.ascontiguousarray(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


class _CIFAR(ArrayDataset):
    name: str
    folder_name: str

    def _folder(self, root: str | Path | None) -> Path:
        folder = check_root(self.name, root)
        self.root = folder  # identifies the dataset in feature caches
        return folder if folder.name == self.folder_name else folder / self.folder_name

    def _finish(
        self,
        images: np.ndarray,
        fine: np.ndarray,
        names: list[str],
        split: str,
        class_disjoint: bool,
        transform: Callable | None,
    ) -> np.ndarray:
        """Select the split's classes, remap labels and build the array dataset; returns the kept mask."""
        self.split = split
        keep = np.ones(len(fine), dtype=bool)
        if class_disjoint:
            keep = np.isin(fine, class_disjoint_half(range(len(names)), split).astype(np.int64))
        labels, kept = remap_labels(fine[keep])
        self.class_ids = np.asarray(kept, dtype=np.int64)
        super().__init__(images[keep], labels, [names[c] for c in kept], transform)
        return keep


@DATASETS.register("cifar10")
class CIFAR10(_CIFAR):
    name, folder_name = "cifar10", "cifar-10-batches-py"

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        class_disjoint: bool = False,
    ) -> None:
        check_split(self.name, split)
        folder = self._folder(root)
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        batches = [_unpickle(folder / f, self.name) for f in files]
        images = np.concatenate([_batches_to_images(b["data"]) for b in batches])
        fine = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
        names = list(_unpickle(folder / "batches.meta", self.name)["label_names"])
        self._finish(images, fine, names, split, class_disjoint, transform)


@DATASETS.register("cifar100")
class CIFAR100(_CIFAR):
    name, folder_name = "cifar100", "cifar-100-python"

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        class_disjoint: bool = False,
    ) -> None:
        check_split(self.name, split)
        folder = self._folder(root)
        batch = _unpickle(folder / split, self.name)
        meta = _unpickle(folder / "meta", self.name)
        fine = np.asarray(batch["fine_labels"], dtype=np.int64)
        keep = self._finish(
            _batches_to_images(batch["data"]),
            fine,
            list(meta["fine_label_names"]),
            split,
            class_disjoint,
            transform,
        )
        self.super_labels = np.asarray(batch["coarse_labels"], dtype=np.int64)[keep]
        self.super_class_names = list(meta["coarse_label_names"])
