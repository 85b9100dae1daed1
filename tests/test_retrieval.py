"""deepmetric.retrieval.Index: search vs brute force, backends, save/load, refusal of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.retrieval import SEARCH_BACKENDS, Index


def data(n: int = 200, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 7, n)


def brute_force(gallery, queries, k, distance):
    if distance == "cosine":
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if distance in ("cosine", "dot"):
        order = np.argsort(-(queries.astype(np.float64) @ gallery.T), axis=1, kind="stable")
    else:
        diff = queries[:, None, :].astype(np.float64) - gallery[None]
        order = np.argsort((diff**2).sum(-1), axis=1, kind="stable")
    return order[:, :k]


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclidean", "squared_euclidean"])
@pytest.mark.parametrize("backend", ["torch", "faiss_flat"])
def test_exact_backends_match_brute_force(distance, backend):
    if backend.startswith("faiss"):
        pytest.importorskip("faiss")
    gallery, labels = data()
    queries = data(30, seed=1)[0]
    index = Index.build(gallery, labels, distance=distance, backend=backend)
    distances, indices = index.search(queries, 5)
    assert np.array_equal(indices, brute_force(gallery, queries, 5, distance))
    if distance == "euclidean":
        expected = np.linalg.norm(queries[:, None] - gallery[indices[:, 0]][:, None], axis=-1)[:, 0]
        assert np.allclose(distances[:, 0], expected, atol=1e-4)
    step = np.diff(distances, axis=1)
    assert (step <= 1e-6).all() if distance in ("cosine", "dot") else (step >= -1e-6).all()


@pytest.mark.parametrize(
    ("backend", "params"), [("faiss_ivf", {"nlist": 4, "nprobe": 4}), ("faiss_hnsw", {})]
)
def test_approximate_backends_find_most_true_neighbours(backend, params, tmp_path):
    pytest.importorskip("faiss")
    gallery, labels = data(500)
    queries = data(40, seed=2)[0]
    index = Index.build(gallery, labels, distance="euclidean", backend=backend, **params)
    _, indices = index.search(queries, 10)
    exact = brute_force(gallery, queries, 10, "euclidean")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact)])
    assert overlap > 0.9
    loaded = Index.load(index.save(tmp_path / backend))
    assert (tmp_path / backend / "faiss.index").exists()
    assert np.array_equal(loaded.search(queries, 10)[1], indices)


def test_ties_go_to_the_lower_index_in_every_exact_backend():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    for backend in ("torch", "faiss_flat"):
        if backend.startswith("faiss"):
            pytest.importorskip("faiss")
        _, indices = Index.build(gallery, backend=backend).search(np.array([1.0, 0.0]), 4)
        assert indices.tolist() == [[0, 2, 3, 1]], backend


def test_ids_labels_add_and_round_trip(tmp_path):
    gallery, labels = data(50)
    paths = [f"images/{i:03d}.jpg" for i in range(50)]
    index = Index.build(gallery[:30], labels[:30], ids=paths[:30])
    index.add(torch.from_numpy(gallery[30:]), torch.from_numpy(labels[30:]), ids=paths[30:])
    assert len(index) == 50
    result = index.search_results(gallery[[3, 42]], 1)
    assert result.indices[:, 0].tolist() == [3, 42]
    assert result.ids == [["images/003.jpg"], ["images/042.jpg"]]
    assert result.labels == [[int(labels[3])], [int(labels[42])]]

    loaded = Index.load(index.save(tmp_path / "index"))
    assert loaded.ids == paths and np.array_equal(loaded.labels, labels)
    assert np.array_equal(loaded.vectors, gallery)
    assert loaded.distance_name == "cosine" and loaded.backend_name == "torch"
    for original, restored in zip(index.search(gallery[:5], 7), loaded.search(gallery[:5], 7)):
        assert np.array_equal(original, restored)


def test_k_larger_than_the_index_returns_everything():
    gallery, _ = data(4)
    _, indices = Index.build(gallery).search(gallery, 10)
    assert indices.shape == (4, 4) and sorted(indices[0]) == [0, 1, 2, 3]


def test_backends_are_pluggable_by_name():
    assert {"torch", "faiss_flat", "faiss_ivf", "faiss_hnsw"} <= set(SEARCH_BACKENDS.names())
    with pytest.raises(ValueError, match="unknown search backend"):
        Index(4, backend="hamming_typo")
    with pytest.raises(ValueError, match="no parameter"):
        Index(4, backend="torch", nprobe=3)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda ix: ix.add(np.zeros((3, 5))), "dimension"),
        (lambda ix: ix.add(np.full((3, 4), np.nan)), "NaN"),
        (lambda ix: ix.add(np.zeros((0, 4))), "empty"),
        (lambda ix: ix.add(np.zeros((3, 4)), labels=[1, 2]), "labels has 2"),
        (lambda ix: ix.add(np.zeros((3, 4)), labels=[1, 2, 3], ids=["a"]), "ids has 1"),
        (lambda ix: ix.add(np.zeros((3, 4))), "labels must be given"),
        (lambda ix: ix.search(np.zeros((2, 3)), 1), "dimension"),
        (lambda ix: ix.search(np.ones((2, 4)), 0), "k must be"),
        (lambda ix: ix.search(np.array([["a"] * 4]), 1), "real numbers"),
    ],
)
def test_bad_input_is_refused(action, message):
    index = Index.build(np.ones((5, 4)), labels=np.arange(5))
    with pytest.raises(ValueError, match=message):
        action(index)


def test_empty_index_and_missing_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Index(4).search(np.ones((1, 4)), 1)
    with pytest.raises(ValueError, match="no index"):
        Index.load(tmp_path)
