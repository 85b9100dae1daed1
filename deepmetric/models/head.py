"""The embedding head: pooling, a linear map to the embedding size, optional BatchNorm and L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.registry import Registry

# Heads by name (``model.head`` in a config): constructors taking ``in_features`` first, then keywords.
HEADS = Registry("head")
POOLINGS = ("avg", "max", "gem", "avg+max")
HEAD_INITS = ("random", "identity")  # how the head's linear map starts


class GeM(nn.Module):
    """Generalised mean pooling (Radenović et al. 2018): ``(mean x^p)^(1/p)`` with a learnable ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


def pool(x: torch.Tensor, pooling: str, gem: GeM | None = None) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if pooling == "avg":
        return x.mean(dim=(-2, -1))
    if pooling == "max":
        return x.amax(dim=(-2, -1))
    if pooling == "avg+max":
        return x.mean(dim=(-2, -1)) + x.amax(dim=(-2, -1))
    if pooling == "gem":
        return gem(x)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")


@HEADS.register("embedding")
class EmbeddingHead(nn.Module):
    """Features (a map or a vector) -> embedding.

    ``embedding_size=0`` keeps the pooled features as the embedding (the "untrained" baseline of a
    pretrained backbone); ``normalize`` L2-normalises the output (the papers' "Normalized" column).
    ``init="identity"`` starts the linear map at the identity (``embedding_size`` must equal
    ``in_features``): training starts from the pretrained features instead of a random projection.
    """

    def __init__(
        self,
        in_features: int,
        embedding_size: int = 128,
        pooling: str = "avg",
        batchnorm: bool = False,
        normalize: bool = True,
        dropout: float = 0.0,
        init: str = "random",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
        if init not in HEAD_INITS:
            raise ValueError(f"unknown head init {init!r}; choose one of {list(HEAD_INITS)}")
        if init == "identity" and embedding_size != in_features:
            raise ValueError(
                f"an identity-initialised head needs embedding_size equal to the {in_features} "
                f"backbone features, got {embedding_size}"
            )
        self.pooling = pooling
        self.gem = GeM() if pooling == "gem" else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, embedding_size) if embedding_size > 0 else nn.Identity()
        if init == "identity":
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(in_features))
                self.linear.bias.zero_()
        out = embedding_size if embedding_size > 0 else in_features
        self.batchnorm = nn.BatchNorm1d(out) if batchnorm else nn.Identity()
        self.normalize = normalize
        self.embedding_size = out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pool(features, self.pooling, self.gem)
        x = self.batchnorm(self.linear(self.dropout(x)))
        return F.normalize(x, dim=-1) if self.normalize else x
