"""The ``hamming`` retrieval backend against a brute-force Hamming search written from the definition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmetric.retrieval import SEARCH_BACKENDS, HammingBackend, Index


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bit j of a vector is ``v[j] > 0``; distance = differing bits; ties to the lower index."""
    differing = (queries[:, None, :] > 0) != (gallery[None, :, :] > 0)
    distances = differing.sum(-1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, 1), order


def codes(n: int, bits: int, seed: int) -> np.ndarray:
    """Relaxed codes with few distinct binary codes, so that many distances tie."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(6, bits))
    noise = rng.normal(size=(n, bits)) * 0.6
    return (prototypes[rng.integers(0, 6, n)] + noise).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 20, 64, 130])
def test_matches_brute_force(bits):
    gallery, queries = codes(300, bits, 0), codes(40, bits, 1)
    # a tiny memory budget forces the search through many chunks
    index = Index.build(gallery, distance="euclidean", backend="hamming", memory_budget=4096)
    distances, indices = index.search(queries, 12)
    expected_distances, expected_indices = brute_force(gallery, queries, 12)
    assert distances.dtype == np.float32
    assert np.array_equal(distances, expected_distances.astype(np.float32))
    assert np.array_equal(indices, expected_indices)


def test_binary_and_sign_codes_and_k_beyond_the_gallery():
    rng = np.random.default_rng(3)
    signs = np.where(rng.random((30, 16)) < 0.5, -1.0, 1.0).astype(np.float32)
    index = Index.build(signs, labels=np.arange(30) % 4, backend="hamming")
    binary = Index.build((signs > 0).astype(np.float32), backend="hamming")
    distances, indices = index.search(signs[:5], 50)
    assert distances.shape == indices.shape == (5, 30)
    assert np.array_equal(distances[:, 0], np.zeros(5)) and np.array_equal(indices[:, 0], np.arange(5))
    assert np.array_equal((distances, indices), binary.search(signs[:5], 50))
    assert np.array_equal((distances, indices), brute_force(signs, signs[:5], 30))
    assert index.search_results(signs[7], 1).labels == [[7 % 4]]


def test_save_load_and_add(tmp_path):
    gallery, queries = codes(120, 24, 4), codes(10, 24, 5)
    index = Index.build(gallery[:70], backend="hamming", memory_budget=8192)
    index.add(gallery[70:])
    loaded = Index.load(index.save(tmp_path / "codes"))
    metadata = json.loads((tmp_path / "codes" / "metadata.json").read_text())
    assert metadata["backend"] == "hamming"
    assert metadata["backend_params"] == {"device": "cpu", "memory_budget": 8192}
    assert isinstance(loaded.backend, HammingBackend)
    assert np.array_equal(loaded.search(queries, 9), index.search(queries, 9))
    assert np.array_equal(index.search(queries, 9), brute_force(gallery, queries, 9))


def test_registered_and_refuses_unknown_parameters():
    assert "hamming" in SEARCH_BACKENDS
    with pytest.raises(ValueError, match="no parameter 'nprobe'"):
        Index(16, backend="hamming", nprobe=3)


def test_agrees_with_faiss_binary_flat():
    faiss = pytest.importorskip("faiss")
    gallery, queries = codes(200, 32, 6), codes(25, 32, 7)
    flat = faiss.IndexBinaryFlat(32)
    flat.add(np.packbits(gallery > 0, axis=1, bitorder="little"))
    faiss_distances, _ = flat.search(np.packbits(queries > 0, axis=1, bitorder="little"), 10)
    distances, _ = Index.build(gallery, backend="hamming").search(queries, 10)
    assert np.array_equal(distances, faiss_distances.astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gallery, queries = codes(500, 48, 8), codes(30, 48, 9)
    on_gpu = Index.build(gallery, backend="hamming", device="cuda").search(queries, 7)
    assert np.array_equal(on_gpu, brute_force(gallery, queries, 7))
