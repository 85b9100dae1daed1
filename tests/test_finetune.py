"""Partial fine-tuning from cached feature maps (model.trainable), cut points, flip averaging."""

import json
import os

import numpy as np
import pytest
import torch

from deepmetric.data.base import ArrayDataset
from deepmetric.data.transforms import build_transform
from deepmetric.models import EmbeddingHead, EmbeddingModel, build_backbone
from deepmetric.models.feature_maps import FeatureMapDataset, extract_feature_maps, view_names
from deepmetric.training import load_model, train
from deepmetric.training.config import ConfigError
from deepmetric.training.data import build_data
from tests.demo_configs import demo_config

SMALL = {"in_channels": 1, "image_size": 8, "width": 4}


def small_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("small_cnn", **SMALL).eval()


def grey_images(count: int = 6) -> ArrayDataset:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(count, 10, 12), dtype=np.uint8)  # not square: crops differ
    return ArrayDataset(pixels, np.arange(count) % 3)


@pytest.mark.parametrize("cut", ["last_stage", "last_2_stages"])
def test_split_tail_of_trunk_is_the_backbone(cut):
    backbone = small_backbone()
    trunk, tail = backbone.split(cut)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(tail(trunk(x)), backbone(x))
    tail_ids = {id(p) for p in tail.parameters()}
    assert tail_ids.isdisjoint(id(p) for p in trunk.parameters())
    assert tail_ids <= {id(p) for p in backbone.parameters()}  # shared, not copied


@pytest.mark.slow
def test_efficientnet_lite0_cut_points_give_the_published_stage_shapes():
    backbone = build_backbone("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        full = backbone(x)
        for cut, shape in (("last_stage", (192, 7, 7)), ("last_2_stages", (112, 14, 14))):
            trunk, tail = backbone.split(cut)
            maps = trunk(x)
            assert maps.shape[1:] == shape
            assert torch.allclose(tail(maps), full, atol=1e-5)


def test_a_cut_point_the_backbone_lacks_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.trainable: must be one of"):
        demo_config("model.trainable=last_3_stages")
    with pytest.raises(ConfigError, match=r"model.trainable: 'last_stage' trains the backbone"):
        demo_config("model.frozen=true", "model.trainable=last_stage")
    config = demo_config(
        "model.backbone=timm:resnet18", "model.backbone_options={}", "model.trainable=last_stage"
    )
    from deepmetric.training.components import build_model

    with pytest.raises(ConfigError, match=r"model.trainable: timm:resnet18: this backbone has no cut point"):
        build_model(config)


def test_feature_map_cache_holds_each_view_and_is_keyed(tmp_path, monkeypatch):
    backbone, dataset = small_backbone(), grey_images()
    views = view_names(2)
    maps = extract_feature_maps(backbone, "last_stage", dataset, tmp_path, views=views)
    trunk, _ = backbone.split("last_stage")
    transform = build_transform(backbone.input_spec, train=False)
    plain = torch.stack([transform(dataset[i][0]) for i in range(len(dataset))])
    with torch.no_grad():
        expected = trunk(plain).numpy()
        mirrored = trunk(plain.flip(-1)).numpy()
    assert maps["image"].dtype == np.float16 and isinstance(maps["image"], np.memmap)
    np.testing.assert_allclose(maps["image"], expected, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(maps["mirror"], mirrored, atol=2e-3, rtol=2e-3)
    assert not np.array_equal(maps["crop0"], maps["crop1"])
    files = sorted(tmp_path.glob("maps-*.npy"))
    assert len(files) == 4 and all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)
    assert not list(tmp_path.glob(".*"))  # no temporary file left

    monkeypatch.setattr("deepmetric.models.feature_maps._extract", lambda *a, **k: pytest.fail("recomputed"))
    again = extract_feature_maps(backbone, "last_stage", dataset, tmp_path, views=views)
    assert all(np.array_equal(again[v], maps[v]) for v in views)
    _, tail = backbone.split("last_stage")
    with torch.no_grad():
        next(tail.parameters()).add_(1.0)  # trained stages changed, frozen stages not: the maps still hold
    extract_feature_maps(backbone, "last_stage", dataset, tmp_path, views=views)
    monkeypatch.undo()

    # other weights, another cut point, another dataset: new files, never a stale cache
    extract_feature_maps(small_backbone(seed=1), "last_stage", dataset, tmp_path, views=["image"])
    extract_feature_maps(backbone, "last_2_stages", dataset, tmp_path, views=["image"])
    extract_feature_maps(backbone, "last_stage", grey_images(5), tmp_path, views=["image"])
    assert len(list(tmp_path.glob("maps-*.npy"))) == 7


def test_crop_views_are_reproducible(tmp_path):
    backbone, dataset = small_backbone(), grey_images()
    first = extract_feature_maps(backbone, "last_stage", dataset, tmp_path / "a", views=["crop0"])
    second = extract_feature_maps(backbone, "last_stage", dataset, tmp_path / "b", views=["crop0"])
    assert np.array_equal(first["crop0"], second["crop0"])


def test_feature_map_dataset_modes():
    views = {name: np.full((3, 2, 1, 1), value, np.float16) for value, name in enumerate(["image", "mirror"])}
    labels = np.array([0, 1, 1])
    assert FeatureMapDataset(views, labels, "image")[1][0].flatten().tolist() == [0, 0]
    assert FeatureMapDataset(views, labels, "flip")[0][0].shape == (2, 2, 1, 1)
    torch.manual_seed(0)
    drawn = {float(FeatureMapDataset(views, labels, "random")[0][0][0, 0, 0]) for _ in range(30)}
    assert drawn == {0.0, 1.0}
    with pytest.raises(ValueError, match=r"needs the 'mirror' view"):
        FeatureMapDataset({"image": views["image"]}, labels, "flip")


def test_flip_average_is_the_normalised_mean_of_both_embeddings():
    backbone = small_backbone()
    model = EmbeddingModel(backbone, EmbeddingHead(backbone.feature_dim, 6), flip_average=True).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        plain = model.head(backbone(x))
        mirror = model.head(backbone(x.flip(-1)))
        expected = torch.nn.functional.normalize(plain + mirror, dim=1)
        assert torch.allclose(model(x), expected, atol=1e-6)
    model.train()
    assert torch.allclose(model(x), model.head(backbone(x)), atol=1e-6)  # training sees single views


TINY = [
    f"model.backbone_options={json.dumps(SMALL)}",
    "model.embedding_size=8",
    "sampler.classes_per_batch=3",
    "sampler.samples_per_class=4",
    "train.iterations=6",
    "train.eval_every=3",
    "eval.metrics=[recall@1]",
    "optimizer.lr=0.01",
    "data.validation_classes=0.4",
]


@pytest.mark.slow
def test_partial_fine_tuning_trains_the_tail_only_and_saves_an_image_model(tmp_path):
    overrides = [*TINY, "model.trainable=last_stage", "eval.flip=true"]
    config = demo_config(*overrides, f"model.feature_cache={tmp_path / 'cache'}")
    torch.manual_seed(config.seed)
    initial = build_backbone("small_cnn", **SMALL).state_dict()
    run = tmp_path / "run"
    metrics = train(config, run)
    assert len(list((tmp_path / "cache").glob("maps-*.npy"))) == 4  # train and test: image + mirror
    model = load_model(run, device="cpu")
    state = model.backbone.state_dict()
    trunk_keys = [k for k in state if k.split(".")[1] in {"0", "1", "3", "4"}]  # stages 1-2: frozen
    tail_weights = [k for k in state if k.split(".")[1] == "7"]  # the last stage's convolution
    assert trunk_keys and all(torch.equal(state[k], initial[k]) for k in trunk_keys)
    assert any(not torch.equal(state[k], initial[k]) for k in tail_weights)
    # BatchNorm of the trained stage is frozen by default: its running statistics never move
    assert torch.equal(state["body.8.running_mean"], initial["body.8.running_mean"])
    # the saved model embeds images as training embedded the cached maps (flip averaging included)
    data = build_data(config, model.backbone, torch.device("cpu"))
    cached = np.load(run / "embeddings/test_embeddings.npy")
    from deepmetric.data import get_dataset

    images = get_dataset(
        config.data.name, split="test", transform=build_transform(model.input_spec, train=False)
    )
    x = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), cached, atol=2e-3)
    assert len(data.evaluation["test"]) == len(cached)
    assert metrics["trained"]["recall@1"] > 0


