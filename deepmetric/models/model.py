"""Backbone + head = the embedding model trained and saved by deepmetric."""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.models.backbones import Backbone
from deepmetric.models.head import EmbeddingHead


class EmbeddingModel(nn.Module):
    """``images -> embeddings``; ``embed_features`` runs the head alone (frozen-feature mode)."""

    def __init__(self, backbone: Backbone, head: EmbeddingHead, freeze_batchnorm: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_batchnorm = freeze_batchnorm

    @property
    def input_spec(self):
        return self.backbone.input_spec

    @property
    def embedding_size(self) -> int:
        return self.head.embedding_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if mode and self.freeze_batchnorm:
            # keep ImageNet statistics: small P x K batches give poor BatchNorm estimates
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
