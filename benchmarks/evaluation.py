"""Evaluation speed and memory: deepmetric.evaluation vs PML's AccuracyCalculator, side by side.

Each measurement runs in its own subprocess, so its peak RSS (``resource.getrusage``'s ``ru_maxrss``: the
whole process, imports and the embeddings included) belongs to that side alone. Embeddings are clustered
random vectors (L2-normalised, so PML's L2 ranking equals our cosine ranking), 50 per class, D = 128.

Tasks: ``knn`` = precision@1 + r_precision + map@r (PML: ``k="max_bin_count"``, its fastest exact
setting), ``nmi`` = k-means NMI (PML: faiss k-means, 20 iterations; ours: torch k-means++ / Lloyd).
The 1M row is ours only: a 1,000,000 x 128 gallery, ``--large-queries`` of its items as leave-one-out
queries (ids exclude the query itself), because 10^12 distances are out of reach of a shared 2-core CPU.

    .venv/bin/python benchmarks/evaluation.py [--sizes 10000 50000] [--large 1000000] [--large-queries 2000]
        [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 128
PER_CLASS = 50


def clustered_embeddings(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = max(2, n // PER_CLASS)
    centres = rng.normal(size=(classes, DIM)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + 1.5 * rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def run_worker(side: str, task: str, n: int, queries: int | None) -> dict:
    # both libraries are imported on both sides, so imports weigh the same in each side's peak RSS
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from deepmetric.evaluation import evaluate

    torch.manual_seed(0)
    x, labels = clustered_embeddings(n)
    start = time.perf_counter()
    if side == "ours":
        if task == "knn":
            metrics = ("precision@1", "r_precision", "map@r")
            if queries:
                ids = np.arange(n)
                values = evaluate(
                    x[:queries],
                    labels[:queries],
                    x,
                    labels,
                    metrics,
                    device="cpu",
                    query_ids=ids[:queries],
                    gallery_ids=ids,
                )
            else:
                values = evaluate(x, labels, metrics=metrics, device="cpu")
        else:
            values = evaluate(x, labels, metrics=("nmi",), device="cpu")
    else:
        if task == "knn":
            calculator = AccuracyCalculator(
                include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                k="max_bin_count",
                device=torch.device("cpu"),
            )
            raw = calculator.get_accuracy(x, labels)
            values = {
                "precision@1": raw["precision_at_1"],
                "r_precision": raw["r_precision"],
                "map@r": raw["mean_average_precision_at_r"],
            }
        else:
            raw = AccuracyCalculator(include=("NMI",), device=torch.device("cpu")).get_accuracy(x, labels)
            values = {"nmi": raw["NMI"]}
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "values": values}


def measure(side: str, task: str, n: int, queries: int | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", side, task, str(n), str(queries or 0)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def format_values(values: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())


def interleaved_best(task: str, n: int, repeats: int) -> tuple[dict, dict]:
    """Ours and PML alternately, ``repeats`` times each; the fastest run of each side (the least disturbed
    by other processes on a shared machine) with its peak RSS."""
    runs = {"ours": [], "pml": []}
    for _ in range(repeats):
        for side in runs:
            runs[side].append(measure(side, task, n))
    return tuple(min(runs[side], key=lambda run: run["seconds"]) for side in ("ours", "pml"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument(
        "--large", type=int, default=1_000_000, help="gallery size of the ours-only row (0: skip)"
    )
    parser.add_argument("--large-queries", type=int, default=2_000)
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternating runs per side; the fastest of each is shown"
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, task, n, queries = args.worker
        print(json.dumps(run_worker(side, task, int(n), int(queries) or None)))
        return

    columns = ("ours s", "PML s", "speedup", "ours MB", "PML MB", "max|diff|")
    header = f"{'task':<26}{'N':>9}" + "".join(f"{c:>10}" for c in columns) + "  values (ours | PML)"
    print(header)
    print("-" * len(header))
    for task, label in (("knn", "P@1 + R-Prec + MAP@R"), ("nmi", "NMI (k-means)")):
        for n in args.sizes:
            ours, pml = interleaved_best(task, n, args.repeats)
            difference = max(abs(ours["values"][name] - pml["values"][name]) for name in ours["values"])
            print(
                f"{label:<26}{n:>9}{ours['seconds']:>10.2f}{pml['seconds']:>10.2f}"
                f"{pml['seconds'] / ours['seconds']:>9.1f}x{ours['peak_mb']:>10.0f}{pml['peak_mb']:>10.0f}"
                f"{difference:>10.1e}  {format_values(ours['values'])} | {format_values(pml['values'])}",
                flush=True,
            )
    if args.large:
        ours = measure("ours", "knn", args.large, args.large_queries)
        name = f"P@1+RP+MAP@R {args.large_queries}q"
        print(
            f"{name:<26}{args.large:>9}{ours['seconds']:>10.2f}{'-':>10}{'-':>10}{ours['peak_mb']:>10.0f}"
            f"{'-':>10}{'-':>10}  {format_values(ours['values'])}"
        )


if __name__ == "__main__":
    main()
