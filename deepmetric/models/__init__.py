"""Backbones, the embedding head and the embedding model."""

from __future__ import annotations

import importlib
import pkgutil

from deepmetric.models.backbones import BACKBONES, Backbone, InputSpec, build_backbone
from deepmetric.models.head import HEADS, POOLINGS, EmbeddingHead
from deepmetric.models.model import EmbeddingModel

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BACKBONES",
    "HEADS",
    "POOLINGS",
    "Backbone",
    "EmbeddingHead",
    "EmbeddingModel",
    "InputSpec",
    "build_backbone",
]
