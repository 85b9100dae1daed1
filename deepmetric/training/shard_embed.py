"""Embedding a dataset into memory-mappable shards, on one process or on several under torchrun.

    torchrun --nproc_per_node 2 -m deepmetric.cli embed-shards RUN --out SHARDS

Shard ``i`` holds the rows ``[i * S, (i + 1) * S)`` of the split (:mod:`deepmetric.retrieval.shards`);
rank ``r`` of ``W`` embeds the shards ``r, r + W, r + 2W, ...`` that are not complete yet, so the folder
equals a single-process one and a killed job resumes at its first unfinished shard. No rows travel
between ranks: each writes its own files, and the manifest is written once by rank 0 before the others
open it.

The manifest's ``source`` records the model's fingerprint (:func:`~deepmetric.models.features.model_fingerprint`)
and the class names, and ``paths.txt`` the image file of every row when the dataset has files, so
``deepmetric search`` can embed query images with the same model and name its hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.data import image_paths
from deepmetric.hashing.packing import pack_bits
from deepmetric.models import EmbeddingModel
from deepmetric.models.features import model_fingerprint
from deepmetric.retrieval.shards import Plan, ShardSet, ShardWriter, write_paths
from deepmetric.training import distributed
from deepmetric.training.embed import embed_dataset


def embed_to_shards(
    model: EmbeddingModel,
    dataset: torch.utils.data.Dataset,
    directory: str | Path,
    shard_size: int = 100_000,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    features: bool = False,
    num_workers: int = 0,
    source: dict[str, Any] | None = None,
    progress: bool = True,
) -> ShardSet:
    """Embed ``dataset`` into shards under ``directory`` (this rank's share of them) and open the result.

    ``dtype``: ``float32``, ``float16`` or ``bits`` (sign bits packed 8 per byte, for Hamming search).
    Ids are positions in ``dataset``; labels are ``dataset.labels``. Every rank must call this.
    """
    labels = np.asarray(dataset.labels, dtype=np.int64) if hasattr(dataset, "labels") else None
    source = dict(source or {})
    if hasattr(model, "input_spec"):
        source["fingerprint"] = model_fingerprint(model, model.input_spec)
    names = getattr(dataset, "class_names", None)
    if labels is not None and names is not None:
        source["class_names"] = [str(name) for name in names]
    plan = Plan(int(model.embedding_size), dtype, len(dataset), shard_size, labels is not None, source)
    directory = Path(directory)
    with distributed.main_first():  # rank 0 writes (or checks) the manifest, the others then check it
        writer = ShardWriter(directory, plan)
        paths = image_paths(dataset)
        if paths is not None and distributed.is_main():
            write_paths(directory, paths)
    mine = [s for s in writer.pending() if s % distributed.world_size() == distributed.rank()]
    show = progress and distributed.is_main()
    for shard in tqdm(mine, desc=f"embed {directory.name}", unit="shard", disable=not show):
        rows = plan.rows(shard)
        vectors = embed_dataset(
            model,
            torch.utils.data.Subset(dataset, rows),
            device,
            batch_size,
            features,
            num_workers,
            binarize=dtype == "bits",
        )
        if dtype == "bits":
            vectors = pack_bits(vectors)
        writer.write(shard, vectors, None if labels is None else labels[rows])
    distributed.barrier()
    return ShardSet(directory)
