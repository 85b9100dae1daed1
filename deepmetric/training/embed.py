"""Embedding datasets with a trained model, and loading a trained model back with one call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.models import EmbeddingModel
from deepmetric.retrieval.postprocess import database_augmentation
from deepmetric.training.config import EvalConfig, ExperimentConfig
from deepmetric.training.run_folder import RunFolder


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


def save_evaluation_embeddings(
    run: RunFolder | None,
    config: ExperimentConfig,
    datasets: dict[str, torch.utils.data.Dataset],
    embed: Callable[[torch.utils.data.Dataset], np.ndarray],
) -> dict[str, np.ndarray]:
    """Embed a run's evaluation splits (``test``, or ``query`` and ``gallery``) with ``embed`` and save them
    in ``run`` (None: embed only, as the other ranks of a distributed run do). The trainer and
    ``deepmetric embed`` both save through here, so the files always have the same names and contents."""
    saved = {}
    for name, dataset in datasets.items():
        split = config.data.test_split if name == "test" else name
        saved[split] = embeddings = embed(dataset).astype(np.float32)
        if run is not None:
            run.save_embeddings(split, embeddings, np.asarray(dataset.labels))
    return saved


def augment_database(config: EvalConfig, embeddings: np.ndarray) -> np.ndarray:
    """With ``eval.dba_k > 0``, database-side augmentation of the searched embeddings (the gallery, or
    the whole set in leave-one-out retrieval): each becomes the normalised ``similarity^eval.dba_alpha``
    weighted sum of itself and its ``dba_k`` nearest neighbours."""
    if config.dba_k == 0:
        return embeddings
    return database_augmentation(embeddings, config.dba_k, config.dba_alpha)


def load_model(
    run_dir: str | Path | RunFolder, checkpoint: str = "auto", device: str | torch.device = "cpu"
) -> EmbeddingModel:
    """The model trained in ``run_dir``, ready to embed images (``model.input_spec`` gives its transform).

    ``checkpoint``: ``best``, ``last``, or ``auto`` (the one whose metrics ``metrics.json`` reports).
    Pretrained weights are not downloaded again: the checkpoint holds every weight.
    """
    from deepmetric.training.components import build_model

    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    config = run.load_config()
    if checkpoint == "auto":
        checkpoint = run.selected_checkpoint()
    state = run.load_checkpoint(checkpoint, map_location=device)
    config.model.pretrained, config.model.weights = False, None
    model = build_model(config)
    path = run.checkpoint_file(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a deepmetric checkpoint (no model weights in it)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # missing/unexpected keys, shape mismatches
        reason = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(
            f"{path} does not fit the model of {run.config_file} (another config's checkpoint?): {reason}"
        ) from error
    return model.to(device).eval()


def selected_checkpoint(run_dir: str | Path | RunFolder) -> str:
    """``best`` when the run selected on validation classes, else ``last`` (see metrics.json)."""
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    return run.selected_checkpoint()
