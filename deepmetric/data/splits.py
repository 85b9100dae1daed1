"""Helpers shared by the dataset readers: split checks, class-disjoint halves, label remapping, file lookup.

The metric-learning protocol trains on one set of classes and evaluates retrieval on a disjoint one.
When a dataset has no official class-disjoint split, :func:`class_disjoint_half` puts the first half of
the classes (sorted by id or name) in ``train`` and the rest in ``test``; with an odd count the extra
class goes to ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

TRAIN_TEST = ("train", "test")


def check_split(dataset: str, split: str, allowed: Sequence[str] = TRAIN_TEST) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} has splits {list(allowed)}, not {split!r}")


def check_root(dataset: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"{dataset} needs root: the folder that holds the dataset")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{dataset} root not found: {path}")
    return path


def require_file(path: Path, dataset: str) -> Path:
    """``path`` itself, or an error naming it when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} annotation file not found: {path}")
    return path


def find_file(dataset: str, candidates: Sequence[Path]) -> Path:
    """The first existing file of ``candidates`` (alternative layouts), or an error listing them all."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{dataset} annotation file not found; looked for: {tried}")


def class_disjoint_half(class_keys: Sequence, split: str) -> np.ndarray:
    """The classes of ``split`` ("train": first half of the sorted keys, "test": the second half)."""
    keys = np.array(sorted(set(class_keys)), dtype=object)
    half = len(keys) // 2
    return keys[:half] if split == "train" else keys[half:]


def remap_labels(original: Sequence) -> tuple[np.ndarray, list]:
    """Original class ids or names -> labels ``0..C-1`` in sorted order of the originals.

    Returns the int64 labels and the sorted originals, so ``originals[label]`` recovers each class.
    """
    values = np.asarray(original)
    classes, labels = np.unique(values, return_inverse=True)
    return labels.astype(np.int64).reshape(-1), classes.tolist()


def read_rows(path: Path, dataset: str, columns: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of an annotation file, each with at least ``columns`` fields."""
    rows = []
    with require_file(path, dataset).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) < columns:
                raise ValueError(f"{path}:{number}: expected {columns} fields, got {line.strip()!r}")
            rows.append(fields)
    return rows
