"""The BN-Inception backbone: forward pass, input convention, weight files in Cadene's layout."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deepmetric.data.transforms import build_transform
from deepmetric.models import build_backbone
from deepmetric.models.bninception import INPUT_SPEC, BNInception, load_weights


def test_bninception_builds_and_runs():
    torch.manual_seed(0)
    backbone = build_backbone("bninception", pretrained=False)
    assert backbone.feature_dim == 1024 and backbone.spatial
    assert backbone.input_spec.scale_255 and backbone.input_spec.bgr and backbone.input_spec.image_size == 224
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1024, 2, 2) and torch.isfinite(out).all()
    assert not any(name.startswith("model.last_linear") for name, _ in backbone.body.named_parameters())


def test_bninception_input_convention_is_bgr_255_minus_mean():
    image = Image.new("RGB", (256, 256), (200, 50, 10))
    tensor = build_transform(INPUT_SPEC, train=False)(image)
    assert tensor.shape == (3, 224, 224)
    torch.testing.assert_close(tensor[:, 100, 100], torch.tensor([10 - 104.0, 50 - 117.0, 200 - 128.0]))


def caffe_port_file(model: BNInception, path) -> None:
    """Save ``model`` as the converted Caffe file looks: no BatchNorm counters, BatchNorm vectors 1 x C."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = tensor[None] if "_bn." in key else tensor
    torch.save(state, path)


def test_bninception_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = BNInception()
    for module in source.modules():  # non-default statistics, so a silent skip would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    caffe_port_file(source, tmp_path / "caffe.pth")
    expected = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    for name in ("plain.pth", "caffe.pth"):
        target = BNInception()
        load_weights(target, tmp_path / name)
        loaded = target.state_dict()
        for key, tensor in expected.items():
            torch.testing.assert_close(loaded[key], tensor)
    backbone = build_backbone("bninception", pretrained=False, weights=str(tmp_path / "caffe.pth"))
    torch.testing.assert_close(
        backbone.body.model.inception_5b_pool_proj_bn.running_var,
        source.inception_5b_pool_proj_bn.running_var,
    )


def test_bninception_rejects_wrong_keys_and_shapes(tmp_path):
    state = BNInception().state_dict()
    state["inception_3a_1x1_batchnorm.weight"] = state.pop("inception_3a_1x1_bn.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing keys \['inception_3a_1x1_bn.weight'\].*unexpected keys"):
        load_weights(BNInception(), tmp_path / "renamed.pth")
    state = BNInception().state_dict()
    state["conv2_3x3.weight"] = torch.zeros(192, 64, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"conv2_3x3\.weight has shape"):
        load_weights(BNInception(), tmp_path / "shape.pth")


def test_bninception_download_failure_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="weights=PATH"):
        build_backbone("bninception", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        build_backbone("bninception", pretrained=True, weights="x.pth")
