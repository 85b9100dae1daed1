"""Images stored as arrays in a NumPy ``.npz`` file: ``images`` (``N x H x W`` grey or ``N x H x W x C``
uint8), ``labels`` (``N`` integers) and optionally ``class_names`` (``class_names[label]``).

Two ways to split:

- separate files: ``root`` is a folder and ``splits`` maps split names to file names in it, e.g.
  ``{"train": "omniglot_background.npz", "test": "omniglot_evaluation.npz"}``; without ``splits`` the
  file ``root/<split>.npz`` is read. The whole file is the split.
- one file: ``root`` is the ``.npz`` file and the class-disjoint rule applies: the first half of the
  sorted labels is ``train``, the second half ``test``; ``split="all"`` keeps everything.

Labels are remapped to ``0..C-1`` within the split; ``class_names`` keep the file's names (or the
original label numbers), ``class_ids`` the original labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ArrayDataset
from deepmetric.data.splits import check_root, class_disjoint_half, remap_labels, require_file


@DATASETS.register("npz")
class NpzDataset(ArrayDataset):
    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        splits: dict[str, str] | None = None,
    ) -> None:
        base = check_root("npz", root)
        self.root, self.split = base, split  # identify the dataset in feature caches
        if base.is_dir():
            if splits is not None and split not in splits:
                raise ValueError(f"npz split {split!r} is not in splits {sorted(splits)}")
            path = require_file(base / (splits[split] if splits is not None else f"{split}.npz"), "npz")
            class_rule = "all"
        else:
            if splits is not None:
                raise ValueError(
                    "npz: splits maps split names to files in a folder; root must be that folder"
                )
            if split not in ("train", "test", "all"):
                raise ValueError(f"npz file {base}: split must be 'train', 'test' or 'all', not {split!r}")
            path, class_rule = base, split
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("images", "labels") if key not in archive.files]
            if missing:
                raise ValueError(f"{path} has no {missing[0]!r} array (it holds {archive.files})")
            original = np.asarray(archive["labels"]).astype(np.int64).reshape(-1)
            keep = np.ones(len(original), dtype=bool)
            if class_rule != "all":
                keep = np.isin(original, class_disjoint_half(original.tolist(), class_rule).astype(np.int64))
            images = archive["images"]
            if len(images) != len(original):
                raise ValueError(f"{path}: {len(images)} images but {len(original)} labels")
            images = images[keep]
            names = archive["class_names"].tolist() if "class_names" in archive.files else None
        labels, kept = remap_labels(original[keep])
        self.class_ids = np.asarray(kept, dtype=np.int64)
        class_names = [str(names[c]) if names is not None else str(c) for c in kept]
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: images must be uint8, got {images.dtype}")
        super().__init__(images, labels, class_names, transform)
