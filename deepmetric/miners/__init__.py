"""Pair and triplet miners. Build one by name with :func:`get` (``deepmetric.miners.get("semi_hard")``)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from deepmetric.miners.base import MINERS, Miner

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

globals().update({MINERS.lookup(name).__name__: MINERS.lookup(name) for name in MINERS.names()})


def get(name: str, **kwargs: Any) -> Miner:
    """Build the miner registered as ``name`` with ``kwargs``; unknown names and parameters are refused."""
    return MINERS.build(name, **kwargs)


def names() -> list[str]:
    return MINERS.names()
