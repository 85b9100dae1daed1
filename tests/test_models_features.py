"""Frozen-feature extraction: pooled vectors, the on-disk cache and its key, FeatureDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.data import subset
from deepmetric.data.digits import Digits
from deepmetric.data.transforms import build_transform
from deepmetric.models import Backbone, EmbeddingHead, EmbeddingModel, build_backbone
from deepmetric.models.features import FeatureDataset, extract_features


class CountingBackbone(Backbone):
    """small_cnn that counts the images it sees."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        inner = build_backbone("small_cnn")
        super().__init__(inner.body, inner.feature_dim, inner.input_spec)
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(images)
        return super().forward(images)


def digits(split: str = "train", count: int = 60, train_transform: bool = False):
    """The first ``count`` digits of a split, transformed for small_cnn (a small Subset keeps tests fast)."""
    spec = build_backbone("small_cnn").input_spec
    return subset(
        Digits(split=split, transform=build_transform(spec, train=train_transform)), np.arange(count)
    )


def test_features_are_pooled_backbone_outputs_in_dataset_order():
    backbone, dataset = CountingBackbone(), digits()
    features = extract_features(backbone, dataset, batch_size=16, device="cpu")
    assert features.shape == (len(dataset), 64) and features.dtype == np.float32
    assert backbone.images_seen == len(dataset) and backbone.training  # mode restored
    with torch.no_grad():
        expected = backbone.eval()(torch.stack([dataset[i][0] for i in (0, 41)])).mean(dim=(-2, -1))
    np.testing.assert_allclose(features[[0, 41]], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_second_call_reads_the_cache_without_running_the_backbone(tmp_path):
    backbone, dataset = CountingBackbone(), digits()
    first = extract_features(backbone, dataset, batch_size=256, cache_dir=tmp_path)
    assert backbone.images_seen == len(dataset)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and not files[0].name.startswith(".")
    second = extract_features(backbone, dataset, batch_size=256, cache_dir=tmp_path)
    assert backbone.images_seen == len(dataset)  # not run again
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(first, second)


def test_cache_key_tells_datasets_transforms_poolings_and_weights_apart(tmp_path):
    backbone, dataset = CountingBackbone(), digits()
    extract_features(backbone, dataset, batch_size=512, cache_dir=tmp_path)
    extract_features(backbone, digits("test"), batch_size=512, cache_dir=tmp_path)
    extract_features(backbone, digits(count=10), batch_size=512, cache_dir=tmp_path)
    extract_features(backbone, dataset, batch_size=512, cache_dir=tmp_path, pooling="max")
    extract_features(backbone, digits(train_transform=True), batch_size=512, cache_dir=tmp_path)
    with torch.no_grad():
        backbone.body[0].bias.add_(1.0)  # a fine-tuned state is another backbone
    extract_features(backbone, dataset, batch_size=512, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.npy"))) == 6


def test_interrupted_extraction_leaves_no_cache(tmp_path):
    class Failing(CountingBackbone):
        def forward(self, images):
            if self.images_seen:
                raise RuntimeError("out of memory")
            return super().forward(images)

    with pytest.raises(RuntimeError, match="out of memory"):
        extract_features(Failing(), digits(), batch_size=16, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_rejected():
    backbone = CountingBackbone()
    with pytest.raises(ValueError, match="transform"):
        extract_features(backbone, Digits(split="train"))  # yields PIL images
    with pytest.raises(ValueError, match="pooling"):
        extract_features(backbone, digits(), pooling="gem")


def test_feature_dataset_trains_the_head_alone():
    dataset = digits("test")
    features = extract_features(CountingBackbone(), dataset, batch_size=512)
    cached = FeatureDataset.from_dataset(dataset, features)
    assert len(cached) == len(dataset) and cached.feature_dim == 64
    np.testing.assert_array_equal(cached.labels, dataset.labels)
    assert cached.class_names == dataset.class_names
    vectors, labels = next(iter(torch.utils.data.DataLoader(cached, batch_size=8)))
    assert vectors.shape == (8, 64) and labels.tolist() == dataset.labels[:8].tolist()
    model = EmbeddingModel(build_backbone("small_cnn"), EmbeddingHead(64, 16))
    assert model.embed_features(vectors).shape == (8, 16)
    with pytest.raises(ValueError, match="rows"):
        FeatureDataset(np.zeros((3, 4), np.float32), np.zeros(2))
