"""The native kernels' loader: compiled once into a cache, refused cleanly without a compiler."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from deepmetric import native
from deepmetric.evaluation import clustering


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPMETRIC_NATIVE", "0")
    assert native._load() is None


def test_no_compiler_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DEEPMETRIC_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="no C compiler"):
        assert native._load() is None


def test_failing_compiler_warns_with_its_message(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'broken-cc: cannot compile' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("DEEPMETRIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    with pytest.warns(UserWarning, match="cannot compile"):
        assert native._load() is None
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-written is left to load


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_compiles_once_into_the_cache_and_reuses_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DEEPMETRIC_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    library = native._load()
    assert library is not None
    (built,) = list(tmp_path.rglob("*.so"))
    stamp = built.stat().st_mtime_ns
    assert native._load() is not None
    assert built.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt


def test_topk_refuses_blocks_it_cannot_read() -> None:
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    selection = native.TopK(4, 2, largest=True)
    with pytest.raises(ValueError, match="float32"):
        selection.offer_rows(torch.zeros(4, 8, dtype=torch.float64), 0, 0)
    with pytest.raises(ValueError, match="contiguous rows"):
        selection.offer_rows(torch.zeros(8, 4).T, 0, 0)
    with pytest.raises(ValueError, match="past the 4 rows"):
        selection.offer_rows(torch.zeros(4, 8), 0, 1)
    with pytest.raises(ValueError, match="2\\^31"):
        selection.offer_rows(torch.zeros(4, 8), 2**31 - 4, 0)
    selection.offer_rows(torch.tensor(np.arange(32, dtype=np.float32).reshape(4, 8)), 0, 0)
    values, indices = selection.result()
    assert indices.tolist() == [[7, 6]] * 4
    assert values[0].tolist() == [7.0, 6.0]


def test_argmax_rows_equals_torch_max_with_first_index_on_ties() -> None:
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    block = torch.randn(37, 1003)
    block[3] = 1.0  # a row of ties: the first column wins
    block[4, 500] = float("inf")
    block[5, -1] = 50.0  # the maximum in the scalar tail
    wide = torch.randn(37, 2000)[:, :1003]  # rows with a stride larger than their length
    for matrix in (block, wide):
        values, indices = native.argmax_rows(matrix)
        expected_values, expected_indices = matrix.max(1)
        assert torch.equal(values, expected_values)
        assert torch.equal(indices, expected_indices)
    assert native.argmax_rows(block)[1][3] == 0


@pytest.mark.parametrize("cols", [1, 2, 7, 8, 9, 203])
def test_argmax_rows_second_is_the_best_of_the_rest(cols: int) -> None:
    """The second largest value: the largest of the row once its first maximum is masked (a repeated
    maximum, in a vector lane or in the scalar tail, comes back as the second; -inf for one column)."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    block = torch.randint(-20, 20, (40, cols)).float()  # many ties
    block[0] = 3.0
    block[1, -1] = 100.0  # the maximum in the tail
    values, indices, seconds = native.argmax_rows(block, second=True)
    expected_values, expected_indices = block.max(1)
    masked = block.scatter(1, expected_indices[:, None], -torch.inf)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)
    assert torch.equal(seconds, masked.max(1).values)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_takes_candidates_in_any_order_and_breaks_ties_by_index(largest: bool) -> None:
    """Blocks offered right to left, many exact ties, excluded (infinite) entries and a row with fewer
    candidates than k: the result is still a stable full sort's first k."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 997), generator=generator).float()
    worst = -torch.inf if largest else torch.inf
    scores[::7, ::3] = worst
    scores[1, 10:] = worst  # row 1 has 10 candidates only
    selection = native.TopK(50, 40, largest)
    for start in reversed(range(0, 997, 128)):
        selection.offer_rows(scores[:, start : start + 128].contiguous(), start, 0)
    values, indices = selection.result()
    expected_values, expected_indices = scores.sort(dim=1, descending=largest, stable=True)
    expected_values, expected_indices = expected_values[:, :40], expected_indices[:, :40]
    expected_indices = torch.where(torch.isinf(expected_values), -1, expected_indices)
    assert torch.equal(values, expected_values)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("spread", ["float range", "one outlier", "ulps apart", "normal", "best first"])
def test_topk_cuts_by_binned_selection_stay_exact(spread: str) -> None:
    """Keys whose range overflows float (the bins cannot be computed), one outlier that puts every other
    key into the lowest bin, keys one ulp apart (bins that hold many), ordinary scores: many cuts each;
    best first: the first cut already has to find the final k-th best exactly."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 5000, generator=generator)
    if spread == "float range":
        scores = scores.sign() * 3e38 * torch.rand(6, 5000, generator=generator)
    elif spread == "one outlier":
        scores[:, 4321] = 1e30
    elif spread == "ulps apart":
        scores = 1 + torch.randint(0, 50, (6, 5000), generator=generator) * torch.finfo(torch.float32).eps
    for largest in (True, False):
        if spread == "best first":
            scores = scores.sort(dim=1, descending=largest).values
        selection = native.TopK(6, 25, largest)
        for start in range(0, 5000, 512):
            selection.offer_rows(scores[:, start : start + 512].contiguous(), start, 0)
        values, indices = selection.result()
        expected_values, expected_indices = scores.sort(dim=1, descending=largest, stable=True)
        assert torch.equal(values, expected_values[:, :25])
        assert torch.equal(indices, expected_indices[:, :25])