def test_unwritable_feature_cache_is_refused_naming_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = demo_config(*TINY, "model.trainable=last_stage", f"model.feature_cache={blocker / 'sub'}")
    with pytest.raises(ConfigError, match=r"model.feature_cache: cannot write to"):
        train(config, tmp_path / "run")


def test_xbm_trains_through_the_trainer(tmp_path):
    config = demo_config(*TINY, "loss.name=contrastive", "loss.memory={size: 32, start: 2}")
    metrics = train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)["loss"]
    assert int(state["filled"]) == 32 and metrics["iterations"] == 6
    with pytest.raises(ConfigError, match=r"loss.memory.size: 100000 is larger than the"):
        train(demo_config(*TINY, "loss.name=contrastive", "loss.memory.size=100000"), tmp_path / "big")


def test_efficientnet_lite0_input_size_is_an_option_and_keys_the_cache(tmp_path):
    default = build_backbone("efficientnet_lite0", pretrained=False)
    large = build_backbone("efficientnet_lite0", pretrained=False, image_size=288)
    assert (default.input_spec.image_size, default.input_spec.resize_size) == (224, 256)
    assert (large.input_spec.image_size, large.input_spec.resize_size) == (288, 329)
    custom = build_backbone("efficientnet_lite0", pretrained=False, image_size=256, resize_size=256)
    assert custom.input_spec.resize_size == 256
    with pytest.raises(ValueError, match="resize_size 200 is smaller than image_size 224"):
        build_backbone("efficientnet_lite0", pretrained=False, resize_size=200)
    with pytest.raises(ValueError, match="image_size must be an integer"):
        build_backbone("efficientnet_lite0", pretrained=False, image_size=3.5)
    from deepmetric.models.feature_maps import view_key
    from deepmetric.models.features import backbone_fingerprint

    large.load_state_dict(default.state_dict())  # same weights: only the input size differs
    dataset = grey_images()
    keys = {
        view_key(b, "last_2_stages", dataset, "image", 0, backbone_fingerprint(b.split("last_2_stages")[0]))
        for b in (default, large)
    }
    assert len(keys) == 2  # another input size never reuses a cached map


def test_identity_head_starts_at_the_pooled_features():
    from deepmetric.models.head import EmbeddingHead

    features = torch.randn(5, 16)
    head = EmbeddingHead(16, embedding_size=16, init="identity")
    assert torch.allclose(head(features), torch.nn.functional.normalize(features, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="embedding_size equal to the 16 backbone features, got 8"):
        EmbeddingHead(16, embedding_size=8, init="identity")
    with pytest.raises(ConfigError, match=r"model.head_init: must be one of|model.head_init: unknown"):
        demo_config("model.head_init=eye")
    from deepmetric.training.components import build_model

    with pytest.raises(ConfigError, match=r"model.head_init: an identity-initialised head needs"):
        build_model(demo_config("model.head_init=identity", "model.embedding_size=7"))
