"""In-Shop Clothes Retrieval (DeepFashion, Liu et al. 2016) in its official format.

``root`` holds ``list_eval_partition.txt`` (at the top or under ``Eval/``): a count line, a header line,
then ``<image_name> <item_id> <train|query|gallery>``. Image names (``img/...``) are relative to ``root``
or to ``root/Img``. Splits: ``train`` (3,997 items, 25,882 images), ``query`` (14,218 images) and
``gallery`` (12,612 images) — query and gallery share their 3,985 items, and their labels are built
from the union of both item lists, so the same item has the same label in both.
``class_names`` are the item ids (``id_00000001``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, check_split, find_file, read_rows

SPLITS = ("train", "query", "gallery")


@DATASETS.register("inshop")
class InShop(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        check_split("inshop", split, SPLITS)
        folder = check_root("inshop", root)
        self.root, self.split = folder, split  # identify the dataset in feature caches
        partition = find_file(
            "inshop", [folder / "list_eval_partition.txt", folder / "Eval" / "list_eval_partition.txt"]
        )
        rows = read_rows(partition, "inshop", 3, skip=2)
        statuses = {r[2] for r in rows} - set(SPLITS)
        if statuses:
            raise ValueError(f"{partition}: unknown evaluation status {sorted(statuses)[0]!r}")
        # query and gallery label items jointly so their labels agree
        group = {"train"} if split == "train" else {"query", "gallery"}
        items = sorted({r[1] for r in rows if r[2] in group})
        label_of = {item: label for label, item in enumerate(items)}
        chosen = [r for r in rows if r[2] == split]
        image_base = folder
        if chosen and not (folder / chosen[0][0]).exists() and (folder / "Img" / chosen[0][0]).exists():
            image_base = folder / "Img"
        labels = np.array([label_of[r[1]] for r in chosen], dtype=np.int64)
        super().__init__([image_base / r[0] for r in chosen], labels, items, transform)
