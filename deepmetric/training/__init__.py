"""Config-driven training: configs, the trainer, checkpoints, embedding with a trained model."""

from deepmetric.training.callbacks import CALLBACKS, Callback
from deepmetric.training.config import ConfigError, ExperimentConfig, load_config, save_config
from deepmetric.training.embed import embed_dataset, load_model
from deepmetric.training.run_folder import RunFolder
from deepmetric.training.trainer import Trainer, resume, train

__all__ = [
    "CALLBACKS",
    "Callback",
    "ConfigError",
    "ExperimentConfig",
    "RunFolder",
    "Trainer",
    "embed_dataset",
    "load_config",
    "load_model",
    "resume",
    "save_config",
    "train",
]
