"""small_cnn with ``in_channels: 3``: one mean/std per channel, so CIFAR-like colour images run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.transforms import build_transform
from deepmetric.models import build_backbone
from deepmetric.training import train
from deepmetric.training.components import build_model
from deepmetric.training.data import build_data
from tests.demo_configs import TINY_RUN, demo_config


@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_normalises_every_channel(channels):
    spec = build_backbone("small_cnn", in_channels=channels, image_size=8, width=4).input_spec
    assert spec.channels == channels
    assert spec.mean == spec.std == (0.5,) * channels


def colour_npz(path, classes: int = 10, per_class: int = 6) -> None:
    """A tiny CIFAR-like file: 8x8 RGB uint8 images whose colour depends on the class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    base = rng.integers(0, 256, (classes, 3), dtype=np.uint8)[labels][:, None, None, :]
    noise = rng.integers(0, 16, (len(labels), 8, 8, 3), dtype=np.uint8)
    np.savez(path, images=(base // 2 + noise).astype(np.uint8), labels=labels)


def colour_config(path, *extra: str):
    return demo_config(
        *TINY_RUN,
        "data.name=npz",
        f"data.root={path}",
        "data.augment=none",
        "model.backbone_options={in_channels: 3, image_size: 8, width: 8}",
        *extra,
    )


def test_colour_images_through_transform_and_model(tmp_path):
    colour_npz(tmp_path / "cifar_like.npz")
    config = colour_config(tmp_path / "cifar_like.npz")
    model = build_model(config).eval()
    data = build_data(config, model.backbone, torch.device("cpu"))
    image, _ = data.evaluation["test"][0]
    assert image.shape == (3, 8, 8)
    # the transform of the model's InputSpec maps each channel from 0..1 to -1..1
    raw = np.load(tmp_path / "cifar_like.npz")
    test_image = raw["images"][raw["labels"] >= 5][0]  # the test split: the second half of the classes
    expected = torch.from_numpy(test_image).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(image, expected, atol=1e-6)
    with torch.no_grad():
        embeddings = model(torch.stack([data.evaluation["test"][i][0] for i in range(4)]))
    assert embeddings.shape == (4, 8) and torch.isfinite(embeddings).all()
    eval_transform = build_transform(model.backbone.input_spec, train=False)
    assert torch.allclose(eval_transform(Image.fromarray(test_image)), expected, atol=1e-6)


def test_colour_run_trains_and_evaluates(tmp_path):
    colour_npz(tmp_path / "cifar_like.npz")
    metrics = train(colour_config(tmp_path / "cifar_like.npz", "train.iterations=2"), tmp_path / "run")
    assert 0 <= metrics["trained"]["recall@1"] <= 1
