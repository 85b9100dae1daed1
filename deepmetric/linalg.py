"""Matrix products of float32 CPU tensors into preallocated buffers, through the BLAS numpy ships.

Why: the evaluation engine computes its distance tiles into one reused buffer (a fresh large allocation
per block costs page faults worth a third of the product). Into such a buffer, a 4096 x 8192 x 128
float32 product runs at ~74 GFLOPS on one core of the development machine (an AMD EPYC) with the
OpenBLAS inside numpy's wheels, against ~60 with the MKL inside PyTorch's x86 wheels; on Intel CPUs the two
are close. The route is taken only for float32 CPU tensors large enough for the call overhead not to
matter; everything else (CUDA, other dtypes, small products) goes to ``torch.matmul``.
``DEEPMETRIC_CPU_BLAS=torch`` turns the route off. Small products (the losses') gain nothing from it.

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


def _threads_from_environment() -> int | None:
    """The thread count OpenBLAS took from the environment when it was loaded, if any."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return int(value) if value.isdigit() else None
    return None


def _sync_threads() -> None:
    """Give numpy's BLAS as many threads as torch has (once per change: the call walks the ~200 loaded
    libraries, ~20 ms; skipped when the environment already gave OpenBLAS torch's count at load)."""
    global _blas_threads
    threads = torch.get_num_threads()
    if _blas_threads is None and _threads_from_environment() == threads:
        _blas_threads = threads
    if threads != _blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
        _blas_threads = threads


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    # ``.numpy()`` keeps the strides, so a transposed view stays a view and BLAS reads it transposed.
    return x.detach().numpy() if x.stride(-1) == 1 or x.stride(0) == 1 else x.detach().contiguous().numpy()


def matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of 2-d tensors written into ``out`` (no autograd: the evaluation engine's products),
    through numpy's BLAS where that is faster (see the module docstring)."""
    if not _use_numpy(a, b):
        return torch.matmul(a.detach(), b.detach(), out=out)
    _sync_threads()
    np.matmul(_as_numpy(a), _as_numpy(b), out=out.numpy())
    return out
