"""Frozen-feature mode: run a backbone over a dataset once, cache the features, train the head on them.

:func:`extract_features` stores one **pooled** vector per image (``N x feature_dim`` float32): spatial
maps are pooled right away with ``pooling`` ("avg", "max" or "avg+max", the head's fixed poolings), so
the cache stays small and the head, given 2-D features, skips its own pooling. Learnable GeM pooling
needs the maps and so cannot be cached.

The cache is a ``.npy`` file in ``cache_dir`` named by a hash of

- the backbone: its architecture (module ``repr``) and a hash of its state dict, which tells apart
  backbone names, weight files and fine-tuned states without relying on names;
- the pooling;
- the dataset's transform ``repr`` (transforms from :mod:`deepmetric.data.transforms` have stable ones);
- the dataset: class name, ``root``, ``split``, length, a checksum of the labels and of the image
  paths when it has them (and the indices of a ``Subset``).

It is written to a temporary file and renamed, so an interrupted run never leaves a partial cache, and
it is returned memory-mapped (read-only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from deepmetric.data.base import LabeledDataset
from deepmetric.io import atomic_path
from deepmetric.models.backbones import Backbone, InputSpec
from deepmetric.models.head import pool

CACHE_POOLINGS = ("avg", "max", "avg+max")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of the architecture and every parameter and buffer value."""
    digest = hashlib.sha256(repr(backbone).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def spec_to_json(spec: InputSpec) -> dict[str, Any]:
    return {
        "image_size": spec.image_size,
        "resize_size": spec.resize_size,
        "channels": spec.channels,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "scale_255": spec.scale_255,
        "bgr": spec.bgr,
    }


def model_fingerprint(model: torch.nn.Module, spec: InputSpec) -> str:
    """Weights, architecture and preprocessing: two models with one fingerprint embed images alike (it ties
    indexes and embedding shards to the model that made them)."""
    return hashlib.sha256(f"{backbone_fingerprint(model)}|{spec_to_json(spec)}".encode()).hexdigest()[:16]


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def dataset_identity(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset's content without reading its images."""
    if isinstance(dataset, Subset):
        return {
            "subset_of": dataset_identity(dataset.dataset),
            "indices": _digest(np.asarray(dataset.indices, dtype=np.int64).tobytes()),
        }
    labels = np.asarray(getattr(dataset, "labels", []), dtype=np.int64)
    identity = {
        "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "root": str(getattr(dataset, "root", None)),
        "split": str(getattr(dataset, "split", None)),
        "length": len(dataset),
        "labels": _digest(labels.tobytes()),
    }
    if hasattr(dataset, "paths"):
        identity["paths"] = _digest("\n".join(str(p) for p in dataset.paths).encode())
    return identity


def cache_key(backbone: torch.nn.Module, dataset: Dataset, pooling: str) -> str:
    description = {
        "backbone": backbone_fingerprint(backbone),
        "pooling": pooling,
        "transform": repr(getattr(_base_dataset(dataset), "transform", None)),
        "dataset": dataset_identity(dataset),
    }
    return _digest(json.dumps(description, sort_keys=True).encode())


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def _run(
    backbone: Backbone,
    dataset: Dataset,
    out: np.ndarray,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    pooling: str,
) -> None:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    start = 0
    for images, _ in tqdm(loader, desc="extracting features", unit="batch"):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"dataset yields {type(images).__name__}, not tensors")
        vectors = pool(backbone(images.to(device, non_blocking=True)), pooling)
        out[start : start + len(vectors)] = vectors.float().cpu().numpy()
        start += len(vectors)


def extract_features(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    pooling: str = "avg",
) -> np.ndarray:
    """Pooled features (``N x backbone.feature_dim`` float32) of every item of ``dataset``, in order.

    ``dataset`` must yield ``(tensor, label)``: give it the backbone's evaluation transform
    (``build_transform(backbone.input_spec, train=False)``). With ``cache_dir`` the result is cached
    and a later call with the same backbone state, transform and dataset loads it without running the
    backbone.
    """
    if pooling not in CACHE_POOLINGS:
        raise ValueError(f"features can be cached with pooling {list(CACHE_POOLINGS)}, not {pooling!r}")
    if getattr(_base_dataset(dataset), "transform", None) is None:
        raise ValueError(
            "dataset has no transform, so it yields images, not tensors: "
            "set dataset.transform = build_transform(backbone.input_spec, train=False)"
        )
    path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        path = cache_dir / f"features-{cache_key(backbone, dataset, pooling)}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
        cache_dir.mkdir(parents=True, exist_ok=True)

    device = torch.device(device) if device is not None else _default_device()
    was_training = backbone.training
    parameter = next(backbone.parameters(), None)
    original_device = parameter.device if parameter is not None else torch.device("cpu")
    backbone.eval().to(device)
    shape = (len(dataset), backbone.feature_dim)
    try:
        if path is None:
            features = np.empty(shape, dtype=np.float32)
            _run(backbone, dataset, features, batch_size, device, num_workers, pooling)
            return features
        with atomic_path(path, suffix=".npy") as temporary:
            memmap = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
            _run(backbone, dataset, memmap, batch_size, device, num_workers, pooling)
            memmap.flush()
            del memmap
        return np.load(path, mmap_mode="r")
    finally:
        backbone.train(was_training).to(original_device)


class FeatureDataset(LabeledDataset):
    """Cached features with their labels: yields ``(feature_vector, label)`` to train the head alone
    (``EmbeddingModel.embed_features``)."""

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, class_names: list[str] | None = None
    ) -> None:
        super().__init__(transform=None)
        if features.ndim != 2:
            raise ValueError(f"features must be N x D, got shape {features.shape}")
        if len(features) != len(labels):
            raise ValueError(f"features has {len(features)} rows but labels has {len(labels)}")
        self.features = features
        self.labels = np.asarray(labels, dtype=np.int64)
        num = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num)]

    @classmethod
    def from_dataset(cls, dataset: Dataset, features: np.ndarray) -> FeatureDataset:
        """Pair ``extract_features(backbone, dataset)`` with ``dataset``'s labels and class names."""
        return cls(features, dataset.labels, getattr(dataset, "class_names", None))

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.features[index], dtype=np.float32))
