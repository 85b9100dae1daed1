"""A tiny run trained on a generated image folder, shared by the tests of the search tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepmetric.cli import demo_config_path, main

CLASSES, PER_CLASS = 8, 4
RUN_ARGS = [
    "model.backbone_options={in_channels: 1, image_size: 8, width: 8}",
    "model.embedding_size=16",
    "loss.name=contrastive",
    "sampler.classes_per_batch=4",
    "sampler.samples_per_class=4",
    "train.iterations=2",
    "train.log_every=1",
    "eval.metrics=[recall@1]",
    "data.name=folder",
    "data.augment=none",
]


def make_image_folder(root: Path, classes: int = CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """``root/class_c/img_i.png``: noisy 20 x 24 RGB images around one colour per class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        colour = rng.integers(0, 256, 3)
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i}.png")
    return root


def make_image_run(tmp_path: Path) -> tuple[Path, Path]:
    """(run folder, its image folder): 2 training iterations of a small CNN (grey input) on colour images."""
    folder = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", str(demo_config_path()), *RUN_ARGS, f"data.root={folder}", "--out", str(run)]) == 0
    return run, folder
