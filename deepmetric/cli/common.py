"""Helpers shared by the command modules: configs, run folders, arrays, printed comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def load_config(path: str | None, overrides: list[str]):
    from deepmetric.training.config import load_config as load

    return load(path, overrides)


def run_dir_of(config, out: str | None) -> Path:
    return Path(out) if out else Path(config.output_dir) / config.name


def load_array(path: str | None, what: str) -> np.ndarray | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise ValueError(f"{what} file {path} is not a .npy array (write it with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:
        raise OSError(f"cannot read {what} file {path}: {error}") from error


def comma_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def print_comparison(metrics: dict[str, Any], names: list[str] | tuple[str, ...]) -> None:
    untrained, trained = metrics["untrained"], metrics["trained"]
    print(f"\n{'metric':>12s}  {'untrained':>9s}  {'trained':>9s}  {'change':>8s}")
    for name in names:
        if name in trained:
            before, after = untrained[name], trained[name]
            print(f"{name:>12s}  {before:9.4f}  {after:9.4f}  {after - before:+8.4f}")


def print_metrics(results: dict[str, float], as_json: bool) -> None:
    """Metric values as JSON (``--json``) or one aligned line per metric."""
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for name, value in results.items():
            print(f"{name:>16s}  {value:.4f}")


def demo_config_path() -> Path:
    return Path(__file__).parent.parent / "configs" / "demo.yaml"


def add_config_args(parser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", help="experiment YAML file")
    parser.add_argument("overrides", nargs="*", help="config overrides such as loss.margin=0.2")
    parser.add_argument("--out", help="run folder (default: OUTPUT_DIR/NAME from the config)")
