"""The hashing head: features -> ``bits`` relaxed (tanh) or binary (straight-through sign) code units.

A drop-in replacement for :class:`deepmetric.models.head.EmbeddingHead` (``forward(features)``,
``embedding_size``), so ``EmbeddingModel(backbone, HashHead(backbone.feature_dim, 48))`` is a hashing
network (``model.head: hash`` in a config: :data:`deepmetric.models.head.HEADS`). Binary codes for search are
``sign(output)`` (:func:`deepmetric.hashing.packing.pack_bits`).

- ``tanh``: ``tanh(W x + b)``, the continuous relaxation of DPSH / DTSH / HashNet; losses push it to ±1.
- ``sign_ste``: ``sign(W x + b)`` in the forward pass (exact ±1 codes, ``sign(0) = +1``) and the gradient of
  ``hardtanh`` in the backward pass (straight-through estimator, Bengio et al. 2013): 1 where
  ``|W x + b| <= 1``, 0 outside, so saturated units stop being pushed.
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.models.head import HEADS, POOLINGS, GeM, pool

ACTIVATIONS = ("tanh", "sign_ste")
MIN_BITS, MAX_BITS = 8, 256


def sign_straight_through(x: torch.Tensor) -> torch.Tensor:
    """±1 forward, hardtanh gradient backward."""
    clipped = x.clamp(-1, 1)
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return clipped + (hard - clipped).detach()


class HashHead(nn.Module):
    """Pool a feature map (or take a vector), project linearly to ``bits`` units, squash to (-1, 1) or ±1."""

    def __init__(self, in_features: int, bits: int, activation: str = "tanh", pooling: str = "avg") -> None:
        super().__init__()
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown hashing activation {activation!r}; choose one of {list(ACTIVATIONS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.pooling = pooling
        self.gem = GeM() if pooling == "gem" else None
        self.linear = nn.Linear(in_features, bits)
        self.activation = activation
        self.bits = bits
        self.embedding_size = bits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(pool(features, self.pooling, self.gem))
        return torch.tanh(x) if self.activation == "tanh" else sign_straight_through(x)

    @torch.no_grad()
    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """Binary ±1 codes (float) of ``features``."""
        x = self.linear(pool(features, self.pooling, self.gem))
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, activation={self.activation!r}, pooling={self.pooling!r}"


@HEADS.register("hash")
def hash_head(
    in_features: int, embedding_size: int, activation: str = "tanh", pooling: str = "avg"
) -> HashHead:
    """The head of a hashing network: ``embedding_size``-bit codes."""
    return HashHead(in_features, embedding_size, activation, pooling)
