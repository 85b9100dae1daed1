"""Randomised ensembles of embedding learners: DREML (Xuan, Souvenir & Pless, "Deep Randomized Ensembles for
Metric Learning", ECCV 2018).

``D`` learners each see the training classes grouped into ``L`` meta-classes by their own random partition
and are trained to classify meta-classes (the ``dreml`` loss); the ensemble's embedding is the
concatenation of the learners' embeddings. Two samples end up close only when most learners put their
classes in the same meta-class, which happens for similar classes, so the concatenation generalises to
unseen classes.

- :func:`meta_class_partitions`: the ``D x C`` class -> meta-class table, drawn from a seed.
- :class:`EnsembleModel`: an :class:`EmbeddingModel` whose ``backbone`` is either ``D`` independent
  backbones (:class:`EnsembleBackbone`, the paper's setting when the backbone is trained) or one shared
  backbone (frozen-feature mode: the features are the same for every learner, so ``D`` heads over them are
  exactly ``D`` independent learners), and whose ``head`` is :class:`EnsembleHead`.

All learners are fed the same batches (one pass over the data); they differ by their partitions and
initialisation. Their losses are summed, and their parameters are disjoint, so each learner gets exactly
the gradient it would get alone (global gradient clipping, ``train.grad_clip``, is the one coupling).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from deepmetric.models.backbones import Backbone
from deepmetric.models.head import EmbeddingHead
from deepmetric.models.model import EmbeddingModel

_REDRAWS = 100  # attempts to give a learner a grouping no earlier learner has


def _canonical(assignment: np.ndarray) -> tuple[int, ...]:
    """The grouping itself, independent of how meta-classes are numbered (numbered by first appearance)."""
    first_seen: dict[int, int] = {}
    return tuple(first_seen.setdefault(int(m), len(first_seen)) for m in assignment)


def meta_class_partitions(num_classes: int, size: int, meta_classes: int, seed: int) -> np.ndarray:
    """``size x num_classes`` int64 table: row ``d`` maps each class to its meta-class for learner ``d``.

    Each row deals a random permutation of the classes round-robin into ``min(meta_classes, num_classes)``
    meta-classes (sizes differ by at most one, every meta-class is used). A row that groups the classes
    exactly as an earlier row (up to renumbering) is redrawn while distinct groupings are likely to exist.
    """
    checks = (("num_classes", num_classes, 2), ("size", size, 1), ("meta_classes", meta_classes, 2))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    groups = min(meta_classes, num_classes)
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(size):
        for _attempt in range(_REDRAWS):
            row = np.empty(num_classes, dtype=np.int64)
            row[rng.permutation(num_classes)] = np.arange(num_classes) % groups
            if _canonical(row) not in seen:
                break
        seen.add(_canonical(row))
        rows.append(row)
    return np.stack(rows)


class EnsembleBackbone(nn.Module):
    """``D`` backbones fed the same images; ``forward`` returns the list of their features."""

    def __init__(self, members: list[Backbone]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one backbone")
        first = members[0]
        self.members = nn.ModuleList(members)
        self.feature_dim = first.feature_dim
        self.input_spec = first.input_spec
        self.spatial = first.spatial

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [member(images) for member in self.members]


class EnsembleHead(nn.Module):
    """``D`` embedding heads; the output concatenates their embeddings (``D x dim`` features).

    Given one feature tensor every head reads it (shared backbone); given a list (from
    :class:`EnsembleBackbone`), head ``d`` reads entry ``d``.
    """

    def __init__(self, heads: list[EmbeddingHead]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("an ensemble needs at least one head")
        self.heads = nn.ModuleList(heads)
        self.learner_size = heads[0].embedding_size
        if any(head.embedding_size != self.learner_size for head in heads):
            raise ValueError("every head of an ensemble must have the same embedding size")
        self.embedding_size = self.learner_size * len(heads)

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            return torch.cat([head(features) for head in self.heads], dim=-1)
        if len(features) != len(self.heads):
            raise ValueError(f"got features from {len(features)} backbones for {len(self.heads)} heads")
        return torch.cat([head(x) for head, x in zip(self.heads, features)], dim=-1)


class EnsembleModel(EmbeddingModel):
    """``images -> [e_1 | ... | e_D]``; the EmbeddingModel interface (``backbone``, ``head``,
    ``embed_features``, ``input_spec``, ``embedding_size``) is unchanged."""

    def __init__(
        self, backbone: Backbone | EnsembleBackbone, head: EnsembleHead, freeze_batchnorm: bool = False
    ) -> None:
        if isinstance(backbone, EnsembleBackbone) and len(backbone.members) != len(head.heads):
            raise ValueError(f"{len(backbone.members)} backbones but {len(head.heads)} heads")
        super().__init__(backbone, head, freeze_batchnorm=freeze_batchnorm)

    @property
    def size(self) -> int:
        return len(self.head.heads)

    @property
    def shared_backbone(self) -> bool:
        return not isinstance(self.backbone, EnsembleBackbone)

    def split(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The learners' embeddings from the ensemble's (``D`` tensors of ``N x dim``)."""
        return embeddings.split(self.head.learner_size, dim=-1)


def build_ensemble(
    make_backbone: Callable[[], Backbone],
    make_head: Callable[[int], EmbeddingHead],
    size: int,
    shared_backbone: bool,
    freeze_batchnorm: bool = False,
) -> EnsembleModel:
    """``size`` learners: heads built by ``make_head(feature_dim)`` over one shared backbone, or over
    ``size`` backbones built by ``make_backbone()`` (each with its own weights)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"an ensemble needs a positive integer size, got {size!r}")
    if shared_backbone:
        backbone: Backbone | EnsembleBackbone = make_backbone()
    else:
        backbone = EnsembleBackbone([make_backbone() for _ in range(size)])
    heads = EnsembleHead([make_head(backbone.feature_dim) for _ in range(size)])
    return EnsembleModel(backbone, heads, freeze_batchnorm=freeze_batchnorm)