def test_topk_ties_negative_and_positive_zero() -> None:
    """-0.0 and +0.0 are equal scores: their order is the index order, and a zero comes out as +0.0."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    scores = torch.tensor([[0.0, -0.0, 1.0, -0.0, 0.0, -1.0, -0.0, 2.0]])
    for largest in (True, False):
        selection = native.TopK(1, 6, largest)
        selection.offer_rows(scores, 0, 0)
        values, indices = selection.result()
        expected_values, expected_indices = scores.sort(dim=1, descending=largest, stable=True)
        assert torch.equal(indices, expected_indices[:, :6])
        assert torch.equal(values, expected_values[:, :6])
        assert not torch.signbit(values[values == 0]).any()


def test_threads_work_in_a_forked_child() -> None:
    """A process forked after the kernels ran on several threads (as DataLoader workers are) gets its own
    thread pool instead of waiting forever on its parent's threads."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    import multiprocessing

    codes = np.random.default_rng(0).integers(0, 2**63, size=(64, 1), dtype=np.uint64)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = native.hamming_knn(codes, codes, 3)[1]
        with multiprocessing.get_context("fork").Pool(1) as pool:
            result = pool.apply_async(_hamming_in_child, (codes,)).get(timeout=30)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_array_equal(result, expected)


def _hamming_in_child(codes: np.ndarray) -> np.ndarray:
    torch.set_num_threads(2)
    return native.hamming_knn(codes, codes, 3)[1]


def test_native_kmeans_plus_plus_takes_the_torch_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C seeding picks what the torch steps pick from the same draws, down to the degenerate steps
    once every distinct point is a centre (5 distinct points, interleaved, k = 12; small integers, so that
    every squared distance, zero included, is exact in float32)."""
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    distinct = np.array([[0, 0, 1], [2, 1, 0], [1, 2, 2], [0, 2, 1], [2, 0, 2]], dtype=np.float32)
    duplicates = np.tile(distinct, (8, 1))
    rng = np.random.default_rng(7)
    blobs = (rng.normal(size=(12, 6)) * 3)[rng.integers(0, 12, 400)] + 0.7 * rng.normal(size=(400, 6))
    for points, k in ((blobs.astype(np.float32), 30), (duplicates, 12)):
        x = torch.from_numpy(points).float()
        norms = (x * x).sum(1)
        seeds = clustering.kmeans_plus_plus(x, norms, k, torch.Generator().manual_seed(4))
        with monkeypatch.context() as patch:
            patch.setattr(clustering, "native_selection", lambda device: False)
            expected = clustering.kmeans_plus_plus(x, norms, k, torch.Generator().manual_seed(4))
        assert torch.equal(seeds, expected)


def test_kmeans_plus_plus_refuses_inputs_it_cannot_read() -> None:
    if not native.available():
        pytest.skip("the native kernels could not be built here (no C compiler)")
    points = torch.randn(10, 3)
    norms, uniform = (points * points).sum(1), torch.rand(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 CPU points"):
        native.kmeans_plus_plus(points.double(), norms, 4, 0, uniform)
    with pytest.raises(ValueError, match="one norm per point"):
        native.kmeans_plus_plus(points, norms[:5], 4, 0, uniform)
    with pytest.raises(ValueError, match="k - 1 rows"):
        native.kmeans_plus_plus(points, norms, 5, 0, uniform)
    with pytest.raises(ValueError, match="first point"):
        native.kmeans_plus_plus(points, norms, 4, 10, uniform)
