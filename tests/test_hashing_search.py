"""Bit packing, Hamming distances, k-NN and radius search against slow numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric import native
from deepmetric.hashing import (
    FaissBinaryIndex,
    HammingIndex,
    as_words64,
    hamming_distances,
    hamming_knn,
    hamming_radius_search,
    pack_bits,
    unpack_bits,
)
from deepmetric.hashing.search import _knn_torch, _pairwise_hamming_swar, _radius_torch, popcount64


def random_signs(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return np.where(rng.random((n, bits)) < 0.5, -1.0, 1.0).astype(np.float32)


def slow_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Count differing signs bit by bit."""
    out = np.zeros((len(a), len(b)), dtype=np.int64)
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = int(np.sum((a[i] > 0) != (b[j] > 0)))
    return out


def slow_knn(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.array(
        [sorted(range(distances.shape[1]), key=lambda j, r=row: (r[j], j))[:k] for row in distances]
    )
    return np.take_along_axis(distances, indices, 1), indices


@pytest.mark.parametrize("bits", [8, 12, 48, 64, 100, 256])
def test_pack_unpack_round_trip_signs_and_binary(bits: int) -> None:
    rng = np.random.default_rng(bits)
    signs = random_signs(rng, 7, bits)
    packed = pack_bits(signs)
    assert packed.dtype == np.uint8 and packed.shape == (7, (bits + 7) // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits), signs)
    binary = (signs > 0).astype(np.uint8)
    np.testing.assert_array_equal(pack_bits(binary), packed)
    np.testing.assert_array_equal(unpack_bits(packed, bits, signed=False), binary)
    real = signs * rng.random((7, bits)).astype(np.float32)  # relaxed codes pack by sign
    np.testing.assert_array_equal(pack_bits(real), packed)
    torch_packed = pack_bits(torch.from_numpy(signs))
    assert torch_packed.dtype == torch.uint8
    np.testing.assert_array_equal(torch_packed.numpy(), packed)
    np.testing.assert_array_equal(unpack_bits(torch_packed, bits).numpy(), signs)


def test_bit_layout_is_little_endian_like_faiss() -> None:
    codes = np.zeros((1, 12), dtype=np.float32) - 1
    codes[0, [0, 3, 9]] = 1
    np.testing.assert_array_equal(pack_bits(codes), [[0b1001, 0b10]])


def test_words64_pad_and_keep_bits() -> None:
    rng = np.random.default_rng(0)
    packed = pack_bits(random_signs(rng, 5, 72))
    words = as_words64(packed)
    assert words.dtype == np.uint64 and words.shape == (5, 2)
    np.testing.assert_array_equal(words.view(np.uint8)[:, :9], packed)
    assert (words.view(np.uint8)[:, 9:] == 0).all()
    np.testing.assert_array_equal(as_words64(torch.from_numpy(packed)).numpy().view(np.uint64), words)


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pack_bits(np.ones(8))
    with pytest.raises(ValueError, match="NaN"):
        pack_bits(np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(np.ones((2, 1), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="bits must be in"):
        unpack_bits(np.ones((2, 1), dtype=np.uint8), 9)


@pytest.mark.parametrize("bits", [12, 64, 130])
def test_hamming_distances_equal_bit_counting(bits: int) -> None:
    rng = np.random.default_rng(1)
    a, b = random_signs(rng, 9, bits), random_signs(rng, 13, bits)
    expected = slow_hamming(a, b)
    np.testing.assert_array_equal(hamming_distances(pack_bits(a), pack_bits(b)), expected)
    as_tensor = hamming_distances(pack_bits(torch.from_numpy(a)), pack_bits(torch.from_numpy(b)))
    np.testing.assert_array_equal(as_tensor.numpy(), expected)
    # the device (non-CPU) path: SWAR popcount on int64 words
    qa, qb = as_words64(pack_bits(torch.from_numpy(a))), as_words64(pack_bits(torch.from_numpy(b)))
    np.testing.assert_array_equal(_pairwise_hamming_swar(qa, qb).numpy(), expected)


def test_popcount64_of_extreme_words() -> None:
    words = torch.tensor([0, -1, 1, -(2**63), 0x5555555555555555, 2**63 - 1], dtype=torch.int64)
    assert popcount64(words).tolist() == [0, 64, 1, 1, 32, 63]


@pytest.mark.parametrize(("bits", "budget"), [(16, 4096), (64, 2**20), (100, 50_000)])
def test_hamming_knn_equals_brute_force_with_index_tie_break(bits: int, budget: int, cpu_kernel: str) -> None:
    rng = np.random.default_rng(bits)
    db = random_signs(rng, 700, bits)
    db[500:520] = db[3]  # exact duplicates: ties at distance 0 must come out by index
    queries = np.concatenate([db[3:4], random_signs(rng, 20, bits)])
    expected_d, expected_i = slow_knn(slow_hamming(queries, db), 30)
    distances, indices = hamming_knn(pack_bits(queries), pack_bits(db), 30, memory_budget=budget)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)
    assert indices[0, :21].tolist() == [3, *range(500, 520)]
    t_d, t_i = hamming_knn(pack_bits(torch.from_numpy(queries)), pack_bits(torch.from_numpy(db)), 30)
    np.testing.assert_array_equal(t_i.numpy(), expected_i)
    np.testing.assert_array_equal(t_d.numpy(), expected_d)


@pytest.mark.parametrize(
    ("bits", "threads", "budget", "k"), [(64, 1, 3000, 40), (64, 3, 2**20, 5), (300, 2, 9000, 25)]
)
def test_cpu_knn_blocks_threads_and_slices_stay_exact(
    bits: int, threads: int, budget: int, k: int, cpu_kernel: str
) -> None:
    """Slices narrower than k (no threshold until k codes are seen), candidate pruning, several query
    blocks on several threads, and uint16 distances beyond 255 bits."""
    rng = np.random.default_rng(bits + threads)
    db = random_signs(rng, 900, bits)
    db[::7] = db[1]  # many exact ties
    queries = np.concatenate([db[1:2], random_signs(rng, 70, bits)])
    expected_d, expected_i = slow_knn(slow_hamming(queries, db), k)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        distances, indices = hamming_knn(pack_bits(queries), pack_bits(db), k, memory_budget=budget)
        lims, radius_d, radius_i = hamming_radius_search(pack_bits(queries), pack_bits(db), 30, budget)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)
    reference = slow_hamming(queries, db)
    for q in range(len(queries)):
        expected = sorted((reference[q, j], j) for j in range(len(db)) if reference[q, j] <= 30)
        assert list(zip(radius_d[lims[q] : lims[q + 1]], radius_i[lims[q] : lims[q + 1]])) == expected


@pytest.mark.parametrize(("size", "queries", "k"), [(1001, 13, 1), (1003, 9, 300), (8195 + 3, 5, 64)])
def test_native_hamming_knn_tails_and_large_k(size: int, queries: int, k: int) -> None:
    """One-word codes: database sizes that are no multiple of the 4-code vector or of the 8192-code tile,
    query counts that leave a remainder after the groups of four, and a k above the buffer's 4k regime."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    rng = np.random.default_rng(size)
    db = random_signs(rng, size, 64)
    db[size // 2 :: 97] = db[0]  # exact ties with the first query
    query = np.concatenate([db[:1], random_signs(rng, queries - 1, 64)])
    expected_d, expected_i = slow_knn(slow_hamming(query, db), k)
    distances, indices = hamming_knn(pack_bits(query), pack_bits(db), k)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)


@pytest.mark.parametrize(("bits", "k"), [(64, 7), (128, 1), (256, 20)])
def test_native_hamming_knn_many_queries_and_word_counts(bits: int, k: int) -> None:
    """More queries than one chunk of the kernel (1,024, an odd number left), queries paired in the fast
    scan (one odd query out), codes of 1, 2 and 4 words (the last past the byte sums' range at first)."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    rng = np.random.default_rng(bits)
    db = random_signs(rng, 613, bits)
    db[300:310] = db[5]
    queries = np.concatenate([db[5:6], random_signs(rng, 1030, bits)])
    queries[-1] = -db[7]  # the farthest possible code from db[7]
    reference = np.rint((bits - queries.astype(np.float64) @ db.T) / 2).astype(np.int64)  # +-1 signs
    expected_i = np.argsort(reference, axis=1, kind="stable")[:, :k]
    expected_d = np.take_along_axis(reference, expected_i, 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        distances, indices = hamming_knn(pack_bits(queries), pack_bits(db), k)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(indices, expected_i)


def test_device_path_knn_and_radius_run_on_cpu_tensors() -> None:
    """The torch (CUDA) kernels, run here on CPU words, agree with brute force too."""
    rng = np.random.default_rng(9)
    db, queries = random_signs(rng, 500, 72), random_signs(rng, 12, 72)
    db[100:110] = queries[0]
    reference = slow_hamming(queries, db)
    expected_d, expected_i = slow_knn(reference, 20)
    q_words, db_words = (as_words64(pack_bits(torch.from_numpy(x))) for x in (queries, db))
    distances, indices = _knn_torch(q_words, db_words, 20, memory_budget=5000)
    np.testing.assert_array_equal(distances.numpy(), expected_d)
    np.testing.assert_array_equal(indices.numpy(), expected_i)
    lims, radius_d, radius_i = _radius_torch(q_words, db_words, 28, memory_budget=5000)
    for q in range(len(queries)):
        expected = sorted((reference[q, j], j) for j in range(len(db)) if reference[q, j] <= 28)
        got = list(zip(radius_d[lims[q] : lims[q + 1]].tolist(), radius_i[lims[q] : lims[q + 1]].tolist()))
        assert got == expected


def test_hamming_knn_k_equal_database_size_and_errors() -> None:
    rng = np.random.default_rng(2)
    db, q = pack_bits(random_signs(rng, 10, 8)), pack_bits(random_signs(rng, 3, 8))
    distances, indices = hamming_knn(q, db, 10)
    assert sorted(indices[0].tolist()) == list(range(10))
    assert (np.diff(distances, axis=1) >= 0).all()
    with pytest.raises(ValueError, match="k must be"):
        hamming_knn(q, db, 11)
    with pytest.raises(ValueError, match="bytes"):
        hamming_knn(pack_bits(random_signs(rng, 3, 16)), db, 2)
    with pytest.raises(ValueError, match="both"):
        hamming_knn(torch.from_numpy(q), db, 2)


@pytest.mark.parametrize(
    ("bits", "size", "radius"),
    [(12, 400, 3), (64, 1100, 27), (130, 300, 500), (300, 200, 140), (300, 200, 290)],
)
def test_radius_search_equals_brute_force(bits: int, size: int, radius: int, cpu_kernel: str) -> None:
    """Short and multi-word codes, a database past one tile with a tail, a radius beyond every distance,
    and radii of long codes on both sides of the byte sums' range."""
    rng = np.random.default_rng(bits)
    db, queries = random_signs(rng, size, bits), random_signs(rng, 15, bits)
    db[size // 3 :: 50] = queries[0]  # exact matches
    reference = np.rint((bits - queries.astype(np.float64) @ db.T) / 2).astype(np.int64)  # +-1 signs
    lims, distances, indices = hamming_radius_search(
        pack_bits(queries), pack_bits(db), radius, memory_budget=10_000
    )
    assert lims.shape == (16,)
    for q in range(15):
        expected = sorted((reference[q, j], j) for j in range(size) if reference[q, j] <= radius)
        got = list(zip(distances[lims[q] : lims[q + 1]].tolist(), indices[lims[q] : lims[q + 1]].tolist()))
        assert got == [(int(d), int(j)) for d, j in expected]


def test_hamming_index_backend_matches_functions() -> None:
    rng = np.random.default_rng(4)
    db, queries = random_signs(rng, 300, 24), random_signs(rng, 6, 24)
    index = HammingIndex(24)
    index.add(db[:100])
    index.add(torch.from_numpy(db[100:]))
    assert len(index) == 300
    distances, indices = index.search(queries, 5)
    expected_d, expected_i = slow_knn(slow_hamming(queries, db), 5)
    np.testing.assert_array_equal(indices, expected_i)
    np.testing.assert_array_equal(distances, expected_d)
    with pytest.raises(ValueError, match="N x 24"):
        index.add(db[:, :16])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_backend_agrees_with_exact_search(kind: str) -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    db, queries = random_signs(rng, 2000, 32), random_signs(rng, 20, 32)
    exact = HammingIndex(32)
    exact.add(db)
    index = FaissBinaryIndex(32, kind=kind, nlist=8, nprobe=8)
    index.add(db)
    expected_d, _ = exact.search(queries, 10)
    distances, indices = index.search(queries, 10)
    np.testing.assert_array_equal(distances, slow_hamming(queries, db)[np.arange(20)[:, None], indices])
    if kind in ("flat", "ivf"):  # ivf with nprobe = nlist scans every cell: exact too
        np.testing.assert_array_equal(distances, expected_d)
    else:
        assert (distances >= expected_d).all() and np.mean(distances == expected_d) > 0.8
    if kind == "flat":
        lims, range_d, range_i = index.range_search(queries, 10)
        e_lims, e_d, e_i = exact.range_search(queries, 10)
        np.testing.assert_array_equal(lims, e_lims)
        np.testing.assert_array_equal(range_d, e_d)
        np.testing.assert_array_equal(range_i, e_i)
