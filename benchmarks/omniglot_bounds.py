"""What bounds an Omniglot suite's result: fit on the training characters against the unseen ones, and the
cost of a wider network.

1. every finished run ``BENCH/<method>/seed<k>`` embeds the *training* characters (evaluation transform)
   and is scored leave-one-out, beside its test-class metrics from ``metrics.json``;
2. one training step (P x K = 32 x 4, multi-similarity loss and miner, Adam) of ``small_cnn`` width 32 and
   width 64, in interleaved blocks on one thread: the median seconds per step of each.

    OMP_NUM_THREADS=1 python benchmarks/omniglot_bounds.py --bench bench/omniglot_budget \
        --data ../shared/data/omniglot_background.npz [--method multi_similarity] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepmetric import losses, miners
from deepmetric.data import get_dataset
from deepmetric.data.transforms import build_transform
from deepmetric.evaluation import evaluate
from deepmetric.training.components import build_model
from deepmetric.training.config import from_dict
from deepmetric.training.embed import embed_dataset, load_model
from deepmetric.training.run_folder import RunFolder

METRICS = ["recall@1", "map@r"]


def fit(bench: Path, method: str, data: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per finished seed: metrics on the training classes and on the test classes."""
    found = {}
    for run_dir in sorted((bench / method).glob("seed*")):
        run = RunFolder(run_dir)
        if not run.completed():
            continue
        model = load_model(run_dir)
        transform = build_transform(model.input_spec, train=False)
        train = get_dataset("npz", root=data, split="train", transform=transform)
        embeddings = embed_dataset(model, train, batch_size=256)
        on_train = evaluate(embeddings, np.asarray(train.labels), metrics=METRICS, distance="cosine")
        test = run.read_metrics()["trained"]
        found[run_dir.name] = {"train_classes": on_train, "test_classes": {m: test[m] for m in METRICS}}
        print(run_dir.name, found[run_dir.name], flush=True)
    return found


def step_seconds(widths: tuple[int, ...] = (32, 64), blocks: int = 4, steps: int = 12) -> dict[str, float]:
    """Median seconds of one training step per width (blocks of steps alternate between widths)."""
    models, optimizers = {}, {}
    for width in widths:
        config = from_dict(
            {
                "model": {
                    "backbone": "small_cnn",
                    "backbone_options": {"in_channels": 1, "image_size": 28, "width": width},
                    "embedding_size": 128,
                },
                "loss": {"name": "multi_similarity"},
            }
        )
        models[width] = build_model(config).train()
        optimizers[width] = torch.optim.Adam(models[width].parameters(), lr=1e-3)
    loss = losses.get("multi_similarity", alpha=2.0, beta=50.0, base=0.5)
    miner = miners.get("multi_similarity", epsilon=0.1)
    inputs = torch.rand(128, 1, 28, 28) * 2 - 1
    labels = torch.arange(32).repeat_interleave(4)
    times: dict[int, list[float]] = {width: [] for width in widths}
    for _ in range(blocks):
        for width in widths:
            for step in range(steps):
                started = time.perf_counter()
                embeddings = models[width](inputs)
                value = loss(embeddings, labels, miner(embeddings, labels))
                optimizers[width].zero_grad()
                value.backward()
                optimizers[width].step()
                if step >= 2:  # the first steps of a block warm the caches
                    times[width].append(time.perf_counter() - started)
    return {str(width): float(np.median(t)) for width, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, type=Path, help="the suite's output folder")
    parser.add_argument("--data", required=True, help="omniglot_background.npz")
    parser.add_argument("--method", default="multi_similarity")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"fit": fit(args.bench, args.method, args.data), "step_seconds": step_seconds()}
    print("seconds per step:", result["step_seconds"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
