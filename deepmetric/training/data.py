"""The data of an experiment: training set, class-disjoint validation set, evaluation sets.

Evaluation sets are named by protocol: ``{"test": ds}`` for leave-one-out retrieval within the test
classes, or ``{"query": ds, "gallery": ds}`` for the query/gallery protocol. With
``data.validation_classes > 0`` a seeded random fraction of the *training* classes is held out as
``validation`` (leave-one-out), so that checkpoints and hyper-parameters are chosen without looking at the
test classes ("A Metric Learning Reality Check", Musgrave et al. 2020).

In frozen-feature mode every set is replaced by its cached backbone features (no augmentation is possible
there: features are extracted once with the evaluation transform).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepmetric.data import get_dataset, image_paths, subset
from deepmetric.data.transforms import build_transform
from deepmetric.models import Backbone
from deepmetric.models.backbones import CUT_POINTS
from deepmetric.training.config import ConfigError, ExperimentConfig


@dataclass
class ExperimentData:
    train: torch.utils.data.Dataset
    train_labels: np.ndarray  # contiguous 0..C-1 labels of ``train``
    evaluation: dict[str, torch.utils.data.Dataset]  # "test" or "query"/"gallery"
    validation: torch.utils.data.Dataset | None = None
    features: bool = False  # the sets hold cached backbone features, not images
    num_classes: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_classes = int(self.train_labels.max()) + 1 if len(self.train_labels) else 0


def contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels to 0..C-1 (proxy and classification losses need this)."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def split_validation_classes(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the samples whose class is held out for validation (a seeded class subset)."""
    classes = np.unique(labels)
    count = round(fraction * len(classes))
    if fraction > 0 and not 2 <= count <= len(classes) - 2:
        raise ValueError(
            f"data.validation_classes={fraction} holds out {count} of {len(classes)} training classes; "
            "both parts need at least 2 classes"
        )
    held_out = np.random.default_rng(seed).choice(classes, size=count, replace=False)
    return np.isin(labels, held_out)


