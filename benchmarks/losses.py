"""Loss speed: deepmetric vs pytorch-metric-learning (PML), forward + backward, side by side in one run.

    .venv/bin/python benchmarks/losses.py [--quick] [--losses triplet,contrastive] [--device cpu|cuda]

Every loss registered in ``deepmetric.losses`` is timed (names without a PML counterpart show ``-``) on
P x 8 batches of random unit-norm embeddings: B=256, D=128 (32 classes) and B=1024, D=512 (128 classes).
A step is ``loss(embeddings, labels).backward()`` from a leaf tensor (plus the proxies' gradients for
losses with parameters). Each cell is the median over repeated steps (at least 10, more for fast steps until ``--min-seconds``)
after a warm-up; a PML step slower
than ``--budget`` seconds is timed once. A PML loss whose known (positive x negative pairs) matrix would
exceed ``--memory-gb`` is skipped with the reason printed, and a PML step that fails to allocate memory
shows ``OOM``; the table goes on either way. Our and PML's steps alternate, so machine load hits both
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


def dreml_partitions(num_classes: int, learners: int = 4, meta_classes: int = 8) -> torch.Tensor:
    """A fixed random ``learners x num_classes`` meta-class table, as DREML's trainer would draw it."""
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.randperm(num_classes, generator=gen) % meta_classes for _ in range(learners)])


# Where PML computes less than our default formula, ours is set to compute the same.
MATCH_PML = {"soft_triple": {"tau": 0.0}}  # PML's SoftTripleLoss has no centre regulariser


def ours(name: str, num_classes: int, dim: int) -> torch.nn.Module:
    """Our loss with default settings (but :data:`MATCH_PML`), given num_classes / embedding_size (and
    DREML's partitions) when it takes them."""
    accepted = inspect.signature(losses.LOSSES.lookup(name)).parameters
    kwargs = {"num_classes": num_classes, "embedding_size": dim, "partitions": dreml_partitions(num_classes)}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return losses.get(name, **kwargs, **MATCH_PML.get(name, {}))


def pml_pair_matrix_bytes(name: str, labels: torch.Tensor) -> tuple[int, str]:
    """Bytes of the one float32 (positive pairs x negative pairs) matrix that some PML losses build, and why.

    PML's NT-Xent and lifted-structure losses compare every positive pair with every negative pair in one
    dense matrix (and keep several copies of it for the backward pass); at B=1024 that is ~30 GB each.
    Other losses are 0 here: their largest buffers are O(B^2) floats or a B^3 byte mask (~1 GB at B=1024).
    """
    if name not in ("ntxent", "lifted_structure"):
        return 0, ""
    batch = labels.shape[0]
    positives = int((labels[:, None] == labels[None, :]).sum()) - batch
    negatives = batch * batch - batch - positives
    return 4 * positives * negatives, f"builds a {positives} x {negatives} (positive x negative pairs) matrix"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA's "out of memory" or the CPU allocator's)."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


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
    min_seconds: float,
) -> tuple[float, float | str | None]:
    """Median milliseconds of ours and PML's step, alternating the two so machine load hits both alike.

    At least ``reps`` steps each, and more (up to 20 x ``reps``) until ``min_seconds`` have been spent: a
    step of a few milliseconds needs many samples on a loaded machine. PML's cell is None without a
    counterpart and ``"OOM"`` when its step fails to allocate memory.
    """
    ours_times, their_times = [step_seconds(ours, x, labels)], []  # first calls are warm-ups
    their_first: float | str | None = None
    if theirs is not None:
        try:
            their_first = step_seconds(theirs, x, labels)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            their_first = "OOM"
            x.grad = None
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
    keep_timing_theirs = isinstance(their_first, float) and their_first <= budget
    while len(ours_times) <= reps or (
        sum(ours_times) + sum(their_times) < min_seconds and len(ours_times) <= 20 * reps
    ):
        ours_times.append(step_seconds(ours, x, labels))
        if keep_timing_theirs:
            their_times.append(step_seconds(theirs, x, labels))
    ours_ms = statistics.median(ours_times[1:]) * 1000
    if not isinstance(their_first, float):
        return ours_ms, their_first
    return ours_ms, (statistics.median(their_times) if their_times else their_first) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 10")
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="repeat fast steps until this long is spent per cell"
    )
    parser.add_argument("--losses", default="", help="comma-separated loss names (default: all registered)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=5.0, help="time a PML step once if slower (seconds)")
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=8.0,
        help="skip a PML loss whose known pair enumeration would take more than this many GB",
    )
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
            note = ""
            needed, what = pml_pair_matrix_bytes(name, labels)
            if theirs is not None and needed > args.memory_gb * 1e9:
                note, theirs = f"{what}: {needed / 1e9:.0f} GB > --memory-gb {args.memory_gb:g}", None
            our_ms, pml_ms = time_pair(
                ours(name, classes, dim).to(device),
                theirs and theirs.to(device),
                x,
                labels,
                reps,
                args.budget,
                0.0 if args.quick else args.min_seconds,
            )
            if isinstance(pml_ms, float):
                pml_cell, ratio = f"{pml_ms:.2f}", f"{pml_ms / our_ms:.2f}x"
            else:
                pml_cell, ratio = pml_ms or "-", "-"
            line = f"{name:<20} {batch:>5} {dim:>4} {our_ms:>10.2f} {pml_cell:>10} {ratio:>8}"
            print(f"{line}  {'(PML skipped: ' + note + ')' if note else ''}".rstrip(), flush=True)


if __name__ == "__main__":
    main()
