"""Stanford Online Products (Oh Song et al. 2016) in its official format.

``root`` is the ``Stanford_Online_Products`` folder with ``Ebay_train.txt`` / ``Ebay_test.txt``
(header ``image_id class_id super_class_id path``; paths relative to ``root``). The official split is
class-disjoint: 11,318 products (59,551 images) in ``train``, 11,316 (60,502) in ``test``. Labels are
product ids remapped to ``0..C-1``; ``super_labels`` holds the 12 category labels (``0..11`` in
``super_class_names`` order, e.g. ``bicycle``), ``class_names`` the original product ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, check_split, read_rows, remap_labels


@DATASETS.register("sop")
class StanfordOnlineProducts(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        check_split("sop", split)
        folder = check_root("sop", root)
        self.root, self.split = folder, split  # identify the dataset in feature caches
        if not (folder / "Ebay_train.txt").is_file() and (folder / "Stanford_Online_Products").is_dir():
            folder = folder / "Stanford_Online_Products"
        rows = read_rows(folder / f"Ebay_{split}.txt", "sop", 4, skip=1)
        labels, class_ids = remap_labels(np.array([int(r[1]) for r in rows], dtype=np.int64))
        super_ids = np.array([int(r[2]) for r in rows], dtype=np.int64)
        self.super_labels, super_kept = remap_labels(super_ids)
        # the category name is the top folder of any of its images, e.g. "bicycle_final"
        folder_of = {int(r[2]): r[3].split("/")[0].removesuffix("_final") for r in rows}
        self.super_class_names = [folder_of[s] for s in super_kept]
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        super().__init__([folder / r[3] for r in rows], labels, [str(c) for c in class_ids], transform)
