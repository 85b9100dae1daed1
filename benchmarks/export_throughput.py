"""Embedding throughput on CPU: PyTorch eager vs the ONNX export in ONNX Runtime (EfficientNet-Lite0).

The model is EfficientNet-Lite0 (ImageNet weights) + a 128-d head at 224 x 224; both runtimes get the
same preprocessed float batches (normalisation inside the network, as exported), ``--threads`` threads
each, and are timed over ``--batches`` batches of ``--batch-size`` after one warm-up batch. The largest
difference between the two runtimes' embeddings is printed too.

    python benchmarks/export_throughput.py [--batch-size 16] [--batches 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import deepmetric
from deepmetric.api import from_model
from deepmetric.export import export_model
from deepmetric.models import EmbeddingHead, EmbeddingModel, build_backbone


def images_per_second(run, batches: list[np.ndarray]) -> tuple[float, np.ndarray]:
    run(batches[0])  # warm up
    start = time.perf_counter()
    outputs = [run(batch) for batch in batches]
    return sum(len(b) for b in batches) / (time.perf_counter() - start), np.concatenate(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    model = from_model(EmbeddingModel(backbone, EmbeddingHead(backbone.feature_dim, embedding_size=128)))
    rng = np.random.default_rng(0)
    batches = [rng.random((args.batch_size, 3, 224, 224), dtype=np.float32) for _ in range(args.batches)]
    print(f"load before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    eager, eager_out = images_per_second(model.runner, batches)
    with tempfile.TemporaryDirectory() as tmp:
        exported = deepmetric.load(export_model(model, Path(tmp) / "lite0.onnx"), threads=args.threads)
        onnx, onnx_out = images_per_second(exported.runner, batches)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print("| runtime | threads | batch | images/s |")
    print("|---|---:|---:|---:|")
    print(f"| PyTorch eager | {args.threads} | {args.batch_size} | {eager:.1f} |")
    print(f"| ONNX Runtime | {args.threads} | {args.batch_size} | {onnx:.1f} |")
    print(f"max |difference| of the embeddings: {np.abs(eager_out - onnx_out).max():.2e}")


if __name__ == "__main__":
    main()
