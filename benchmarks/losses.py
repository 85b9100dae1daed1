"""Loss speed: deepmetric vs pytorch-metric-learning (PML), forward + backward, side by side in one run.

    .venv/bin/python benchmarks/losses.py [--quick] [--losses triplet,contrastive] [--device cpu|cuda]

Every loss registered in ``deepmetric.losses`` is timed (names without a PML counterpart show ``-``) on
P x 8 batches of random unit-norm embeddings: B=256, D=128 (32 classes) and B=1024, D=512 (128 classes).
A step is ``loss(embeddings, labels).backward()`` from a leaf tensor (plus the proxies' gradients for
losses with parameters). Each cell is the median over repeated steps after a warm-up; a PML step slower
than ``--budget`` seconds is timed once. Our and PML's steps alternate, so machine load hits both
alike. ``speedup`` = PML time / our time (above 1: deepmetric is faster).

Both sides use the same settings: our defaults, and PML's class with the matching margins and distance
(PML normalises embeddings by default; inputs here are unit-norm already). Without a miner, PML's
triplet and margin losses enumerate every triplet (a B^3 index tensor) while ours stream them in anchor
chunks (triplet) or use all pairs (margin, as in the paper) — each library's batch-all path.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable

import torch

import deepmetric.losses as losses

SIZES = ((256, 128, 32), (1024, 512, 128))  # (batch, dimension, classes), 8 samples per class


def pml_counterpart(name: str, num_classes: int, dim: int) -> torch.nn.Module | None:
    """PML's loss with the settings of our default, or None when PML has no such loss."""
    try:
        from pytorch_metric_learning import distances
        from pytorch_metric_learning import losses as pml
    except ImportError:
        return None
    euclidean = distances.LpDistance(normalize_embeddings=False)
    dot = distances.DotProductSimilarity(normalize_embeddings=False)
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "contrastive": lambda: pml.ContrastiveLoss(pos_margin=0, neg_margin=1, distance=euclidean),
        "triplet": lambda: pml.TripletMarginLoss(margin=0.2, distance=euclidean),
        "lifted_structure": lambda: pml.LiftedStructureLoss(neg_margin=1, pos_margin=0, distance=euclidean),
        "npair": lambda: pml.NPairsLoss(distance=dot),
        "angular": lambda: pml.AngularLoss(alpha=40),
        "margin": lambda: pml.MarginLoss(margin=0.2, beta=1.2, learn_beta=True, distance=euclidean),
        "multi_similarity": lambda: pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
        "circle": lambda: pml.CircleLoss(m=0.25, gamma=256),
        "ranked_list": lambda: pml.RankedListLoss(margin=0.4, Tn=10, alpha=1.2),
        "proxy_nca": lambda: pml.ProxyNCALoss(num_classes, dim),
        "proxy_anchor": lambda: pml.ProxyAnchorLoss(num_classes, dim),
        "normalized_softmax": lambda: pml.NormalizedSoftmaxLoss(num_classes, dim),
        "arcface": lambda: pml.ArcFaceLoss(num_classes, dim),
        "cosface": lambda: pml.CosFaceLoss(num_classes, dim),
        "soft_triple": lambda: pml.SoftTripleLoss(num_classes, dim),
        "nca": lambda: pml.NCALoss(),
        "supcon": lambda: pml.SupConLoss(),
        "ntxent": lambda: pml.NTXentLoss(),
    }
    return builders[name]() if name in builders else None


def ours(name: str, num_classes: int, dim: int) -> torch.nn.Module:
    """Our loss with default settings, given num_classes / embedding_size when it takes them."""
    accepted = inspect.signature(losses.LOSSES.lookup(name)).parameters
    kwargs = {"num_classes": num_classes, "embedding_size": dim}
    return losses.get(name, **{k: v for k, v in kwargs.items() if k in accepted})


# PML runs that cannot fit in memory: (name, batch) -> why.
PML_INFEASIBLE = {
    (
        "lifted_structure",
        1024,
    ): "PML builds a (positive pairs x negative pairs) matrix: 7168 x 1040384 floats",
}


def step_seconds(loss: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one forward + backward."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    x.grad = None
    loss.zero_grad(set_to_none=True)
    loss(x, labels).backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_pair(
    ours: torch.nn.Module,
    theirs: torch.nn.Module | None,
    x: torch.Tensor,
    labels: torch.Tensor,
    reps: int,
    budget: float,
) -> tuple[float, float | None]:
    """Median milliseconds of ours and PML's step, alternating the two so machine load hits both alike."""
    ours_times, their_times = [step_seconds(ours, x, labels)], []  # first calls are warm-ups
    their_first = step_seconds(theirs, x, labels) if theirs is not None else None
    for _ in range(reps):
        ours_times.append(step_seconds(ours, x, labels))
        if theirs is not None and their_first <= budget:
            their_times.append(step_seconds(theirs, x, labels))
    ours_ms = statistics.median(ours_times[1:]) * 1000
    if theirs is None:
        return ours_ms, None
    return ours_ms, (statistics.median(their_times) if their_times else their_first) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 10")
    parser.add_argument("--losses", default="", help="comma-separated loss names (default: all registered)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=5.0, help="time a PML step once if slower (seconds)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    names = losses.names()
    if args.losses:
        wanted = [n.strip() for n in args.losses.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown or not yet registered losses {unknown}; registered: {names}")
        names = wanted
    reps = 3 if args.quick else 10
    device = torch.device(args.device)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device={device} threads={threads} torch={torch.__version__} reps={reps}")
    header = f"{'loss':<20} {'B':>5} {'D':>4} {'ours ms':>10} {'PML ms':>10} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for batch, dim, classes in SIZES:
        gen = torch.Generator().manual_seed(0)
        base = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1).to(device)
        labels = torch.arange(classes).repeat_interleave(batch // classes).to(device)
        for name in names:
            x = base.clone().requires_grad_()
            theirs = pml_counterpart(name, classes, dim)
            note = PML_INFEASIBLE.get((name, batch), "") if theirs is not None else ""
            if note:
                theirs = None
            our_ms, pml_ms = time_pair(
                ours(name, classes, dim).to(device),
                theirs and theirs.to(device),
                x,
                labels,
                reps,
                args.budget,
            )
            pml_cell, ratio = ("-", "-") if pml_ms is None else (f"{pml_ms:.2f}", f"{pml_ms / our_ms:.2f}x")
            line = f"{name:<20} {batch:>5} {dim:>4} {our_ms:>10.2f} {pml_cell:>10} {ratio:>8}"
            print(f"{line}  {'(PML skipped: ' + note + ')' if note else ''}".rstrip(), flush=True)


if __name__ == "__main__":
    main()
