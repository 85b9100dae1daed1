"""Tiny variants of the demo config shared by the training tests: a few iterations of an 8-pixel CNN."""

from __future__ import annotations

from deepmetric.cli import demo_config_path
from deepmetric.training import load_config
from deepmetric.training.config import ExperimentConfig

# DREML, classification and pair/triplet runs: 5 x 4 batches, an 8-d embedding, 4 iterations.
TINY_RUN = [
    "model.backbone_options={in_channels: 1, image_size: 8, width: 8}",
    "model.embedding_size=8",
    "sampler.classes_per_batch=5",
    "sampler.samples_per_class=4",
    "train.iterations=4",
    "train.log_every=2",
    "eval.metrics=[recall@1, knn_accuracy@3]",
    "optimizer.lr=0.01",
]


def demo_config(*overrides: str) -> ExperimentConfig:
    """The demo's config with ``overrides`` applied in order."""
    return load_config(demo_config_path(), list(overrides))
