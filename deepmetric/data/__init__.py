"""Datasets in their real on-disk formats, with the standard metric-learning splits.

``get_dataset(name, root, split, transform=None)``; every dataset module registers itself in
:data:`DATASETS` and is imported here.
"""

from __future__ import annotations

import importlib
import pkgutil

from deepmetric.data.base import (
    DATASETS,
    ArrayDataset,
    ImageFileDataset,
    LabeledDataset,
    get_dataset,
    image_paths,
    load_image,
    subset,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "ImageFileDataset",
    "LabeledDataset",
    "get_dataset",
    "image_paths",
    "load_image",
    "subset",
]
