"""Metric-learning losses. Build one by name with :func:`get` (``deepmetric.losses.get("triplet", margin=0.2)``).

Every loss module registers itself in :data:`LOSSES`; importing this package imports them all, and every
registered class is importable from here (``from deepmetric.losses import TripletLoss``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from deepmetric.losses.base import LOSSES, MetricLoss

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

globals().update({LOSSES.lookup(name).__name__: LOSSES.lookup(name) for name in LOSSES.names()})


def get(name: str, **kwargs: Any) -> MetricLoss:
    """Build the loss registered as ``name`` with ``kwargs``; unknown names and parameters are refused."""
    return LOSSES.build(name, **kwargs)


def names() -> list[str]:
    return LOSSES.names()
