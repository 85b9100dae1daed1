"""Loading pretrained weights from local files, and the error shown when they cannot be downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a bare state dict, or one under ``state_dict`` / ``model``;
    a ``module.`` prefix (``DataParallel``) is removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors differ by torch version
        raise ValueError(f"cannot read weights file {path}: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_weights(model: nn.Module, path: str | Path, optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``path`` into ``model``; keys starting with ``optional_prefixes`` (the classifier that the
    backbone drops anyway) may be absent from the file or unused, anything else must match exactly."""
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches raise even when not strict
        raise ValueError(f"weights file {path} does not fit {type(model).__name__}: {error}") from error
    missing = [k for k in result.missing_keys if not k.startswith(optional_prefixes)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(optional_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


class DownloadError(OSError, RuntimeError):
    """Pretrained weights could not be downloaded (an OSError, so the CLI reports it in one line)."""


def download_failed(name: str, error: Exception) -> DownloadError:
    return DownloadError(
        f"could not download the pretrained weights of {name} ({type(error).__name__}: {error}). "
        f"Without internet, pass a local file instead: weights=PATH (model.weights in a config)"
    )
