"""Images stored as arrays in a NumPy ``.npz`` file: ``images`` (``N x H x W`` grey or ``N x H x W x C``
uint8), ``labels`` (``N`` integers) and optionally ``class_names`` (``class_names[label]``).

Two ways to split:

- separate files: ``root`` is a folder and ``splits`` maps split names to file names in it, e.g.
  ``{"train": "omniglot_background.npz", "test": "omniglot_evaluation.npz"}``; without ``splits`` the
  file ``root/<split>.npz`` is read. The whole file is the split, unless the entry also names the
  classes to keep: ``{"file": F, "classes": "train"}`` keeps the first half of F's sorted labels
  (``"test"`` the second half, ``"all"`` every class). So files that hold the same classes, such as
  MNIST's train and test files, give class-disjoint splits: ``{"train": {"file": "mnist_train.npz",
  "classes": "train"}, "test": {"file": "mnist_test.npz", "classes": "test"}}``.
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
from deepmetric.data.splits import check_root, class_disjoint_half, remap_labels


def split_entry(entry: str | dict, split: str) -> tuple[str, str]:
    """A ``splits`` entry -> (file name, class rule): a file name keeps all its classes."""
    if isinstance(entry, str):
        return entry, "all"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("file"), str)
        or set(entry) - {"file", "classes"}
    ):
        raise ValueError(
            f"npz splits[{split!r}]: expected a file name or {{file: F, classes: train}}, got {entry!r}"
        )
    rule = entry.get("classes", "all")
    if rule not in ("train", "test", "all"):
        raise ValueError(f"npz splits[{split!r}].classes must be 'train', 'test' or 'all', got {rule!r}")
    return entry["file"], rule


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list | None]:
    """``images`` (uint8), integer ``labels`` and ``class_names`` (or None) of an .npz file, checked."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"PK":  # .npz files are zip archives
            raise ValueError(f"{path} is not an .npz archive (write it with numpy.savez)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # zipfile, numpy and OS errors for files that are not .npz archives
        raise OSError(f"cannot read npz file {path}: {error}") from error
    with archive:
        missing = [key for key in ("images", "labels") if key not in archive.files]
        if missing:
            raise ValueError(f"{path} has no {missing[0]!r} array (it holds {archive.files})")
        try:
            raw, images = np.asarray(archive["labels"]).reshape(-1), archive["images"]
            names = archive["class_names"].tolist() if "class_names" in archive.files else None
        except Exception as error:  # truncated members, pickled objects
            raise OSError(f"cannot read npz file {path}: {error}") from error
    if raw.dtype.kind not in "iu" and not (
        raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all()
    ):
        raise ValueError(
            f"{path}: labels must be integers, got {raw.dtype} values such as {raw[:3].tolist()}"
        )
    labels = raw.astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8, got {images.dtype}")
    if names is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"{path}: labels must index class_names (0..{len(names) - 1}), got {labels.min()}..{labels.max()}"
        )
    return images, labels, names


@DATASETS.register("npz")
class NpzDataset(ArrayDataset):
    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        splits: dict[str, str | dict[str, str]] | None = None,
    ) -> None:
        base = check_root("npz", root)
        self.root, self.split = base, split  # identify the dataset in feature caches
        if base.is_dir():
            if splits is not None and not isinstance(splits, dict):
                raise ValueError(f"npz: splits must map split names to files, got {splits!r}")
            if splits is not None and split not in splits:
                raise ValueError(f"npz split {split!r} is not in splits {sorted(splits)}")
            name, class_rule = split_entry(splits[split] if splits is not None else f"{split}.npz", split)
            path = base / name
            if not path.is_file():
                raise FileNotFoundError(f"npz file of split {split!r} not found: {path}")
        else:
            if splits is not None:
                raise ValueError(
                    "npz: splits maps split names to files in a folder; root must be that folder"
                )
            if split not in ("train", "test", "all"):
                raise ValueError(f"npz file {base}: split must be 'train', 'test' or 'all', not {split!r}")
            path, class_rule = base, split
        images, original, names = read_npz(path)
        keep = np.ones(len(original), dtype=bool)
        if class_rule != "all":
            keep = np.isin(original, class_disjoint_half(original.tolist(), class_rule).astype(np.int64))
        if not keep.any():
            raise ValueError(f"{path}: split {split!r} holds no images (too few classes to split in two?)")
        images = images[keep]
        labels, kept = remap_labels(original[keep])
        self.class_ids = np.asarray(kept, dtype=np.int64)
        class_names = [str(names[c]) if names is not None else str(c) for c in kept]
        super().__init__(images, labels, class_names, transform)
