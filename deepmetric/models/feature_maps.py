"""Partial fine-tuning on a CPU: cache the frozen stages' feature maps once, train the last stages on them.

:func:`extract_feature_maps` runs the *trunk* of a backbone split at a cut point (``Backbone.split``) over
every image of a dataset, once per **view**, and stores the maps as float16 ``.npy`` files that are read
back memory-mapped. Views:

- ``image``: the evaluation transform (resize + centre crop);
- ``mirror``: the same image flipped left-right (flip test-time augmentation, and a training view);
- ``crop0``, ``crop1``, ...: random resized crops with random flips (the usual training augmentation),
  each drawn from a seed of its own ``(crop_seed, image index, crop number)``, so a cache is reproducible.

Each view is one file named by a hash of the trunk's fingerprint (architecture and every weight of the
frozen stages: other weights never reuse a cache, while a model whose trained stages changed still
reuses the maps it was trained from), the cut point, the view's transform ``repr``,
the view name, the crop seed and the dataset's identity (see :mod:`deepmetric.models.features`). Every
image is decoded once for all missing views; files are written to a temporary name and renamed.

:class:`FeatureMapDataset` serves the cached maps: a random view per sample for training (the view is
drawn from torch's generator, which the trainer seeds per sample), the ``image`` view for evaluation, or
``image`` and ``mirror`` stacked (``V x C x H x W``) for flip averaging.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from deepmetric.data.base import LabeledDataset
from deepmetric.io import atomic_path
from deepmetric.models.backbones import Backbone
from deepmetric.models.features import _base_dataset, _digest, backbone_fingerprint, dataset_identity

BASE_VIEWS = ("image", "mirror")


def _transform(backbone: Backbone, crop: bool) -> Callable:
    # imported here: deepmetric.data.transforms imports this package (InputSpec)
    from deepmetric.data.transforms import build_transform

    return build_transform(backbone.input_spec, train=crop, augment="standard")


def view_names(crops: int) -> list[str]:
    return [*BASE_VIEWS, *(f"crop{k}" for k in range(crops))]


def _check_view(name: str) -> None:
    if name in BASE_VIEWS or (name.startswith("crop") and name[4:].isdigit()):
        return
    raise ValueError(f"unknown view {name!r}; views are image, mirror, crop0, crop1, ...")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


class _Views(Dataset):
    """Decodes each image once and returns its requested views stacked (``V x C x H x W``)."""

    def __init__(self, dataset: Dataset, backbone: Backbone, views: list[str], crop_seed: int) -> None:
        self.dataset, self.views, self.crop_seed = dataset, views, crop_seed
        self.plain = _transform(backbone, crop=False)
        self.crop = _transform(backbone, crop=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image, _ = self.dataset[index]
        out = []
        for name in self.views:
            if name in BASE_VIEWS:
                tensor = self.plain(image)
                out.append(tensor.flip(-1) if name == "mirror" else tensor)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.crop_seed, index, int(name[4:])))
                out.append(self.crop(image))
        return torch.stack(out)


def view_key(
    backbone: Backbone, cut: str, dataset: Dataset, view: str, crop_seed: int, fingerprint: str
) -> str:
    transform = _transform(backbone, crop=view not in BASE_VIEWS)
    description = {
        "backbone": fingerprint,
        "cut": cut,
        "view": view,
        "transform": repr(transform),
        "crop_seed": crop_seed if view not in BASE_VIEWS else None,
        "dataset": dataset_identity(dataset),
    }
    return _digest(json.dumps(description, sort_keys=True).encode())


@torch.no_grad()
def extract_feature_maps(
    backbone: Backbone,
    cut: str,
    dataset: Dataset,
    cache_dir: str | Path,
    views: list[str] | tuple[str, ...] = BASE_VIEWS,
    crop_seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict[str, np.ndarray]:
    """``{view: N x C x H x W float16 memmap}``: the trunk's maps (``backbone.split(cut)[0]``) of every
    image of ``dataset`` (which must yield PIL images: ``transform=None``), cached in ``cache_dir``."""
    for name in views:
        _check_view(name)
    if getattr(_base_dataset(dataset), "transform", None) is not None:
        raise ValueError(
            "extract_feature_maps applies the views' transforms itself: give a dataset with transform=None"
        )
    trunk, _ = backbone.split(cut)
    cache_dir = Path(cache_dir).expanduser()
    fingerprint = backbone_fingerprint(trunk)
    paths = {
        name: cache_dir / f"maps-{view_key(backbone, cut, dataset, name, crop_seed, fingerprint)}.npy"
        for name in views
    }
    missing = [name for name in views if not paths[name].is_file()]
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _extract(
            backbone, trunk, dataset, missing, paths, crop_seed, batch_size, torch.device(device), num_workers
        )
    return {name: np.load(paths[name], mmap_mode="r") for name in views}


def _extract(
    backbone: Backbone,
    trunk: torch.nn.Module,
    dataset: Dataset,
    views: list[str],
    paths: dict[str, Path],
    crop_seed: int,
    batch_size: int,
    device: torch.device,
    num_workers: int,
) -> None:
    was_training = backbone.training
    parameter = next(backbone.parameters(), None)
    original_device = parameter.device if parameter is not None else torch.device("cpu")
    backbone.eval().to(device)
    loader = DataLoader(
        _Views(dataset, backbone, views, crop_seed), batch_size=batch_size, num_workers=num_workers
    )
    try:
        with ExitStack() as stack:  # every view's file appears at once, or none does
            temporaries = {name: stack.enter_context(atomic_path(paths[name], ".npy")) for name in views}
            arrays: dict[str, np.ndarray] = {}
            start = 0
            for batch in tqdm(loader, desc=f"caching feature maps ({', '.join(views)})", unit="batch"):
                count, nviews = batch.shape[:2]
                maps = trunk(batch.flatten(0, 1).to(device)).unflatten(0, (count, nviews))
                maps = maps.to(torch.float16).cpu().numpy()
                for position, name in enumerate(views):
                    if name not in arrays:
                        shape = (len(dataset), *maps.shape[2:])
                        arrays[name] = np.lib.format.open_memmap(
                            temporaries[name], mode="w+", dtype=np.float16, shape=shape
                        )
                    arrays[name][start : start + count] = maps[:, position]
                start += count
            for array in arrays.values():
                array.flush()
    finally:
        backbone.train(was_training).to(original_device)


class FeatureMapDataset(LabeledDataset):
    """Cached feature maps with their labels. ``mode``: ``random`` (a random view per sample, for
    training), ``image`` (the plain view), or ``flip`` (``image`` and ``mirror`` stacked)."""

    def __init__(
        self,
        views: dict[str, np.ndarray],
        labels: np.ndarray,
        mode: str = "image",
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(transform=None)
        if mode not in ("random", "image", "flip"):
            raise ValueError(f"FeatureMapDataset mode must be random, image or flip, got {mode!r}")
        needed = ["image", "mirror"] if mode == "flip" else ["image"] if mode == "image" else []
        for name in needed:
            if name not in views:
                raise ValueError(f"mode {mode!r} needs the {name!r} view; cached views: {sorted(views)}")
        lengths = {len(array) for array in views.values()}
        if not views or lengths != {len(labels)}:
            raise ValueError(f"every view must have one map per label ({len(labels)}), got {sorted(lengths)}")
        self.views = views
        self.names = sorted(views)
        self.mode = mode
        self.labels = np.asarray(labels, dtype=np.int64)
        num = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num)]

    def __len__(self) -> int:
        return len(self.labels)

    def _map(self, name: str, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.views[name][index], dtype=np.float32))

    def load(self, index: int) -> torch.Tensor:
        if self.mode == "random":
            return self._map(self.names[int(torch.randint(len(self.names), ()))], index)
        if self.mode == "flip":
            return torch.stack([self._map("image", index), self._map("mirror", index)])
        return self._map("image", index)


def cached_map_datasets(
    backbone: Backbone,
    cut: str,
    load: Callable[[], LabeledDataset],
    cache_dir: str | Path,
    views: list[str],
    modes: tuple[str, ...],
    **options,
) -> list[FeatureMapDataset]:
    """One :class:`FeatureMapDataset` per mode over the same cached views of ``load()``'s images."""
    dataset = load()
    arrays = extract_feature_maps(backbone, cut, dataset, cache_dir, views=views, **options)
    names = getattr(dataset, "class_names", None)
    return [FeatureMapDataset(arrays, np.asarray(dataset.labels), mode, names) for mode in modes]
