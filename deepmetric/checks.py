"""Input checks shared by losses, miners, evaluation and retrieval: one clear error per problem."""

from __future__ import annotations

import math

import numpy as np
import torch


def check_embeddings(embeddings: torch.Tensor | np.ndarray, name: str = "embeddings") -> None:
    """Refuse anything but a non-empty, finite ``N x D`` matrix, naming what is wrong."""
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N x D) array, got shape {tuple(embeddings.shape)}")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(embeddings.shape)})")
    if not _all_finite(embeddings):
        raise ValueError(f"{name} contain NaN or infinite values")


def _all_finite(array: torch.Tensor | np.ndarray) -> bool:
    """Whether every entry is finite, in one cheap reduction for the common case.

    A finite sum means every entry is finite (a NaN or inf anywhere makes the sum NaN or inf); only when
    the sum is not finite (a bad entry, or finite values overflowing) is every entry tested. This runs on
    every loss call, where a full ``isfinite`` pass plus ``all`` cost as much as a small loss itself.
    """
    if not torch.is_tensor(array):
        return bool(np.isfinite(array).all())
    if not (array.dtype.is_floating_point or array.dtype.is_complex):
        return True
    total = array.detach().sum()
    # a Python float test of the one number: a third of the cost of a tensor isfinite + bool
    if math.isfinite(total.real.item() if array.dtype.is_complex else total.item()) and (
        not array.dtype.is_complex or math.isfinite(total.imag.item())
    ):
        return True
    return bool(torch.isfinite(array).all())


def check_labels(
    labels: torch.Tensor | np.ndarray,
    num_samples: int,
    name: str = "labels",
    embeddings_name: str = "embeddings",
) -> None:
    """Labels are 1-D class ids or a 2-D multi-hot (N x C) matrix, one row per embedding."""
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D class ids or a 2-D multi-hot matrix, got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != num_samples:
        raise ValueError(f"{name} has {labels.shape[0]} rows but {embeddings_name} has {num_samples}")


def check_pair(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
) -> None:
    """Check a batch and, if given, its reference set (same dimension, labels of the same kind)."""
    check_embeddings(embeddings)
    check_labels(labels, embeddings.shape[0])
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if ref_embeddings is not None:
        check_embeddings(ref_embeddings, "ref_embeddings")
        check_labels(ref_labels, ref_embeddings.shape[0], "ref_labels", "ref_embeddings")
        if ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"ref_embeddings have dimension {ref_embeddings.shape[1]} but embeddings have {embeddings.shape[1]}"
            )
        if ref_labels.ndim != labels.ndim:
            raise ValueError("labels and ref_labels must both be class ids or both be multi-hot matrices")
