"""Miner speed: deepmetric vs pytorch-metric-learning (PML), side by side in one run.

    .venv/bin/python benchmarks/miners.py [--device cpu|cuda] [--threads 1] [--sizes 256x128 1024x512]

Batches are P x K with K = 4 samples per class and random unit-norm embeddings. Each cell is the best of
repeated calls after a warm-up, ours and PML's alternating. ``ours/PML`` below 1 means deepmetric is
faster. Rows marked ``*`` compare against PML's closest counterpart, which returns a different (larger) set:
``semi_hard`` vs ``TripletMarginMiner(semihard)`` (PML keeps every semi-hard triplet, we keep the hardest
one per positive pair), ``random_negative`` vs ``get_random_triplet_indices(t_per_anchor=1)`` (random
positives too), ``hardest_negative`` vs ``BatchEasyHardMiner(all, hard)`` (returns pairs, not triplets).
``all_pairs`` and ``all_triplets`` are timed against PML's bare index functions (no miner object, no
input checks), the way PML's losses enumerate pairs and triplets.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import deepmetric.miners as miners


def timed_pair(
    ours: Callable[[], object], theirs: Callable[[], object], device: torch.device, budget_s: float = 2.0
) -> tuple[float, float]:
    """Best-of-N seconds per call for both, alternating calls so both see the same machine load.

    One warm-up call each, then at least 3 and at most 15 rounds or ``budget_s`` seconds. The minimum is
    the least noisy estimate on a shared machine.
    """

    def once(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once(ours)
    once(theirs)
    ours_times: list[float] = []
    theirs_times: list[float] = []
    while len(ours_times) < 3 or (sum(ours_times) + sum(theirs_times) < budget_s and len(ours_times) < 15):
        ours_times.append(once(ours))
        theirs_times.append(once(theirs))
    return min(ours_times), min(theirs_times)


def cases(embeddings: torch.Tensor, labels: torch.Tensor):
    """(name, ours, theirs) callables on one batch."""
    from pytorch_metric_learning import distances
    from pytorch_metric_learning import miners as pml
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    euclidean = distances.LpDistance(normalize_embeddings=False)

    def pair(name: str, ours, theirs):
        return name, lambda: ours(embeddings, labels), lambda: theirs(embeddings, labels)

    return [
        (
            "all_pairs",
            lambda: miners.get("all_pairs")(embeddings, labels),
            lambda: lmu.get_all_pairs_indices(labels),
        ),
        (
            "all_triplets",
            lambda: miners.get("all_triplets")(embeddings, labels),
            lambda: lmu.get_all_triplets_indices(labels),
        ),
        pair(
            "hardest_negative*",
            miners.get("hardest_negative"),
            pml.BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard", distance=euclidean),
        ),
        (
            "random_negative*",
            lambda: miners.get("random_negative")(embeddings, labels),
            lambda: lmu.get_random_triplet_indices(labels, t_per_anchor=1),
        ),
        pair(
            "semi_hard*",
            miners.get("semi_hard", margin=0.2),
            pml.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=euclidean),
        ),
        pair("batch_hard", miners.get("batch_hard"), pml.BatchHardMiner(distance=euclidean)),
        pair("distance_weighted", miners.get("distance_weighted"), pml.DistanceWeightedMiner()),
        pair("multi_similarity", miners.get("multi_similarity"), pml.MultiSimilarityMiner()),
        pair(
            "pair_margin",
            miners.get("pair_margin", pos_margin=0.8, neg_margin=1.2),
            pml.PairMarginMiner(pos_margin=0.8, neg_margin=1.2, distance=euclidean),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sizes", nargs="+", default=["256x128", "1024x512"], help="BATCHxDIM")
    parser.add_argument("--samples-per-class", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'miner':<20} {'B':>5} {'D':>4} {'ours ms':>10} {'PML ms':>10} {'ours/PML':>9}")
    for size in args.sizes:
        batch, dim = (int(v) for v in size.split("x"))
        embeddings = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1).to(device)
        labels = (torch.arange(batch) // args.samples_per_class).to(device)
        for name, ours, theirs in cases(embeddings, labels):
            ours_s, theirs_s = timed_pair(ours, theirs, device)
            print(
                f"{name:<20} {batch:>5} {dim:>4} {ours_s * 1e3:>10.2f} {theirs_s * 1e3:>10.2f} "
                f"{ours_s / theirs_s:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
