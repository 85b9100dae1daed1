"""Embedding maps: embeddings projected to 2-D (t-SNE, UMAP when installed, or PCA), coloured by class.

Up to :data:`MAX_LEGEND_CLASSES` classes get a distinct colour each and a legend with the class names;
more classes are coloured along a colormap with a colorbar (a legend would be unreadable). Large sets
are drawn as a seeded random sample; an optional image loader puts small thumbnails on the map.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image

from deepmetric.checks import check_embeddings
from deepmetric.viz.figures import figure_and_axes
from deepmetric.viz.images import image_array

METHODS = ("tsne", "umap", "pca")
MAX_LEGEND_CLASSES = 20
UMAP_MISSING = "UMAP maps need the umap-learn package (pip install umap-learn); it is not installed"
_METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def sample_indices(num_items: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Every index when ``max_points`` is None or not below ``num_items``, else a seeded sorted sample."""
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    if max_points is None or num_items <= max_points:
        return np.arange(num_items)
    return np.sort(np.random.default_rng(seed).choice(num_items, size=max_points, replace=False))


def project_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``N x 2`` coordinates of the embeddings by ``method`` (``tsne``, ``umap`` or ``pca``), seeded."""
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; choose one of {list(METHODS)}")
    points = np.asarray(embeddings, dtype=np.float32)
    check_embeddings(points)
    if len(points) < 4:
        raise ValueError(f"a 2-D map needs at least 4 points, got {len(points)}")
    if points.shape[1] < 2:
        raise ValueError(f"a 2-D map needs embeddings of dimension 2 or more, got {points.shape[1]}")
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # sklearn requires perplexity < N; 30 is the usual value for larger sets
        perplexity = min(30.0, (len(points) - 1) / 3)
        tsne = TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
        )
        # Barnes-Hut's OpenMP threads spin-wait: on a shared CPU they made a 300-point map 18x slower
        # (39.6 s against 2.2 s single-threaded, 2 busy cores); maps hold at most a few thousand points
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(points)
    if method == "umap":
        if not umap_available():
            raise ImportError(UMAP_MISSING)
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(points) - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(points))
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(points)


def spread_out(points: np.ndarray, max_count: int, seed: int = 0, min_separation: float = 0.07) -> np.ndarray:
    """Up to ``max_count`` indices of points at least ``min_separation`` apart (in units of the map's extent).

    Greedy over a seeded shuffle, so thumbnails cover the map without piling onto each other.
    """
    extent = np.ptp(points, axis=0)
    scaled = (points - points.min(0)) / np.where(extent > 0, extent, 1)
    chosen: list[int] = []
    for index in np.random.default_rng(seed).permutation(len(points)):
        if len(chosen) == max_count:
            break
        if not chosen or np.min(np.linalg.norm(scaled[chosen] - scaled[index], axis=1)) >= min_separation:
            chosen.append(int(index))
    return np.array(chosen, dtype=np.int64)


def class_colors(num_classes: int) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per class: distinct (tab10, tab20) up to :data:`MAX_LEGEND_CLASSES` classes, else
    spread along the ``turbo`` colormap."""
    if num_classes <= MAX_LEGEND_CLASSES:
        cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
        return [cmap(i) for i in range(num_classes)]
    return [colormaps["turbo"](i / (num_classes - 1)) for i in range(num_classes)]


def plot_points_2d(
    points: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter ``N x 2`` points coloured by their 1-D class ``labels``; returns the figure.

    ``class_names[label]`` names a class in the legend (default: the label number). Above
    :data:`MAX_LEGEND_CLASSES` classes the figure gets a colorbar axes instead of a legend.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be N x 2, got shape {points.shape}")
    if labels.ndim != 1 or len(labels) != len(points):
        raise ValueError(
            f"labels must be 1-D with one class id per point ({len(points)}), got shape {labels.shape}"
        )
    figure, ax = figure_and_axes(ax, 9, 7)
    classes, class_index = np.unique(labels, return_inverse=True)
    size = 18 if len(points) <= 2000 else 6
    if len(classes) <= MAX_LEGEND_CLASSES:
        for position, (label, color) in enumerate(zip(classes, class_colors(len(classes)))):
            name = class_names[label] if class_names is not None else str(label)
            keep = class_index == position
            ax.scatter(*points[keep].T, s=size, color=color, label=name, alpha=0.85, linewidths=0)
        ax.legend(
            title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", markerscale=1.5
        )
    else:
        scatter = ax.scatter(
            *points.T,
            s=size,
            c=class_index,
            cmap="turbo",
            vmin=0,
            vmax=len(classes) - 1,
            alpha=0.85,
            linewidths=0,
        )
        figure.colorbar(scatter, ax=ax, label=f"class (index among {len(classes)})")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return figure


def add_thumbnails(
    ax: Axes,
    points: np.ndarray,
    item_indices: np.ndarray,
    load_image: Callable[[int], Image.Image],
    *,
    edge_colors: Sequence | None = None,
    max_thumbnails: int = 30,
    size_px: int = 32,
    seed: int = 0,
) -> int:
    """Draw ``load_image(item_indices[j])`` at ``points[j]`` for a spread-out subset, framed in
    ``edge_colors[j]`` (e.g. its class colour); returns how many were drawn."""
    chosen = spread_out(points, max_thumbnails, seed=seed)
    for j in chosen:
        image = image_array(load_image(int(item_indices[j])), size_px)
        offset = OffsetImage(image, cmap="gray" if image.ndim == 2 else None, zoom=1.0)
        frame = {"linewidth": 1.5, "edgecolor": edge_colors[j] if edge_colors is not None else "black"}
        ax.add_artist(AnnotationBbox(offset, points[j], frameon=True, pad=0.15, bboxprops=frame))
    return len(chosen)


def plot_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    method: str = "tsne",
    max_points: int | None = 2000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    load_image: Callable[[int], Image.Image] | None = None,
    max_thumbnails: int = 30,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Project (a seeded sample of at most ``max_points`` of) the embeddings to 2-D and plot them by class.

    ``load_image(i)`` returns the image of item ``i`` (an index into ``embeddings``); when given, up to
    ``max_thumbnails`` thumbnails are placed on the map. ``method="umap"`` raises ImportError with an
    install hint when umap-learn is missing (see :func:`umap_available`).
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    check_embeddings(embeddings)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(
            f"labels must be 1-D with one class id per embedding ({len(embeddings)}), "
            f"got shape {labels.shape}"
        )
    keep = sample_indices(len(embeddings), max_points, seed)
    points = project_2d(embeddings[keep], method=method, seed=seed)
    if title is None:
        shown = f"{len(keep)} of {len(embeddings)}" if len(keep) < len(embeddings) else f"{len(keep)}"
        title = f"{_METHOD_TITLES[method]} map of {shown} embeddings"
    figure = plot_points_2d(points, labels[keep], class_names=class_names, ax=ax, title=title)
    if load_image is not None:
        _, class_index = np.unique(labels[keep], return_inverse=True)
        colors = [class_colors(class_index.max() + 1)[c] for c in class_index]
        map_ax = figure.axes[0] if ax is None else ax
        add_thumbnails(
            map_ax, points, keep, load_image, edge_colors=colors, max_thumbnails=max_thumbnails, seed=seed
        )
    return figure
