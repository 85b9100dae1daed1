"""pytorch-metric-learning's losses and miners as deepmetric components, for side-by-side benchmarks.

:func:`register_pml` adds every PML loss as ``pml:<ClassName>`` to :data:`deepmetric.losses.LOSSES` and
every PML miner as ``pml:<ClassName>`` to :data:`deepmetric.miners.MINERS`, so a suite method can name
them in its ``pml`` overrides (``loss: {name: "pml:TripletMarginLoss", margin: 0.2}``) and be trained by
the same trainer on the same cached features, sampler, optimizer and budget. Their parameters are the
PML constructor's own (checked by the config like any component), plus ``distance``: ``euclidean``
(PML's ``LpDistance``, on normalised embeddings), ``squared_euclidean``, ``cosine`` or ``dot``; left out,
each class keeps PML's default. ``num_classes`` and ``embedding_size`` are filled in by the trainer.

PML is an optional dependency (``pip install pytorch-metric-learning``): :func:`pml_available` tells
whether it is installed, and nothing here imports it before :func:`register_pml` is called.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch

from deepmetric.losses import LOSSES
from deepmetric.miners import MINERS

PREFIX = "pml:"
DISTANCE_NAMES = ("euclidean", "squared_euclidean", "cosine", "dot")


def pml_available() -> bool:
    return importlib.util.find_spec("pytorch_metric_learning") is not None


def pml_distance(name: str) -> Any:
    from pytorch_metric_learning import distances

    if name == "euclidean":
        return distances.LpDistance(normalize_embeddings=True, p=2, power=1)
    if name == "squared_euclidean":
        return distances.LpDistance(normalize_embeddings=True, p=2, power=2)
    if name == "cosine":
        return distances.CosineSimilarity()
    if name == "dot":
        return distances.DotProductSimilarity()
    raise ValueError(f"PML distance must be one of {list(DISTANCE_NAMES)}, got {name!r}")


class PMLLoss(torch.nn.Module):
    """A PML loss behind deepmetric's call ``loss(embeddings, labels, indices)``."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: Any = None) -> torch.Tensor:
        return self.loss(embeddings, labels, tuple(indices) if indices is not None else None)


class PMLMiner(torch.nn.Module):
    """A PML miner behind deepmetric's call ``miner(embeddings, labels) -> indices``."""

    def __init__(self, miner: torch.nn.Module) -> None:
        super().__init__()
        self.miner = miner

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.miner(embeddings.detach(), labels)


def _factory(pml_class: type, wrapper: type) -> Any:
    """A constructor with the PML class's own keyword parameters plus ``distance``."""
    # PML writes float settings with integer defaults (pos_margin=0, alpha=2, beta=50): an unannotated
    # integer default accepts a number, so that the config check lets ``alpha: 2.0`` through
    own = [
        p.replace(
            kind=inspect.Parameter.KEYWORD_ONLY,
            annotation="int | float" if p.annotation is p.empty and type(p.default) is int else p.annotation,
        )
        for p in inspect.signature(pml_class).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    distance = inspect.Parameter("distance", inspect.Parameter.KEYWORD_ONLY, default=None)

    def build(**kwargs: Any) -> torch.nn.Module:
        name = kwargs.pop("distance", None)
        if name is not None:
            kwargs["distance"] = pml_distance(name)
        return wrapper(pml_class(**kwargs))

    build.__signature__ = inspect.Signature([*own, distance])
    build.__name__ = build.__qualname__ = f"PML{pml_class.__name__}"
    build.__doc__ = f"pytorch_metric_learning's {pml_class.__name__} (deepmetric adapter)."
    return build


def register_pml() -> list[str]:
    """Register PML's losses and miners (idempotent); returns the registered names.

    Raises ImportError when PML is not installed.
    """
    from pytorch_metric_learning import losses, miners

    registered = []
    for module, base, registry, wrapper in (
        (losses, losses.BaseMetricLossFunction, LOSSES, PMLLoss),
        (miners, miners.BaseMiner, MINERS, PMLMiner),
    ):
        for attribute in dir(module):
            cls = getattr(module, attribute)
            if not (inspect.isclass(cls) and issubclass(cls, base)) or cls.__name__.startswith("Base"):
                continue
            name = PREFIX + cls.__name__
            if name not in registry:
                registry.register(name)(_factory(cls, wrapper))
            registered.append(name)
    return registered
