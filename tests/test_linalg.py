"""Products through numpy's BLAS equal torch's."""

from __future__ import annotations

import pytest
import torch

from deepmetric import linalg


@pytest.mark.parametrize("route", ["numpy", "torch"])
def test_matmul_into_equals_torch_for_plain_and_transposed_operands(route: str, monkeypatch) -> None:
    monkeypatch.setenv("DEEPMETRIC_CPU_BLAS", route)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(300, 70, generator=generator)
    b = torch.randn(90, 70, generator=generator)
    assert linalg._use_numpy(a, b.T) == (route == "numpy")
    out = torch.empty(300, 90)
    result = linalg.matmul_into(a, b.T, out)
    assert result.data_ptr() == out.data_ptr()  # written in place
    torch.testing.assert_close(out, a @ b.T, rtol=1e-4, atol=1e-4)  # BLAS libraries sum in other orders
    out_t = torch.empty(70, 70)
    torch.testing.assert_close(
        linalg.matmul_into(a.T, a, out_t), a.T @ a, rtol=1e-4, atol=1e-4
    )  # a.T: a view


def test_small_or_non_float32_products_stay_in_torch() -> None:
    small = torch.randn(4, 4)
    assert not linalg._use_numpy(small, small)
    wide = torch.randn(300, 70, dtype=torch.float64)
    assert not linalg._use_numpy(wide, wide.T)
    out = torch.empty(300, 300, dtype=torch.float64)
    torch.testing.assert_close(linalg.matmul_into(wide, wide.T, out), wide @ wide.T)


def test_blas_threads_follow_torch() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    previous = torch.get_num_threads()
    a = torch.randn(300, 70)
    try:
        torch.set_num_threads(1)
        linalg.matmul_into(a, a.T, torch.empty(300, 300))
        blas = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        assert blas and all(info["num_threads"] == 1 for info in blas)
    finally:
        torch.set_num_threads(previous)


def test_threads_from_environment_follow_openblas_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert linalg._threads_from_environment() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert linalg._threads_from_environment() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert linalg._threads_from_environment() == 2
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2,1")  # not a plain count: let threadpoolctl set it
    assert linalg._threads_from_environment() is None
