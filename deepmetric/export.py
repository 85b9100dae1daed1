"""Export a trained model to ONNX or TorchScript, normalisation included.

The exported graph takes ``N x C x H x W`` float32 images in 0..1 at the model's input size and returns
the embeddings; the mean/std normalisation (and BGR / 0..255 conventions) is inside the graph. What the
graph does *not* do is decoding and resizing, so a sidecar ``FILE.json`` says how images must be prepared:
channels, shorter side resized to ``resize_size`` (bilinear, antialiased), centre crop to
``image_size``, values divided by 255. The sidecar also keeps the distance and the model fingerprint, so
``deepmetric.load("model.onnx")`` builds indexes interchangeable with the run's own.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from deepmetric.api import SIDECAR_FORMAT, LoadedModel, spec_to_json
from deepmetric.io import atomic_path, write_text

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


def sidecar(model: LoadedModel, export_format: str) -> dict:
    spec = model.spec
    return {
        "format": SIDECAR_FORMAT,
        "export_format": export_format,
        "input": spec_to_json(spec),
        "input_shape": [spec.channels, spec.image_size, spec.image_size],
        "input_range": "float32 0..1 (pixel / 255), N x C x H x W; normalisation is inside the graph",
        "resize": "shorter side to resize_size (bilinear, antialiased), then centre crop to image_size",
        "channels": "grey" if spec.channels == 1 else "RGB",
        "embedding_size": model.embedding_size,
        "distance": model.distance,
        "fingerprint": model.fingerprint,
        "source": model.source,
    }


def export_model(model: LoadedModel, path: str | Path, export_format: str = "onnx") -> Path:
    """Write ``model`` (a run's PyTorch model) to ``path`` as ONNX or TorchScript, and ``path.json``."""
    if export_format not in FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of {list(FORMATS)}")
    if model.module is None:
        raise ValueError("only a run's PyTorch model can be exported (this one is already exported)")
    path = Path(path)
    module = model.module.cpu().eval()
    spec = model.spec
    example = torch.rand(
        2, spec.channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0)
    )
    with atomic_path(path, suffix=path.suffix) as temporary, torch.no_grad():
        if export_format == "onnx":
            # the TorchScript-based exporter: stable for these convolutional networks, no onnxscript needed
            torch.onnx.export(
                module,
                (example,),
                str(temporary),
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; still asked for
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.trace(module, example), str(temporary))
    write_text(Path(f"{path}.json"), json.dumps(sidecar(model, export_format), indent=2))
    return path
