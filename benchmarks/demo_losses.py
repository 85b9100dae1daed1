"""Train the demo (digits 0-4 -> retrieve unseen digits 5-9) with every registered loss.

Prints, per loss, Recall@1 and NMI of the untrained embedding and of the trained one, so one can see that
each loss improves on the untrained network under the same budget. Settings are the demo's
(``deepmetric/configs/demo.yaml``) with the loss swapped; losses whose classifier needs raw embeddings
(``softmax``) get ``model.normalize=false``, and ``dreml`` gets a 4-learner ensemble.

    python benchmarks/demo_losses.py [--iterations 150] [--losses a,b] [--out runs/demo_losses]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import torch

from deepmetric import losses
from deepmetric.cli import demo_config_path
from deepmetric.training import load_config, train

# Losses that need something other than the demo's settings to be trained at all.
EXTRA = {
    "softmax": ["model.normalize=false"],
    "dreml": ["ensemble={size: 4, meta_classes: 3}", "model.embedding_size=8"],
    "npair": ["sampler.samples_per_class=2", "sampler.classes_per_batch=5"],
    # on unit vectors a negative margin of 1 (PML's default) pushes negatives past 60 degrees: too far for
    # 150 iterations of this small CNN, which then loses to its untrained self; 0.5 is the usual setting
    "contrastive": ["loss.neg_margin=0.5"],
    # the lifted log-sum-exp over 64 negatives keeps every pair active: a smaller step keeps it stable
    "lifted_structure": ["optimizer.lr=0.0001"],
    "dtsh": ["model.head=hash", "model.normalize=false"],
    "dpsh": ["model.head=hash", "model.normalize=false"],
    "dsh": ["model.head=hash", "model.normalize=false"],
    "hashing": ["model.head=hash", "model.normalize=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--losses", help="comma-separated loss names (default: all registered)")
    parser.add_argument("--out", default="runs/demo_losses")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    names = args.losses.split(",") if args.losses else losses.names()
    print(
        f"{'loss':<20s} {'R@1 untrained':>13s} {'R@1 trained':>11s} {'NMI untrained':>13s} {'NMI trained':>11s} "
        f"{'s':>5s}  R@1 improved"
    )
    for name in names:
        out = Path(args.out) / name
        shutil.rmtree(out, ignore_errors=True)
        overrides = [
            f"loss={name}",
            f"train.iterations={args.iterations}",
            "train.eval_every=0",
            "eval.save_embeddings=false",
            *EXTRA.get(name, []),
        ]
        started = time.time()
        try:
            metrics = train(load_config(demo_config_path(), overrides), out)
        except Exception as error:  # report and go on: one failing loss must not hide the others
            print(f"{name:<20s} failed: {str(error).splitlines()[0]}")
            continue
        before, after = metrics["untrained"], metrics["trained"]
        print(
            f"{name:<20s} {before['recall@1']:13.4f} {after['recall@1']:11.4f} "
            f"{before['nmi']:13.4f} {after['nmi']:11.4f} {time.time() - started:5.0f}  "
            f"{'yes' if after['recall@1'] > before['recall@1'] else 'NO'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
