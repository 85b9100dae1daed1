"""Binary codes <-> packed bit words.

A code of ``K`` bits is stored in ``ceil(K / 8)`` bytes; bit ``j`` of a code goes to byte ``j // 8``, bit
``j % 8`` (little-endian bit order, the layout of faiss' binary indexes, so packed codes can be handed to
faiss as they are). Padding bits are zero in every code, so they never add to a Hamming distance.

Input codes may be ±1, {0, 1} or any real values: bit = ``code > 0`` covers all three (``+1 -> 1``,
``-1 -> 0``, ``1 -> 1``, ``0 -> 0``, a relaxed code -> its sign). Arrays in, arrays out: a torch tensor
gives a tensor on the same device, a numpy array gives a numpy array.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def num_bytes(bits: int) -> int:
    return (bits + 7) // 8


def pack_bits(codes: ArrayLike) -> ArrayLike:
    """``N x K`` codes -> ``N x ceil(K/8)`` uint8 words (see the module docstring for the bit layout)."""
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(
            f"codes must be a 2-D (N x bits) array with at least one bit, got shape {tuple(codes.shape)}"
        )
    if torch.is_tensor(codes):
        if codes.is_floating_point() and not bool(torch.isfinite(codes).all()):
            raise ValueError("codes contain NaN or infinite values")
        bits = (codes > 0).to(torch.uint8)
        pad = (-bits.shape[1]) % 8
        if pad:
            bits = torch.nn.functional.pad(bits, (0, pad))
        weights = (2 ** torch.arange(8, device=codes.device, dtype=torch.int32)).to(torch.uint8)
        return (bits.view(bits.shape[0], -1, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8)
    codes = np.asarray(codes)
    if np.issubdtype(codes.dtype, np.floating) and not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    return np.packbits(codes > 0, axis=1, bitorder="little")


def unpack_bits(packed: ArrayLike, bits: int, signed: bool = True) -> ArrayLike:
    """Packed uint8 words -> ``N x bits`` codes: float ±1 when ``signed``, else {0, 1} uint8."""
    check_packed(packed, "packed")
    if not 0 < bits <= 8 * packed.shape[1]:
        raise ValueError(
            f"bits must be in 1..{8 * packed.shape[1]} for {packed.shape[1]} bytes per code, got {bits}"
        )
    if torch.is_tensor(packed):
        shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
        unpacked = ((packed[:, :, None] >> shifts) & 1).reshape(packed.shape[0], -1)[:, :bits]
        return unpacked.float() * 2 - 1 if signed else unpacked
    unpacked = np.unpackbits(packed, axis=1, count=bits, bitorder="little")
    return unpacked.astype(np.float32) * 2 - 1 if signed else unpacked


def as_words64(packed: ArrayLike) -> ArrayLike:
    """Packed uint8 codes -> ``N x ceil(bytes/8)`` 64-bit words (zero-padded).

    numpy gives uint64; torch gives int64 (torch's bitwise ops and shifts are complete for int64 only), with
    the same bits.
    """
    check_packed(packed, "packed")
    pad = (-packed.shape[1]) % 8
    if torch.is_tensor(packed):
        if pad:
            packed = torch.nn.functional.pad(packed, (0, pad))
        return packed.contiguous().view(torch.int64)
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def check_packed(packed: ArrayLike, name: str) -> None:
    """Packed codes are a 2-D uint8 array (use :func:`pack_bits`)."""
    dtype_ok = packed.dtype == torch.uint8 if torch.is_tensor(packed) else packed.dtype == np.uint8
    if not dtype_ok:
        raise ValueError(f"{name} must be packed uint8 codes (from pack_bits), got dtype {packed.dtype}")
    if packed.ndim != 2 or packed.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (N x bytes) array, got shape {tuple(packed.shape)}")
