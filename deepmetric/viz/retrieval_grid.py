"""Retrieval grids: each query image followed by its top-k results, framed green (right class) or red.

Under each result is its score by the chosen distance (``cosine``: similarity, larger is closer;
``euclidean``: distance, smaller is closer) and its class. :func:`plot_worst_queries` shows the queries
with the lowest average precision, which is where the failure modes are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from deepmetric.distances import Distance, get_distance
from deepmetric.masks import same_class
from deepmetric.viz.figures import new_figure
from deepmetric.viz.images import image_array
from deepmetric.viz.ranking import ArrayLike, average_precision_per_query, nearest_neighbors

ImageLoader = Callable[[int], Image.Image]

RIGHT_COLOR = "#1a9e1a"
WRONG_COLOR = "#d62728"
QUERY_COLOR = "#1f4e9e"
_TILE_PX = 96


# Characters of a class name that fit under a tile at the caption's font size; longer names are cut.
_CAPTION_CHARS = 18


def _class_name(label: np.ndarray, class_names: Sequence[str] | None) -> str:
    if label.ndim:  # multi-hot row
        ids = np.flatnonzero(label)
        name = ",".join(class_names[i] if class_names is not None else str(i) for i in ids)
    else:
        name = class_names[int(label)] if class_names is not None else str(int(label))
    return name if len(name) <= _CAPTION_CHARS else name[: _CAPTION_CHARS - 1] + "…"


def score_text(value: float) -> str:
    """3 decimals for similarities and small distances, 1 for large distances (raw pixel spaces)."""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _draw_tile(ax: Axes, image: Image.Image, color: str, caption: str) -> None:
    array = image_array(image, _TILE_PX)
    if array.ndim == 2:
        ax.imshow(array, cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(array)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
    ax.set_xlabel(caption, fontsize=8)


def _grid_figure(num_rows: int, num_cols: int, with_title: bool) -> tuple[Figure, np.ndarray]:
    """Tiles of fixed size in inches, laid out by hand: constrained layout doubled the drawing time of a
    36-tile grid, and tiles with captions of known height do not need it."""
    tile, caption, top = 1.2, 0.5, 0.3 + (0.35 if with_title else 0)
    width, height = 1.45 * num_cols, num_rows * (tile + caption) + top
    figure = new_figure(width, height, constrained=False)
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    figure.subplots_adjust(
        left=0.1 / width,
        right=1 - 0.1 / width,
        top=1 - top / height,
        bottom=caption / height,
        wspace=0.12,
        hspace=caption / tile,
    )
    return figure, axes


def choose_queries(num_items: int, num_queries: int, seed: int = 0) -> np.ndarray:
    """A seeded random choice of ``min(num_queries, num_items)`` distinct query indices."""
    if num_queries < 1:
        raise ValueError(f"num_queries must be at least 1, got {num_queries}")
    return np.random.default_rng(seed).choice(num_items, size=min(num_queries, num_items), replace=False)


def plot_retrieval_grid(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    load_query_image: ImageLoader,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    load_gallery_image: ImageLoader | None = None,
    *,
    queries: Sequence[int] | None = None,
    num_queries: int = 5,
    k: int = 5,
    distance: str | Distance = "cosine",
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    row_notes: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """A ``len(queries) x (k + 1)`` grid: query image, then its ``k`` nearest gallery items.

    ``queries`` are query indices; when None, ``num_queries`` are drawn at random (seeded). With no
    gallery, each query is searched among the other queries (leave-one-out) and ``load_query_image``
    loads the results too. ``row_notes[r]`` is added under query ``r`` (e.g. its average precision).
    """
    dist = get_distance(distance)
    if gallery_embeddings is not None and load_gallery_image is None:
        raise ValueError("load_gallery_image is required when gallery_embeddings are given")
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("gallery_embeddings and gallery_labels must be given together")
    q_labels = torch.as_tensor(np.asarray(query_labels), dtype=torch.int64)
    g_labels = (
        q_labels if gallery_labels is None else torch.as_tensor(np.asarray(gallery_labels), dtype=torch.int64)
    )
    load_result = load_query_image if load_gallery_image is None else load_gallery_image
    rows = (
        choose_queries(len(q_labels), num_queries, seed)
        if queries is None
        else np.asarray(queries, dtype=np.int64)
    )
    if rows.ndim != 1 or len(rows) == 0:
        raise ValueError("queries must be a non-empty list of query indices")
    if row_notes is not None and len(row_notes) != len(rows):
        raise ValueError(f"row_notes has {len(row_notes)} entries for {len(rows)} queries")
    indices, scores = nearest_neighbors(
        query_embeddings, k, gallery_embeddings, distance=dist, query_indices=rows
    )
    right = same_class(q_labels[torch.as_tensor(rows)], g_labels)
    q_labels_np, g_labels_np = q_labels.numpy(), g_labels.numpy()

    figure, axes = _grid_figure(len(rows), k + 1, bool(title))
    for r, query in enumerate(rows):
        caption = _class_name(q_labels_np[query], class_names)  # the column's title says "query"
        if row_notes is not None:
            caption += f"\n{row_notes[r]}"
        _draw_tile(axes[r, 0], load_query_image(int(query)), QUERY_COLOR, caption)
        for c in range(k):
            item = int(indices[r, c])
            is_right = bool(right[r, item])
            caption = f"{dist.name} {score_text(scores[r, c])}\n{_class_name(g_labels_np[item], class_names)}"
            _draw_tile(axes[r, c + 1], load_result(item), RIGHT_COLOR if is_right else WRONG_COLOR, caption)
    for c in range(k + 1):
        axes[0, c].set_title("query" if c == 0 else f"#{c}", fontsize=9)
    if title:
        figure.suptitle(title)
    return figure


def worst_queries(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    *,
    num_queries: int = 5,
    distance: str | Distance = "cosine",
    candidates: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(query indices, their average precision)`` for the ``num_queries`` lowest-AP queries, worst first.

    ``candidates`` restricts the search to some queries (for large sets); queries without any relevant
    gallery item have no AP and are skipped.
    """
    candidates_arr = (
        np.arange(len(np.asarray(query_labels)))
        if candidates is None
        else np.asarray(candidates, dtype=np.int64)
    )
    ap = average_precision_per_query(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        distance=distance,
        query_indices=candidates_arr,
    )
    defined = np.flatnonzero(~np.isnan(ap))
    if len(defined) == 0:
        raise ValueError("no query has a relevant gallery item, so no average precision is defined")
    order = defined[np.argsort(ap[defined], kind="stable")][:num_queries]
    return candidates_arr[order], ap[order]


def plot_worst_queries(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    load_query_image: ImageLoader,
    gallery_embeddings: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    load_gallery_image: ImageLoader | None = None,
    *,
    num_queries: int = 5,
    k: int = 5,
    distance: str | Distance = "cosine",
    class_names: Sequence[str] | None = None,
    candidates: Sequence[int] | None = None,
    title: str | None = "Worst queries (lowest average precision)",
) -> Figure:
    """The retrieval grid of the lowest-AP queries (see :func:`worst_queries`), each row noting its AP."""
    rows, ap = worst_queries(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        num_queries=num_queries,
        distance=distance,
        candidates=candidates,
    )
    return plot_retrieval_grid(
        query_embeddings,
        query_labels,
        load_query_image,
        gallery_embeddings,
        gallery_labels,
        load_gallery_image,
        queries=rows,
        k=k,
        distance=distance,
        class_names=class_names,
        row_notes=[f"AP {value:.3f}" for value in ap],
        title=title,
    )
