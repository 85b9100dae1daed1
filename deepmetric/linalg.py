"""Matrix products of float32 CPU tensors through the BLAS numpy ships.

Why: PyTorch's x86 CPU wheels call MKL, whose single-precision GEMM runs at about 40 GFLOPS per core on
AMD Zen CPUs, against about 68 for the OpenBLAS inside numpy's wheels on the same core (measured on the
development machine, an AMD EPYC: ``benchmarks/RESULTS.md``). The evaluation engine's distance blocks
and the losses' Gram matrices are such products, so they run ~1.7x faster this way; on Intel CPUs the
two libraries are close. The route is taken only for float32 CPU tensors large enough for the call
overhead not to matter; everything else (CUDA, other dtypes) goes to ``torch.matmul``.
``DEEPMETRIC_CPU_BLAS=torch`` turns the route off.

The numpy side shares memory with the tensors (no copies) and its thread count follows
``torch.get_num_threads()``, so ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` limit both libraries.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# Below this many multiply-adds the ~10 us of conversions outweigh the faster kernel.
_MIN_MACS = 1 << 18


def _use_numpy(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.dim() == 2
        and b.dim() == 2
        and a.shape[0] * a.shape[1] * b.shape[1] >= _MIN_MACS
        and os.environ.get("DEEPMETRIC_CPU_BLAS", "numpy") != "torch"
    )


_blas_threads: int | None = None


def _sync_threads() -> None:
    """Give numpy's BLAS as many threads as torch has (once per change: the call walks the libraries)."""
    global _blas_threads
    threads = torch.get_num_threads()
    if threads != _blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
        _blas_threads = threads


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    # ``.numpy()`` keeps the strides, so a transposed view stays a view and BLAS reads it transposed.
    return x.detach().numpy() if x.stride(-1) == 1 or x.stride(0) == 1 else x.detach().contiguous().numpy()


def _product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if not _use_numpy(a, b):
        return torch.matmul(a, b, out=out) if out is not None else torch.matmul(a, b)
    _sync_threads()
    if out is None:
        out = torch.empty(a.shape[0], b.shape[1], dtype=torch.float32)
    np.matmul(_as_numpy(a), _as_numpy(b), out=out.numpy())
    return out


class _MatMul(torch.autograd.Function):
    """``a @ b`` whose forward and backward products all take :func:`_product`'s route."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _product(a, b, None)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, b = ctx.saved_tensors
        grad_a = _product(grad, b.T, None) if ctx.needs_input_grad[0] else None
        grad_b = _product(a.T, grad, None) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` for 2-d tensors, differentiable, through numpy's BLAS where that is faster (see the
    module docstring). ``out`` (no autograd) receives the product in place."""
    if out is not None or not (a.requires_grad or b.requires_grad) or not torch.is_grad_enabled():
        return _product(a, b, out)
    if not _use_numpy(a, b):
        return torch.matmul(a, b)
    return _MatMul.apply(a, b)
