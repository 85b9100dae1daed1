"""Retrieval grids and worst queries, with the neighbour search and per-query AP checked against
brute-force references (numpy and scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image
from sklearn.metrics import average_precision_score

from deepmetric.viz.figures import figure_to_png
from deepmetric.viz.ranking import average_precision_per_query, nearest_neighbors
from deepmetric.viz.retrieval_grid import (
    RIGHT_COLOR,
    WRONG_COLOR,
    plot_retrieval_grid,
    plot_worst_queries,
    score_text,
    worst_queries,
)


def data(n: int = 60, dim: int = 8, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, dim)) * 1.5
    return (centers[labels] + rng.standard_normal((n, dim))).astype(np.float32), labels


def load(i: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8), (i * 13) % 256, dtype=np.uint8))


def load_rgb(i: int) -> Image.Image:
    return Image.fromarray(np.full((10, 6, 3), (i * 13) % 256, dtype=np.uint8))


def reference_scores(query: np.ndarray, gallery: np.ndarray, distance: str) -> np.ndarray:
    q, g = query.astype(np.float64), gallery.astype(np.float64)
    if distance == "cosine":
        q, g = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        return q @ g.T
    return np.linalg.norm(q[:, None] - g[None], axis=-1)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_gallery", [False, True])
def test_nearest_neighbors_match_brute_force(distance, with_gallery):
    query, _ = data(30, seed=1)
    gallery = data(50, seed=2)[0] if with_gallery else None
    indices, scores = nearest_neighbors(query, 5, gallery, distance=distance)
    ref = reference_scores(query, query if gallery is None else gallery, distance)
    if gallery is None:
        np.fill_diagonal(ref, -np.inf if distance == "cosine" else np.inf)
    order = np.argsort(-ref if distance == "cosine" else ref, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), rtol=1e-4, atol=1e-5)
    if gallery is None:
        assert not (indices == np.arange(30)[:, None]).any()  # leave-one-out


def test_nearest_neighbors_checks_k_and_query_indices():
    query, _ = data(10)
    with pytest.raises(ValueError, match="k must be between 1 and 9"):
        nearest_neighbors(query, 10)
    with pytest.raises(ValueError, match="query_indices"):
        nearest_neighbors(query, 2, query_indices=[3, 10])
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbors(query, 2, np.zeros((5, 3), dtype=np.float32))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_gallery", [False, True])
def test_average_precision_matches_scikit_learn(distance, with_gallery):
    query, q_labels = data(40, seed=3)
    gallery, g_labels = data(55, seed=4) if with_gallery else (query, q_labels)
    ap = average_precision_per_query(
        query,
        q_labels,
        gallery if with_gallery else None,
        g_labels if with_gallery else None,
        distance=distance,
    )
    ref = reference_scores(query, gallery, distance)
    score = ref if distance == "cosine" else -ref
    for i in range(len(query)):
        keep = np.ones(len(gallery), bool)
        if not with_gallery:
            keep[i] = False
        relevant = g_labels[keep] == q_labels[i]
        expected = average_precision_score(relevant, score[i, keep]) if relevant.any() else np.nan
        np.testing.assert_allclose(ap[i], expected, rtol=1e-6, equal_nan=True)


def test_average_precision_supports_multi_hot_labels_and_flags_queries_without_relevant_items():
    query = np.eye(4, dtype=np.float32) + 0.01
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    ap = average_precision_per_query(query, labels, distance="euclidean")
    assert np.isnan(ap[3]) and not np.isnan(ap[:3]).any()


def test_grid_has_one_panel_per_query_and_result_with_right_and_wrong_frames():
    embeddings, labels = data()
    queries = [0, 7, 21]
    figure = plot_retrieval_grid(embeddings, labels, load, queries=queries, k=4, distance="euclidean")
    axes = np.array(figure.axes).reshape(3, 5)
    indices, scores = nearest_neighbors(embeddings, 4, distance="euclidean", query_indices=queries)
    colors_seen = set()
    for r, query in enumerate(queries):
        for c in range(4):
            ax = axes[r, c + 1]
            expected = RIGHT_COLOR if labels[indices[r, c]] == labels[query] else WRONG_COLOR
            assert to_hex(ax.spines["top"].get_edgecolor()) == expected
            assert f"euclidean {score_text(scores[r, c])}\n" in ax.get_xlabel()
            colors_seen.add(expected)
        assert axes[r, 0].get_xlabel().startswith(f"{labels[query]}")
    assert colors_seen == {RIGHT_COLOR, WRONG_COLOR}  # the data give both kinds of results
    assert len(figure_to_png(figure)) > 5000


def test_grid_with_a_gallery_loads_results_from_the_gallery_loader():
    query, q_labels = data(12, seed=5)
    gallery, g_labels = data(30, seed=6)
    loaded_from_gallery: list[int] = []

    def load_gallery(i: int) -> Image.Image:
        loaded_from_gallery.append(i)
        return load_rgb(i)

    figure = plot_retrieval_grid(
        query,
        q_labels,
        load,
        gallery,
        g_labels,
        load_gallery,
        num_queries=4,
        k=3,
        seed=1,
        class_names=["a", "b", "c", "d"],
    )
    assert len(figure.axes) == 4 * 4 and len(loaded_from_gallery) == 4 * 3
    assert figure.axes[1].get_xlabel().split("\n")[1] in {"a", "b", "c", "d"}
    figure_to_png(figure)


def test_random_queries_are_seeded():
    embeddings, labels = data()
    first = plot_retrieval_grid(embeddings, labels, load, num_queries=3, k=2, seed=4)
    again = plot_retrieval_grid(embeddings, labels, load, num_queries=3, k=2, seed=4)
    assert [a.get_xlabel() for a in first.axes] == [a.get_xlabel() for a in again.axes]


def test_grid_input_errors():
    embeddings, labels = data(20)
    with pytest.raises(ValueError, match="load_gallery_image"):
        plot_retrieval_grid(embeddings, labels, load, embeddings, labels)
    with pytest.raises(ValueError, match="k must be"):
        plot_retrieval_grid(embeddings, labels, load, k=20)
    with pytest.raises(ValueError, match="row_notes"):
        plot_retrieval_grid(embeddings, labels, load, queries=[1, 2], row_notes=["x"])
    with pytest.raises(TypeError, match=r"PIL\.Image"):
        plot_retrieval_grid(embeddings, labels, lambda i: np.zeros((8, 8)), queries=[0], k=1)


def test_worst_queries_are_the_lowest_average_precision_ones():
    embeddings, labels = data(seed=7)
    rows, ap = worst_queries(embeddings, labels, num_queries=4, distance="cosine")
    all_ap = average_precision_per_query(embeddings, labels, distance="cosine")
    np.testing.assert_allclose(ap, np.sort(all_ap)[:4])
    np.testing.assert_allclose(all_ap[rows], ap)
    candidates = [5, 9, 30, 31, 44]
    rows, _ = worst_queries(embeddings, labels, num_queries=2, candidates=candidates)
    assert set(rows) <= set(candidates)
    assert rows[0] == candidates[int(np.argmin(all_ap[candidates]))]


def test_worst_query_grid_notes_each_rows_average_precision():
    embeddings, labels = data(seed=7)
    figure = plot_worst_queries(embeddings, labels, load, num_queries=3, k=3)
    assert len(figure.axes) == 3 * 4
    _, ap = worst_queries(embeddings, labels, num_queries=3)
    for r in range(3):
        assert f"AP {ap[r]:.3f}" in figure.axes[r * 4].get_xlabel()


def test_worst_queries_needs_some_relevant_item():
    embeddings = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="no query has a relevant"):
        worst_queries(embeddings, np.arange(4))


def test_long_class_names_are_cut_to_fit_under_a_tile():
    from deepmetric.viz.retrieval_grid import _CAPTION_CHARS, _class_name

    names = ["064.Black_throated_Sparrow", "short"]
    assert _class_name(np.array(1), names) == "short"
    cut = _class_name(np.array(0), names)
    assert len(cut) == _CAPTION_CHARS and cut.endswith("…") and names[0].startswith(cut[:-1])
