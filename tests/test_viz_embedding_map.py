"""Embedding maps: projection, sampling, legend vs colorbar, thumbnails, UMAP availability."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.offsetbox import AnnotationBbox
from PIL import Image

from deepmetric.viz.embedding_map import (
    MAX_LEGEND_CLASSES,
    plot_embedding_map,
    plot_points_2d,
    project_2d,
    sample_indices,
    spread_out,
    umap_available,
)
from deepmetric.viz.figures import figure_to_png, save_figure


def clusters(num_classes: int, per_class: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim)) * 10
    labels = np.repeat(np.arange(num_classes), per_class)
    return (centers[labels] + rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def tiny_image(i: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8), (i * 37) % 256, dtype=np.uint8))


def test_sample_indices_is_seeded_distinct_and_capped():
    first, again = sample_indices(100, 30, seed=1), sample_indices(100, 30, seed=1)
    other = sample_indices(100, 30, seed=2)
    assert len(first) == 30 and len(set(first.tolist())) == 30
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(sample_indices(20, 30), np.arange(20))
    with pytest.raises(ValueError, match="max_points"):
        sample_indices(10, 0)


def test_tsne_keeps_separated_clusters_apart_and_is_deterministic():
    embeddings, labels = clusters(3, 20)
    points = project_2d(embeddings, "tsne", seed=0)
    assert points.shape == (60, 2)
    np.testing.assert_allclose(points, project_2d(embeddings, "tsne", seed=0))
    # each point's nearest 2-D neighbour belongs to its own cluster
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    assert (labels[gaps.argmin(1)] == labels).all()


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(np.zeros((10, 3)), "isomap")
    with pytest.raises(ValueError, match="at least 4 points"):
        project_2d(np.ones((3, 5)), "pca")
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.full((10, 3), np.nan), "pca")


def test_umap_is_used_when_installed_else_clear_error():
    embeddings, _ = clusters(3, 10)
    if umap_available():
        assert project_2d(embeddings, "umap").shape == (30, 2)
    else:
        with pytest.raises(ImportError, match="umap-learn"):
            project_2d(embeddings, "umap")


def test_map_with_few_classes_has_one_axes_and_a_legend_of_class_names():
    embeddings, labels = clusters(3, 20)
    figure = plot_embedding_map(embeddings, labels, method="pca", class_names=["cat", "dog", "owl"])
    assert len(figure.axes) == 1
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "owl"]
    png = figure_to_png(figure)
    assert Image.open(io.BytesIO(png)).size[0] > 300


def test_map_with_many_classes_uses_a_colorbar_instead_of_a_legend():
    points = np.random.default_rng(0).standard_normal((60, 2))
    labels = np.arange(60) % (MAX_LEGEND_CLASSES + 5)
    figure = plot_points_2d(points, labels)
    assert len(figure.axes) == 2  # the map and its colorbar
    assert figure.axes[0].get_legend() is None


def test_map_samples_at_most_max_points(tmp_path):
    embeddings, labels = clusters(2, 50)
    figure = plot_embedding_map(embeddings, labels, method="pca", max_points=40, seed=3)
    drawn = sum(len(c.get_offsets()) for c in figure.axes[0].collections)
    assert drawn == 40
    assert "40 of 100" in figure.axes[0].get_title()
    path = save_figure(figure, tmp_path / "sub" / "map.png")
    assert path.stat().st_size > 1000


def test_thumbnails_are_placed_apart_and_loaded_by_item_index():
    embeddings, labels = clusters(3, 20)
    requested: list[int] = []

    def load(i: int) -> Image.Image:
        requested.append(i)
        return tiny_image(i)

    figure = plot_embedding_map(
        embeddings, labels, method="pca", max_points=50, load_image=load, max_thumbnails=8
    )
    boxes = [a for a in figure.axes[0].artists if isinstance(a, AnnotationBbox)]
    assert 1 <= len(boxes) <= 8 and len(boxes) == len(requested)
    assert set(requested) <= set(sample_indices(60, 50, 0).tolist())
    figure_to_png(figure)  # thumbnails render


def test_spread_out_respects_the_minimum_separation():
    points = np.random.default_rng(0).uniform(size=(500, 2)) * [10, 2]
    chosen = spread_out(points, 20, min_separation=0.2)
    scaled = (points - points.min(0)) / np.ptp(points, axis=0)  # separation is measured in map extents
    gaps = np.linalg.norm(scaled[chosen][:, None] - scaled[chosen][None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() >= 0.2 and len(chosen) <= 20


def test_map_can_draw_into_a_given_axes():
    from deepmetric.viz.figures import new_figure

    figure = new_figure(8, 4)
    left, right = figure.subplots(1, 2)
    embeddings, labels = clusters(2, 10)
    assert plot_embedding_map(embeddings, labels, method="pca", ax=right) is figure
    assert len(right.collections) == 2 and len(left.collections) == 0


def test_map_rejects_labels_of_the_wrong_length():
    with pytest.raises(ValueError, match="one class id per embedding"):
        plot_embedding_map(np.zeros((10, 3)), np.zeros(9, dtype=int), method="pca")
