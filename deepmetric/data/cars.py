"""Cars196 (Krause et al. 2013, Stanford Cars) in the ``cars_annos.mat`` + ``car_ims/`` format.

``root`` holds ``cars_annos.mat`` (read with ``scipy.io.loadmat``; its ``annotations`` give
``relative_im_path`` and ``class``, ``class_names`` the 196 names) and the ``car_ims/`` folder.
Metric-learning split: classes 1-98 are ``train``, 99-196 ``test`` (the official ``test`` flag, a
classification split, is ignored). Labels are ``0..97`` within each split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, check_split, class_disjoint_half, remap_labels, require_file


@DATASETS.register("cars196")
class Cars196(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        from scipy.io import loadmat

        check_split("cars196", split)
        folder = check_root("cars196", root)
        self.root, self.split = folder, split  # identify the dataset in feature caches
        annotation_file = require_file(folder / "cars_annos.mat", "cars196")
        try:
            mat = loadmat(annotation_file, squeeze_me=True)
            annotations = np.atleast_1d(mat["annotations"])
            relative_paths = [str(p) for p in annotations["relative_im_path"]]
            class_ids = np.array([int(c) for c in annotations["class"]], dtype=np.int64)
            all_names = [str(n) for n in np.atleast_1d(mat["class_names"])]
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"{annotation_file} is not a Cars196 annotation file (needs 'annotations' with "
                f"'relative_im_path' and 'class', and 'class_names'): {error}"
            ) from error
        keep = np.isin(class_ids, class_disjoint_half(range(1, len(all_names) + 1), split).astype(np.int64))
        labels, kept_ids = remap_labels(class_ids[keep])
        self.class_ids = np.asarray(kept_ids, dtype=np.int64)
        paths = [folder / relative_paths[i] for i in np.flatnonzero(keep)]
        super().__init__(paths, labels, [all_names[c - 1] for c in kept_ids], transform)
