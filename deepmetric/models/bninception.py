"""BN-Inception (Inception v2 with batch normalisation; Ioffe & Szegedy, "Batch Normalization", ICML 2015):
the backbone of most deep metric learning papers (lifted structure, N-pair, ProxyNCA, MS, Proxy-Anchor).

The layout follows Cadene's ``pretrainedmodels`` port of the Caffe model, module for module and name for
name (``conv1_7x7_s2``, ``inception_3a_1x1_bn``, ..., ``last_linear``), so its converted ImageNet weights
``bn_inception-52deb4733.pth`` load with every key matched. Two details of that file are handled: its
BatchNorm tensors may be stored as ``1 x C`` (old PyTorch broadcast them; they are reshaped to ``C``) and
it has no ``num_batches_tracked`` counters (PyTorch fills them in).

Input convention of the Caffe weights (:data:`INPUT_SPEC`): BGR channel order, pixel values 0..255 minus the
per-channel mean (104, 117, 128) in BGR order, std 1, 224 x 224 crops. The backbone returns the
1024 x 7 x 7 map of ``inception_5b`` for the embedding head to pool (the original global pool is a 7 x 7
average).

Weights: ``weights=PATH`` loads a local file; ``pretrained=True`` uses the copy in torch.hub's checkpoint
folder (``$TORCH_HOME/hub/checkpoints``), downloading it there first (:func:`download_weights`) when
missing. BatchNorm momentum is PyTorch's 0.1; Cadene's port sets 0.9 (a Caffe conversion artefact that
makes the running statistics follow the last batch): pass ``bn_momentum=0.9`` to reproduce it exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.models.backbones import BACKBONES, Backbone, InputSpec
from deepmetric.models.weights import download_failed, read_state_dict

URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
FILENAME = "bn_inception-52deb4733.pth"
SHA256_PREFIX = "52deb4733"  # torch.hub's convention: the file name carries the start of its sha256
INPUT_SPEC = InputSpec(
    image_size=224, resize_size=256, mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0), scale_255=True, bgr=True
)
FEATURE_DIM = 1024

# Inception modules: name, input channels, 1x1 (0: none), (3x3 reduce, 3x3), (double reduce, double 3x3),
# pooling, pool projection (0: the pooled input is concatenated as is), stride of the module.
_MODULES = (
    ("3a", 192, 64, (64, 64), (64, 96), "avg", 32, 1),
    ("3b", 256, 64, (64, 96), (64, 96), "avg", 64, 1),
    ("3c", 320, 0, (128, 160), (64, 96), "max", 0, 2),
    ("4a", 576, 224, (64, 96), (96, 128), "avg", 128, 1),
    ("4b", 576, 192, (96, 128), (96, 128), "avg", 128, 1),
    ("4c", 576, 160, (128, 160), (128, 160), "avg", 128, 1),
    ("4d", 608, 96, (128, 192), (160, 192), "avg", 128, 1),
    ("4e", 608, 0, (128, 192), (192, 256), "max", 0, 2),
    ("5a", 1056, 352, (192, 320), (160, 224), "avg", 128, 1),
    ("5b", 1024, 352, (192, 320), (192, 224), "max", 128, 1),
)


class BNInception(nn.Module):
    """The network; ``features(x)`` gives the ``1024 x 7 x 7`` map, ``forward`` the ImageNet logits
    (``num_classes=0`` leaves the classifier out)."""

    def __init__(self, num_classes: int = 1000, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self._bn_momentum = bn_momentum
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for name, channels, one, (reduce, three), (double_reduce, double), _pool, proj, stride in _MODULES:
            prefix = f"inception_{name}"
            if one:
                self._unit(f"{prefix}_1x1", channels, one, 1)
            self._unit(f"{prefix}_3x3_reduce", channels, reduce, 1)
            self._unit(f"{prefix}_3x3", reduce, three, 3, stride=stride)
            self._unit(f"{prefix}_double_3x3_reduce", channels, double_reduce, 1)
            self._unit(f"{prefix}_double_3x3_1", double_reduce, double, 3)
            self._unit(f"{prefix}_double_3x3_2", double, double, 3, stride=stride)
            if proj:
                self._unit(f"{prefix}_pool_proj", channels, proj, 1)
        self.last_linear = nn.Linear(FEATURE_DIM, num_classes) if num_classes else None

    def _unit(self, name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        """A convolution ``name`` (with bias, as in Caffe) and its BatchNorm ``name_bn``."""
        self.add_module(
            name, nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
        )
        self.add_module(f"{name}_bn", nn.BatchNorm2d(out_channels, eps=1e-5, momentum=self._bn_momentum))

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _inception(self, spec: tuple, x: torch.Tensor) -> torch.Tensor:
        name, _channels, one, _three, _double, pooling, proj, stride = spec
        prefix = f"inception_{name}"
        branches = [self._run(f"{prefix}_1x1", x)] if one else []
        branches.append(self._run(f"{prefix}_3x3", self._run(f"{prefix}_3x3_reduce", x)))
        double = self._run(f"{prefix}_double_3x3_reduce", x)
        double = self._run(f"{prefix}_double_3x3_2", self._run(f"{prefix}_double_3x3_1", double))
        branches.append(double)
        if pooling == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        elif stride == 1:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        branches.append(self._run(f"{prefix}_pool_proj", pooled) if proj else pooled)
        return torch.cat(branches, dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self._run("conv1_7x7_s2", images), 3, stride=2, ceil_mode=True)
        x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for spec in _MODULES:
            x = self._inception(spec, x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.last_linear is None:
            raise RuntimeError("this BNInception has no classifier (num_classes=0); use features()")
        return self.last_linear(self.features(images).mean(dim=(-2, -1)))


def load_weights(model: BNInception, path: str | Path) -> None:
    """Load a weights file in Cadene's naming into ``model``; every key must match (the classifier
    ``last_linear.*`` may be absent from the file, and is skipped when ``model`` has none).

    Raises ValueError naming the missing and unexpected keys, or the tensor whose shape differs.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    if model.last_linear is None:
        state = {k: v for k, v in state.items() if not k.startswith("last_linear.")}
    counters = {k for k in expected if k.endswith("num_batches_tracked")}  # absent from the Caffe port
    optional = counters | {k for k in expected if k.startswith("last_linear.")}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not fit BNInception (Cadene's pretrainedmodels naming): "
            f"{len(missing)} missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        target = expected[key].shape
        if tensor.shape != target and tensor.shape == (1, *target):
            state[key] = tensor.reshape(target)  # BatchNorm vectors stored as 1 x C
        elif tensor.shape != target:
            raise ValueError(
                f"weights file {path}: {key} has shape {tuple(tensor.shape)}, "
                f"BNInception needs {tuple(target)}"
            )
    model.load_state_dict(state, strict=False)


def download_weights(directory: str | Path | None = None, progress: bool = True) -> Path:
    """The ImageNet weights file, downloaded from Cadene's address into ``directory`` (default: torch.hub's
    checkpoint folder) unless already there; its sha256 is checked against the prefix in its name."""
    folder = (
        Path(directory).expanduser() if directory is not None else Path(torch.hub.get_dir()) / "checkpoints"
    )
    path = folder / FILENAME
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(URL, str(path), hash_prefix=SHA256_PREFIX, progress=progress)
    except Exception as error:  # URLError, HTTPError, timeouts, a hash mismatch: all mean "no weights"
        raise download_failed("bninception", error) from error
    return path


class _Features(nn.Module):
    def __init__(self, model: BNInception) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


@BACKBONES.register("bninception")
def bninception(pretrained: bool = True, weights: str | None = None, bn_momentum: float = 0.1) -> Backbone:
    """1024-channel feature map (7 x 7 at 224 pixels); inputs BGR in 0..255 (see :data:`INPUT_SPEC`)."""
    if pretrained and weights:
        raise ValueError(
            "bninception: give pretrained=True (download) or weights=PATH (local file), not both"
        )
    model = BNInception(num_classes=0, bn_momentum=bn_momentum)
    if pretrained or weights:
        load_weights(model, weights if weights else download_weights())
    return Backbone(_Features(model), FEATURE_DIM, INPUT_SPEC)
