"""Embedding datasets with a trained model, and loading a trained model back with one call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.models import EmbeddingModel
from deepmetric.retrieval.postprocess import database_augmentation
from deepmetric.training.config import EvalConfig


@torch.no_grad()
def embed_dataset(
    model: EmbeddingModel,
    dataset: torch.utils.data.Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    features: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    binarize: bool = False,
) -> np.ndarray:
    """``len(dataset) x embedding_size`` float32 embeddings, in dataset order.

    ``features=True`` means the dataset yields cached backbone features and only the head runs;
    ``binarize=True`` returns ±1 codes (sign, with 0 -> +1), as stored by a hashing index.
    """
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    chunks = []
    for inputs, _labels in tqdm(loader, desc="embed", disable=not progress, leave=False):
        inputs = inputs.to(device, non_blocking=True)
        output = model.embed_features(inputs) if features else model(inputs)
        output = output.float()
        if binarize:
            output = torch.where(output >= 0, 1.0, -1.0)
        chunks.append(output.cpu())
    model.train(was_training)
    if not chunks:
        raise ValueError("cannot embed an empty dataset")
    return torch.cat(chunks).numpy()


def augment_database(config: EvalConfig, embeddings: np.ndarray) -> np.ndarray:
    """With ``eval.dba_k > 0``, database-side augmentation of the searched embeddings (the gallery, or
    the whole set in leave-one-out retrieval): each becomes the normalised ``similarity^eval.dba_alpha``
    weighted sum of itself and its ``dba_k`` nearest neighbours."""
    if config.dba_k == 0:
        return embeddings
    return database_augmentation(embeddings, config.dba_k, config.dba_alpha)


def load_model(
    run_dir: str | Path, checkpoint: str = "auto", device: str | torch.device = "cpu"
) -> EmbeddingModel:
    """The model trained in ``run_dir``, ready to embed images (``model.input_spec`` gives its transform).

    ``checkpoint``: ``best``, ``last``, or ``auto`` (the one whose metrics ``metrics.json`` reports).
    Pretrained weights are not downloaded again: the checkpoint holds every weight.
    """
    from deepmetric.training.checkpoint import load_checkpoint
    from deepmetric.training.components import build_model
    from deepmetric.training.config import load_config

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    if checkpoint == "auto":
        checkpoint = selected_checkpoint(run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt", map_location=device)
    config.model.pretrained, config.model.weights = False, None
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def selected_checkpoint(run_dir: Path) -> str:
    """``best`` when the run selected on validation classes, else ``last`` (see metrics.json)."""
    import json

    metrics = run_dir / "metrics.json"
    if metrics.exists():
        return json.loads(metrics.read_text()).get("trained_checkpoint", "last")
    return "last"
