"""Omniglot (Lake et al. 2015) from the official ``images_background`` / ``images_evaluation`` folders.

``root`` holds ``images_background/`` and ``images_evaluation/`` (extracted from the official zips,
directly or under torchvision's ``omniglot-py/``), each ``<Alphabet>/<characterNN>/<id>_<drawer>.png``.
``train`` is the background set (30 alphabets, 964 characters), ``test`` the evaluation set (20 other
alphabets, 659 characters): already a zero-shot split. A class is one character, named
``"Alphabet/characterNN"`` and ordered by name; ``super_labels`` / ``super_class_names`` hold the alphabets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, check_split

FOLDERS = {"train": "images_background", "test": "images_evaluation"}


@DATASETS.register("omniglot")
class Omniglot(ImageFileDataset):
    def __init__(
        self, root: str | Path | None, split: str = "train", transform: Callable | None = None
    ) -> None:
        check_split("omniglot", split)
        base = check_root("omniglot", root)
        self.root, self.split = base, split  # identify the dataset in feature caches
        folder = base / FOLDERS[split]
        if not folder.is_dir() and (base / "omniglot-py" / FOLDERS[split]).is_dir():
            folder = base / "omniglot-py" / FOLDERS[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"omniglot folder not found: {folder}")
        alphabets = sorted(p for p in folder.iterdir() if p.is_dir())
        paths, labels, super_labels, names = [], [], [], []
        for alphabet_index, alphabet in enumerate(alphabets):
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                images = sorted(character.glob("*.png"))
                paths += images
                labels += [len(names)] * len(images)
                super_labels += [alphabet_index] * len(images)
                names.append(f"{alphabet.name}/{character.name}")
        if not paths:
            raise FileNotFoundError(f"omniglot folder {folder} holds no <Alphabet>/<character>/*.png images")
        self.super_labels = np.asarray(super_labels, dtype=np.int64)
        self.super_class_names = [a.name for a in alphabets]
        super().__init__(paths, np.asarray(labels, dtype=np.int64), names, transform)
