"""Untrained EfficientNet-Lite0 GeM features (p = 3) of the CUB subset's *training* species at one input size.

Chooses ``model.backbone_options.image_size`` without touching the test classes: the full network embeds
every photo of species 1-50 (resize the shorter side to RESIZE, centre crop CROP), leave-one-out Recall@1
and MAP@R are printed, plain and after database-side augmentation (k = 2).

    OMP_NUM_THREADS=1 python benchmarks/cub_input_size.py ROOT 256 224
    OMP_NUM_THREADS=1 python benchmarks/cub_input_size.py ROOT 320 288
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepmetric.data import get_dataset
from deepmetric.data.transforms import build_transform
from deepmetric.evaluation import evaluate
from deepmetric.models import build_backbone
from deepmetric.models.head import GeM
from deepmetric.retrieval.postprocess import database_augmentation, l2_normalize


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="the CUB_100_subset folder")
    parser.add_argument("resize", type=int, help="shorter side after resizing")
    parser.add_argument("crop", type=int, help="centre crop (the network's input side)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = build_backbone(
        "efficientnet_lite0", pretrained=True, image_size=args.crop, resize_size=args.resize
    ).eval()
    dataset = get_dataset(
        "cub200", root=args.root, split="train", transform=build_transform(backbone.input_spec, train=False)
    )
    started, gem, chunks = time.time(), GeM(3.0), []
    for images, _ in DataLoader(dataset, batch_size=32):
        chunks.append(gem(backbone(images)).numpy())
    features = l2_normalize(np.concatenate(chunks).astype(np.float64))
    labels = np.asarray(dataset.labels)
    row: dict[str, object] = {
        "resize": args.resize,
        "crop": args.crop,
        "seconds": round(time.time() - started),
    }
    for k in (0, 2):
        x = database_augmentation(features, k, 3.0) if k else features
        scores = evaluate(x, labels, metrics=["recall@1", "map@r"], distance="cosine")
        row[f"dba_k={k}"] = {name: round(100 * value, 2) for name, value in scores.items()}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
