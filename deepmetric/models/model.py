"""Backbone + head = the embedding model trained and saved by deepmetric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.models.backbones import CUT_POINTS, Backbone
from deepmetric.models.head import EmbeddingHead


class EmbeddingModel(nn.Module):
    """``images -> embeddings``; ``embed_features`` runs the model from cached inputs: from pooled
    features (the head alone), or with ``trainable`` a cut point, from the frozen trunk's feature maps.

    ``flip_average``: in evaluation mode, the embedding is the mean of the image's and its mirror's
    (re-normalised when the head normalises); cached inputs of ``V x C x H x W`` views are averaged alike.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: EmbeddingHead,
        freeze_batchnorm: bool = False,
        trainable: str = "all",
        flip_average: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_batchnorm = freeze_batchnorm
        self.trainable = trainable
        self.flip_average = flip_average
        if trainable in CUT_POINTS:
            backbone.split(trainable)  # refuses a cut point the backbone does not have

    @property
    def input_spec(self):
        return self.backbone.input_spec

    @property
    def embedding_size(self) -> int:
        return self.head.embedding_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.flip_average and not self.training:
            return self._average(
                [self.head(self.backbone(images)), self.head(self.backbone(images.flip(-1)))]
            )
        return self.head(self.backbone(images))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 5:  # N x V x C x H x W: cached views of each image, embeddings averaged
            return self._average([self.embed_features(features[:, v]) for v in range(features.shape[1])])
        if self.trainable in CUT_POINTS:
            features = self.backbone.split(self.trainable)[1](features)
        return self.head(features)

    def _average(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        mean = torch.stack(embeddings).mean(dim=0)
        return F.normalize(mean, dim=-1) if getattr(self.head, "normalize", False) else mean

    def freeze_cached_part(self) -> None:
        """Inputs are cached: the backbone is frozen, except the stages after the cut point."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        if self.trainable in CUT_POINTS:
            for parameter in self.backbone.split(self.trainable)[1].parameters():
                parameter.requires_grad_(True)

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if mode and self.freeze_batchnorm:
            # keep ImageNet statistics: small P x K batches give poor BatchNorm estimates
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
