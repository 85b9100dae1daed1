"""build_transform: shapes, channel conversion, normalisation and the Caffe conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.digits import Digits
from deepmetric.data.transforms import build_transform
from deepmetric.models.backbones import IMAGENET_MEAN, IMAGENET_STD, InputSpec, build_backbone


def rgb_image(width: int = 300, height: int = 260, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_digits_with_small_cnn_spec_evaluation_upsamples_to_16():
    spec = build_backbone("small_cnn", image_size=16).input_spec
    image, _ = Digits(split="train")[0]
    assert image.size == (8, 8) and image.mode == "L"
    tensor = build_transform(spec, train=False)(image)
    assert tensor.shape == (1, 16, 16) and tensor.dtype == torch.float32
    # normalised with mean 0.5, std 0.5: values in [-1, 1], both ends reached by the digit strokes
    assert tensor.min() >= -1.0 - 1e-6 and tensor.max() <= 1.0 + 1e-6
    expected = (np.asarray(image.resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255 - 0.5) / 0.5
    assert np.abs(tensor[0].numpy() - expected).mean() < 0.1


def test_digits_train_transforms_run_through_the_model():
    backbone = build_backbone("small_cnn", image_size=16)
    dataset = Digits(split="train", transform=build_transform(backbone.input_spec, train=True))
    torch.manual_seed(0)
    batch = torch.stack([dataset[i][0] for i in range(4)])
    assert batch.shape == (4, 1, 16, 16)
    assert backbone(batch).shape == (4, backbone.feature_dim, 8, 8)


def test_imagenet_evaluation_matches_manual_resize_crop_normalise():
    image = rgb_image()
    tensor = build_transform(InputSpec(), train=False)(image)
    assert tensor.shape == (3, 224, 224)
    # shorter side 260 -> 256: width 300 -> 295; centre crop 224
    resized = image.resize((295, 256), Image.BILINEAR)
    left, top = round((295 - 224) / 2), round((256 - 224) / 2)
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    expected = (crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    difference = np.abs(tensor.permute(1, 2, 0).numpy() - expected)
    assert difference.mean() < 0.05  # PIL vs torchvision antialiasing differ by a few grey levels


def test_train_standard_is_random_and_none_is_the_evaluation_pipeline():
    image, spec = rgb_image(), InputSpec(image_size=64, resize_size=72)
    standard = build_transform(spec, train=True)
    torch.manual_seed(0)
    first, second = standard(image), standard(image)
    assert first.shape == second.shape == (3, 64, 64)
    assert not torch.equal(first, second)
    evaluation = build_transform(spec, train=False)(image)
    torch.testing.assert_close(build_transform(spec, train=True, augment="none")(image), evaluation)


def test_grey_image_to_rgb_backbone_and_rgb_to_grey_backbone():
    grey = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8))
    rgb_spec = InputSpec(image_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    rgb_tensor = build_transform(rgb_spec, train=False)(grey)
    assert rgb_tensor.shape == (3, 32, 32)
    torch.testing.assert_close(rgb_tensor[0], rgb_tensor[2])
    grey_spec = InputSpec(image_size=32, resize_size=32, channels=1, mean=(0.0,), std=(1.0,))
    grey_tensor = build_transform(grey_spec, train=False)(rgb_image(40, 40))
    assert grey_tensor.shape == (1, 32, 32)


def test_scale_255_and_bgr_follow_caffe_convention():
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30  # R, G, B
    spec = InputSpec(8, 8, mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0), scale_255=True, bgr=True)
    tensor = build_transform(spec, train=False)(Image.fromarray(pixels))
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([30.0 - 1, 20.0 - 2, 10.0 - 3]), atol=1e-4)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="augment"):
        build_transform(InputSpec(), train=True, augment="heavy")
    with pytest.raises(ValueError, match="mean"):
        build_transform(InputSpec(channels=1), train=False)
    with pytest.raises(TypeError, match="PIL"):
        build_transform(InputSpec(), train=False)(np.zeros((8, 8, 3), dtype=np.uint8))


def test_repr_is_stable_for_cache_keys():
    spec = InputSpec()
    assert repr(build_transform(spec, False)) == repr(build_transform(spec, False))
    assert "0x" not in repr(build_transform(spec, True))
    assert repr(build_transform(spec, False)) != repr(build_transform(InputSpec(image_size=192), False))