def per_class_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` samples of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(members, size=min(per_class, len(members)), replace=False)
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(chosen))


def check_sampler(config: ExperimentConfig, labels: np.ndarray) -> None:
    """The training classes must fill the configured batches: ``sampler.classes_per_batch`` classes (P x K
    batches), at least 2 classes for pairs/triplets, and some class with 2 samples (a positive pair)."""
    sampler = config.sampler
    if config.train.iterations == 0:  # evaluation only: no batch is drawn
        return
    classes, counts = np.unique(labels, return_counts=True)
    where = f"split {config.data.train_split!r} of {config.data.root or config.data.name}"
    where += " (less data.validation_classes)" if config.data.validation_classes > 0 else ""
    needed = sampler.classes_per_batch if sampler.mode == "pk" else 2
    if len(classes) < needed:
        key = "sampler.classes_per_batch" if sampler.mode == "pk" else "sampler.mode"
        raise ConfigError(
            f"{key}: {where} has {len(classes)} training classes but a batch needs {needed}; "
            "lower it or add classes"
        )
    if len(counts) and counts.max() < 2:
        raise ConfigError(f"{where}: every training class has one image, so no batch holds a positive pair")


def evaluation_splits(config: ExperimentConfig) -> dict[str, str]:
    """Protocol name -> dataset split name."""
    data = config.data
    if data.gallery_split is None:
        return {"test": data.test_split}
    return {"query": data.test_split, "gallery": data.gallery_split}


def build_data(config: ExperimentConfig, backbone: Backbone, device: torch.device) -> ExperimentData:
    if config.model.trainable_part in CUT_POINTS:
        return build_map_data(config, backbone, device)
    data = config.data
    spec = backbone.input_spec
    frozen = config.model.frozen
    train_transform = build_transform(spec, train=not frozen, augment=data.augment)
    eval_transform = build_transform(spec, train=False)

    def load(split: str, transform) -> torch.utils.data.Dataset:
        return get_dataset(data.name, root=data.root, split=split, transform=transform, **data.options)

    train = load(data.train_split, eval_transform if frozen else train_transform)
    labels = np.asarray(train.labels)
    held_out = None
    if data.validation_classes > 0:
        held_out = split_validation_classes(labels, data.validation_classes, config.seed)
    # before any slow work (feature extraction, training): can the sampler draw batches at all?
    check_sampler(config, labels if held_out is None else labels[~held_out])
    evaluation = {name: load(split, eval_transform) for name, split in evaluation_splits(config).items()}
    validation_source = train
    if frozen:
        # features of whole splits are cached once; the validation split is cut from them afterwards
        train = validation_source = cached_features(config, backbone, train, device)
        evaluation = {name: cached_features(config, backbone, ds, device) for name, ds in evaluation.items()}
    elif data.validation_classes > 0:
        validation_source = load(data.train_split, eval_transform)
    if data.query_per_class > 0:
        queries = "query" if "query" in evaluation else "test"
        keep = per_class_sample(np.asarray(evaluation[queries].labels), data.query_per_class, config.seed)
        evaluation[queries] = subset(evaluation[queries], keep)

    validation = None
    if held_out is not None:
        validation = subset(validation_source, held_out)
        train = subset(train, ~held_out)
        labels = labels[~held_out]
    return ExperimentData(train, contiguous(labels), evaluation, validation, features=frozen)


def writable_cache(config: ExperimentConfig) -> Path:
    """The feature cache folder, created; refused with a message naming ``model.feature_cache``."""
    folder = Path(config.model.feature_cache).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(
            f"model.feature_cache: cannot write to {folder}: {error.strerror or error}"
        ) from None
    return folder


def build_map_data(config: ExperimentConfig, backbone: Backbone, device: torch.device) -> ExperimentData:
    """Partial fine-tuning: every set holds the frozen trunk's cached feature maps (``model.trainable``).
    Training draws a random cached view per sample (image, mirror, ``model.cache_crops`` crops; the image
    alone with ``data.augment: none``);
    evaluation uses the image view, or image and mirror with ``eval.flip``."""
    from deepmetric.models.feature_maps import cached_map_datasets, view_names

    data, cut = config.data, config.model.trainable_part
    folder = writable_cache(config)
    options = {"batch_size": config.eval.batch_size, "device": device, "num_workers": data.num_workers}
    eval_mode = "flip" if config.eval.flip else "image"

    def load(split: str):
        return lambda: get_dataset(data.name, root=data.root, split=split, transform=None, **data.options)

    # data.augment none: training sees the plain image view only; otherwise its mirror and crops too
    train_views = ["image"] if data.augment == "none" else view_names(config.model.cache_crops)
    eval_views = ["image", "mirror"] if config.eval.flip else ["image"]
    if config.eval.flip and "mirror" not in train_views:
        train_views.append("mirror")  # the validation classes are embedded flip-averaged as well
    train, validation_source = cached_map_datasets(
        backbone, cut, load(data.train_split), folder, train_views, ("random", eval_mode), **options
    )
    evaluation = {
        name: cached_map_datasets(backbone, cut, load(split), folder, eval_views, (eval_mode,), **options)[0]
        for name, split in evaluation_splits(config).items()
    }
    if data.query_per_class > 0:
        queries = "query" if "query" in evaluation else "test"
        keep = per_class_sample(np.asarray(evaluation[queries].labels), data.query_per_class, config.seed)
        evaluation[queries] = subset(evaluation[queries], keep)
    labels = np.asarray(train.labels)
    validation = None
    if data.validation_classes > 0:
        held_out = split_validation_classes(labels, data.validation_classes, config.seed)
        validation = subset(validation_source, held_out)
        train = subset(train, ~held_out)
        labels = labels[~held_out]
    return ExperimentData(train, contiguous(labels), evaluation, validation, features=True)


def cached_features(
    config: ExperimentConfig, backbone: Backbone, dataset: torch.utils.data.Dataset, device: torch.device
) -> torch.utils.data.Dataset:
    """The backbone features of ``dataset``, extracted once and cached on disk."""
    from deepmetric.models.features import FeatureDataset, extract_features

    array = extract_features(
        backbone,
        dataset,
        batch_size=config.eval.batch_size,
        device=device,
        cache_dir=Path(config.model.feature_cache).expanduser(),
        num_workers=config.data.num_workers,
    )
    features = FeatureDataset(array, np.asarray(dataset.labels))
    features.class_names = getattr(dataset, "class_names", None)
    paths = image_paths(dataset)
    if paths is not None:  # search hits over these features still name their images
        features.paths = paths
    return features
