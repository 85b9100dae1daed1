"""CUB-200-2011 (Wah et al. 2011) in its official folder format.

``root`` is the ``CUB_200_2011`` folder (or the folder it was extracted into) holding ``images.txt``
(``<image_id> <path under images/>``), ``image_class_labels.txt`` (``<image_id> <class_id>``) and
``classes.txt`` (``<class_id> <name>``). Metric-learning split: the first half of the classes by sorted
class id is ``train``, the second half ``test`` (classes 1-100 / 101-200 for the full dataset);
``train_test_split.txt`` is ignored. Labels are ``0..C-1`` within the split; ``class_ids`` keeps the
original ids and ``class_names`` the original names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, check_split, class_disjoint_half, read_rows, remap_labels


@DATASETS.register("cub200")
class CUB200(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        check_split("cub200", split)
        folder = check_root("cub200", root)
        self.root, self.split = folder, split  # identify the dataset in feature caches
        if not (folder / "images.txt").is_file() and (folder / "CUB_200_2011" / "images.txt").is_file():
            folder = folder / "CUB_200_2011"
        paths = {row[0]: row[1] for row in read_rows(folder / "images.txt", "cub200", 2)}
        image_classes = read_rows(folder / "image_class_labels.txt", "cub200", 2)
        names = {int(row[0]): row[1] for row in read_rows(folder / "classes.txt", "cub200", 2)}
        missing = [image_id for image_id, _ in image_classes if image_id not in paths]
        if missing:
            raise ValueError(f"{folder / 'image_class_labels.txt'}: image id {missing[0]} not in images.txt")
        image_ids = [image_id for image_id, _ in image_classes]
        class_ids = np.array([int(class_id) for _, class_id in image_classes], dtype=np.int64)
        unknown = sorted(set(class_ids.tolist()) - set(names))
        if unknown:
            raise ValueError(f"{folder / 'classes.txt'}: class id {unknown[0]} is used but not listed")
        keep = np.isin(class_ids, class_disjoint_half(list(names), split).astype(np.int64))
        labels, kept_ids = remap_labels(class_ids[keep])
        self.class_ids = np.asarray(kept_ids, dtype=np.int64)
        image_paths = [folder / "images" / paths[image_ids[i]] for i in np.flatnonzero(keep)]
        super().__init__(image_paths, labels, [names[c] for c in kept_ids], transform)
