"""torchvision ImageNet backbones: ResNet-50, GoogLeNet (Inception v1), DenseNet-169, VGG-16, VGG-19.

Each returns its last convolutional feature map (``spatial=True``) for the embedding head to pool; the
classifier is removed. ``pretrained=True`` downloads torchvision's ImageNet weights (the cache in
``$TORCH_HOME`` is used when present); ``weights=PATH`` loads a local file in torchvision's naming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepmetric.models.backbones import BACKBONES, Backbone, InputSpec
from deepmetric.models.weights import download_failed, load_weights


def _create(
    name: str, factory: Callable[..., nn.Module], pretrained: bool, weights: str | None, **kwargs
) -> nn.Module:
    """The full torchvision network with its pretrained or local weights (or random ones)."""
    if pretrained and weights:
        raise ValueError(f"{name}: give pretrained=True (download) or weights=PATH (local file), not both")
    state = None
    if pretrained:  # fetch first: offline, fail before building a large network
        from torchvision.models import get_model_weights

        try:
            state = get_model_weights(name).DEFAULT.get_state_dict(progress=True)
        except Exception as error:  # URLError, HTTPError, timeouts, a corrupt cache: all mean "no weights"
            raise download_failed(name, error) from error
    model = factory(weights=None, **kwargs)
    if weights:
        load_weights(model, weights, optional_prefixes=("fc.", "classifier.", "aux1.", "aux2."))
    elif state is not None:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))})
    return model


@BACKBONES.register("resnet50")
def resnet50(pretrained: bool = True, weights: str | None = None) -> Backbone:
    from torchvision.models import resnet50 as factory

    model = _create("resnet50", factory, pretrained, weights)
    body = nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    return Backbone(body, 2048, InputSpec())


class _GoogLeNetFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        names = [
            n for n, _ in model.named_children() if n not in ("aux1", "aux2", "avgpool", "dropout", "fc")
        ]
        self.layers = nn.Sequential(*(getattr(model, n) for n in names))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


@BACKBONES.register("googlenet")
def googlenet(pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Inception v1. Its ImageNet weights (ported from TensorFlow) expect inputs in [-1, 1]: the input
    spec normalises with mean = std = 0.5 directly, instead of torchvision's ``transform_input``."""
    from torchvision.models import googlenet as factory

    model = _create("googlenet", factory, pretrained, weights, aux_logits=False, init_weights=True)
    spec = InputSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(_GoogLeNetFeatures(model), 1024, spec)


@BACKBONES.register("densenet169")
def densenet169(pretrained: bool = True, weights: str | None = None) -> Backbone:
    from torchvision.models import densenet169 as factory

    model = _create("densenet169", factory, pretrained, weights)
    # torchvision applies the final ReLU in forward(), outside ``features``
    return Backbone(nn.Sequential(model.features, nn.ReLU()), 1664, InputSpec())


def _vgg(name: str, pretrained: bool, weights: str | None) -> Backbone:
    from torchvision import models

    model = _create(name, getattr(models, name), pretrained, weights)
    return Backbone(model.features, 512, InputSpec())


@BACKBONES.register("vgg16")
def vgg16(pretrained: bool = True, weights: str | None = None) -> Backbone:
    return _vgg("vgg16", pretrained, weights)


@BACKBONES.register("vgg19")
def vgg19(pretrained: bool = True, weights: str | None = None) -> Backbone:
    return _vgg("vgg19", pretrained, weights)
