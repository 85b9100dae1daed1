"""A CSV/TSV list of images: one row per image, ``path,label`` (plus an optional ``split`` column).

``root`` is the list file itself, or a folder holding ``<split>.csv`` / ``<split>.tsv`` / ``<split>.txt``.
Paths are relative to the list file's folder (absolute paths are kept). The delimiter is a tab for
``.tsv`` files or when the first line holds one, a comma otherwise. The first row is a header when its
cells are column names (``path``/``image``/``file``/``filename`` and ``label``/``class``/``target``/
``class_name``, optionally ``split``); ``header=True/False`` forces it. Without a header the columns are
path, label[, split]. Labels may be integers or names (an empty, ``nan`` or ``null`` label is refused: a missing value, not a
class); they are remapped to ``0..C-1`` in sorted order
(numeric for integers) and the originals kept as ``class_names``.

Split of a single file: rows whose ``split`` column equals ``split`` when the file has one, otherwise
the class-disjoint rule (first half of the sorted classes ``train``, second half ``test``;
``split="all"`` keeps every row).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from deepmetric.data.base import DATASETS, ImageFileDataset
from deepmetric.data.splits import check_root, class_disjoint_half, find_file, remap_labels

PATH_COLUMNS = ("path", "image", "image_path", "file", "filename", "filepath")
LABEL_COLUMNS = ("label", "class", "class_id", "class_name", "target")
LIST_SUFFIXES = (".csv", ".tsv", ".txt")
# How spreadsheets and pandas write a missing value; never a class.
MISSING_LABELS = ("", "nan", "none", "null", "na", "n/a")


def _is_header(row: list[str]) -> bool:
    cells = {cell.strip().lower() for cell in row}
    return bool(cells & set(PATH_COLUMNS)) and bool(cells & set(LABEL_COLUMNS))


def _columns(row: list[str], list_file: Path) -> tuple[int, int, int | None]:
    cells = [cell.strip().lower() for cell in row]
    path_column = next((cells.index(c) for c in PATH_COLUMNS if c in cells), None)
    label_column = next((cells.index(c) for c in LABEL_COLUMNS if c in cells), None)
    if path_column is None or label_column is None:
        raise ValueError(
            f"{list_file}: header {row} needs a path column ({'/'.join(PATH_COLUMNS)}) "
            f"and a label column ({'/'.join(LABEL_COLUMNS)})"
        )
    return path_column, label_column, cells.index("split") if "split" in cells else None


def _class_sort_key(values: list[str]) -> list:
    """Integer labels sort numerically (2 before 10), names alphabetically."""
    try:
        return [int(v) for v in values]
    except ValueError:
        return list(values)


@DATASETS.register("csv")
class ImageList(ImageFileDataset):
    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        transform: Callable | None = None,
        header: bool | None = None,
    ) -> None:
        base = check_root("csv", root)
        self.root, self.split = base, split  # identify the dataset in feature caches
        own_file = base.is_dir()
        list_file = find_file("csv", [base / f"{split}{s}" for s in LIST_SUFFIXES]) if own_file else base
        try:  # utf-8-sig: spreadsheets start their CSV files with a byte-order mark
            text = list_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"{list_file} is not UTF-8 text: {error}") from None
        first_line = text.split("\n", 1)[0]
        delimiter = "\t" if list_file.suffix == ".tsv" or "\t" in first_line else ","
        rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if "".join(row).strip()]
        if not rows:
            raise ValueError(f"{list_file} lists no images")
        has_header = _is_header(rows[0]) if header is None else header
        path_column, label_column, split_column = _columns(rows[0], list_file) if has_header else (0, 1, None)
        if not has_header and len(rows[0]) >= 3:
            split_column = 2
        rows = rows[1:] if has_header else rows
        if not rows:
            raise ValueError(f"{list_file} has a header row but no image rows")
        for number, row in enumerate(rows, start=2 if has_header else 1):
            if len(row) <= max(path_column, label_column, split_column or 0):
                raise ValueError(f"{list_file}:{number}: expected path and label columns, got {row}")
            if row[label_column].strip().lower() in MISSING_LABELS:
                raise ValueError(
                    f"{list_file}:{number}: missing label {row[label_column]!r} for {row[path_column]!r}"
                )
            if not row[path_column].strip():
                raise ValueError(f"{list_file}:{number}: empty image path")
        if own_file:
            chosen = rows
        elif split_column is not None:
            chosen = [row for row in rows if row[split_column].strip() == split]
            if not chosen:
                found = sorted({row[split_column].strip() for row in rows})
                raise ValueError(f"{list_file} has no row with split {split!r}; its splits are {found}")
        elif split == "all":
            chosen = rows
        elif split in ("train", "test"):
            keys = _class_sort_key([row[label_column].strip() for row in rows])
            kept = set(class_disjoint_half(keys, split).tolist())
            chosen = [row for row, key in zip(rows, keys) if key in kept]
        else:
            raise ValueError(
                f"{list_file} has no split column; split must be 'train', 'test' or 'all': {split!r}"
            )
        if not chosen:
            raise ValueError(f"{list_file}: split {split!r} holds no rows (too few classes to split in two?)")
        labels, classes = remap_labels(_class_sort_key([row[label_column].strip() for row in chosen]))
        paths = [list_file.parent / row[path_column].strip() for row in chosen]
        super().__init__(paths, labels, [str(c) for c in classes], transform)
