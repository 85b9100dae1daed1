"""The matrix-product floor of the classification-head losses: how fast any implementation can be.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss_floor.py [--batch 1024 --dim 512 --classes 128]

ArcFace, CosFace, NormSoftmax, Proxy-NCA and SoftTriple score every embedding against every class weight
(SoftTriple: against ``centres`` per class): a forward product ``E W^T`` (B x D by D x M) and, backward,
the gradients ``G W`` and ``G^T E``. Any implementation, PML's and ours alike, computes these three float32
products; this script times them alone (best of ``--repeats``, into preallocated outputs) next to PML's and
our whole step (the medians of :mod:`losses`'s alternating timer), and prints ``ceiling`` = PML's step /
the three products: the largest speed-up over PML any implementation could reach on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from losses import ours, pml_counterpart, time_pair

CENTRES = {"soft_triple": 10}  # PML's SoftTripleLoss default centers_per_class; the others: one per class
HEADS = ("arcface", "cosface", "normalized_softmax", "proxy_nca", "soft_triple")


def products_ms(batch: int, dim: int, columns: int, repeats: int) -> float:
    """Best time of the forward product and the two gradient products, in milliseconds."""
    embeddings, weights = torch.randn(batch, dim), torch.randn(columns, dim)
    gradient = torch.randn(batch, columns)
    logits, grad_embeddings, grad_weights = (
        torch.empty(s) for s in ((batch, columns), (batch, dim), (columns, dim))
    )
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(embeddings, weights.T, out=logits)
        torch.mm(gradient, weights, out=grad_embeddings)
        torch.mm(gradient.T, embeddings, out=grad_weights)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    labels = torch.arange(args.classes).repeat_interleave(args.batch // args.classes)
    x = torch.nn.functional.normalize(torch.randn(len(labels), args.dim), dim=1).requires_grad_()
    print(f"B={len(labels)} D={args.dim} classes={args.classes} threads={torch.get_num_threads()}")
    header = f"{'loss':<20}{'M':>6}{'products ms':>13}{'PML ms':>9}{'ours ms':>9}{'speedup':>9}{'ceiling':>9}"
    print(header)
    print("-" * len(header))
    for name in HEADS:
        theirs = pml_counterpart(name, args.classes, args.dim)
        mine = ours(name, args.classes, args.dim)
        ours_ms, pml_ms = time_pair(mine, theirs, x, labels, reps=10, budget=5.0, min_seconds=1.0)
        columns = args.classes * CENTRES.get(name, 1)
        floor = products_ms(len(labels), args.dim, columns, args.repeats)
        print(
            f"{name:<20}{columns:>6}{floor:>13.2f}{pml_ms:>9.2f}{ours_ms:>9.2f}"
            f"{pml_ms / ours_ms:>8.2f}x{pml_ms / floor:>8.2f}x"
        )


if __name__ == "__main__":
    main()
