"""Untrained EfficientNet-Lite0 features of the CUB subset under each pooling and post-processing option.

Step ``pool`` runs the pretrained last two stages over the cached ``last_2_stages`` feature maps of one
split (``deepmetric.models.feature_maps``: the same cache ``model.trainable: last_2_stages`` trains from)
and saves the average- and GeM-pooled (p = 3) 1280-d features of each cached view. Step ``table``
evaluates the options on the 10 validation classes (20 % of the training classes, seed 0: where settings
are chosen) and on the unseen test classes (leave-one-out, cosine): pooling, flip averaging (image and
mirror features averaged), power normalisation, PCA whitening fitted on the other training classes,
αQE and DBA.

    OMP_NUM_THREADS=1 python benchmarks/postprocess.py pool --split train --root ROOT --cache DIR --out DIR
    OMP_NUM_THREADS=1 python benchmarks/postprocess.py pool --split test --root ROOT --cache DIR --out DIR
    python benchmarks/postprocess.py table --root ROOT --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deepmetric.data import get_dataset
from deepmetric.evaluation import evaluate
from deepmetric.io import write_json
from deepmetric.models import build_backbone
from deepmetric.models.feature_maps import extract_feature_maps
from deepmetric.models.head import GeM
from deepmetric.retrieval.postprocess import (
    PCAWhitening,
    alpha_query_expansion,
    database_augmentation,
    k_reciprocal_rerank,
    l2_normalize,
    power_normalize,
)
from deepmetric.training.data import split_validation_classes

CUT = "last_2_stages"
METRICS = ["recall@1", "map@r"]


@torch.no_grad()
def pool(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    backbone = build_backbone("efficientnet_lite0", pretrained=True).eval()
    dataset = get_dataset("cub200", root=args.root, split=args.split, transform=None)
    views = [v for v in ("image", "mirror") if v in args.views]
    maps = extract_feature_maps(backbone, CUT, dataset, args.cache, views=views)
    _, tail = backbone.split(CUT)
    gem = GeM(3.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for view, array in maps.items():
        pooled = {"avg": [], "gem": []}
        for start in tqdm(range(0, len(array), 64), desc=f"{args.split} {view}"):
            final = tail(torch.from_numpy(np.asarray(array[start : start + 64], dtype=np.float32)))
            pooled["avg"].append(final.mean(dim=(-2, -1)).numpy())
            pooled["gem"].append(gem(final).numpy())
        for name, chunks in pooled.items():
            np.save(out / f"{args.split}_{view}_{name}.npy", np.concatenate(chunks))
    np.save(out / f"{args.split}_labels.npy", np.asarray(dataset.labels))


def scores(x: np.ndarray, labels: np.ndarray, queries: np.ndarray | None = None) -> dict[str, float]:
    if queries is None:
        result = evaluate(x, labels, metrics=METRICS, distance="cosine")
    else:  # expanded queries against the plain database, each query's own item excluded
        ids = np.arange(len(labels))
        result = evaluate(
            queries, labels, x, labels, metrics=METRICS, distance="cosine", query_ids=ids, gallery_ids=ids
        )
    return {k: round(100 * v, 1) for k, v in result.items()}


def distance_scores(distance: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Recall@1 and MAP@R (leave-one-out: the diagonal is the query itself) from a distance matrix."""
    distance = distance.astype(np.float64).copy()
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(distance, axis=1, kind="stable")
    relevant = labels[order] == labels[:, None]
    r = relevant.sum(axis=1) - 1  # the query itself, ranked last (infinite distance), is not counted
    precision_sums = []
    for row, count in zip(relevant, r):
        hits = row[:count]
        precision_sums.append((np.cumsum(hits) / np.arange(1, count + 1) * hits).sum() / count)
    return {
        "recall@1": round(100 * float(relevant[:, 0].mean()), 1),
        "map@r": round(100 * float(np.mean(precision_sums)), 1),
    }


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)

    def load(split: str, view: str, pooling: str) -> np.ndarray:
        return np.load(out / f"{split}_{view}_{pooling}.npy").astype(np.float64)

    train_labels, test_labels = np.load(out / "train_labels.npy"), np.load(out / "test_labels.npy")
    held_out = split_validation_classes(train_labels, 0.2, 0)
    rows = []

    def features(split: str, pooling: str, flip: bool) -> np.ndarray:
        x = l2_normalize(load(split, "image", pooling))
        return l2_normalize(x + l2_normalize(load(split, "mirror", pooling))) if flip else x

    flips = (False, True) if (out / "test_mirror_gem.npy").is_file() else (False,)  # mirror view pooled?
    for pooling in ("avg", "gem"):
        for flip in flips:
            train = features("train", pooling, flip)
            test = features("test", pooling, flip)
            sets = {"validation": (train[held_out], train_labels[held_out]), "test": (test, test_labels)}
            fit = train[~held_out]  # whitening is fitted on the training classes outside validation
            variants = {
                "L2": lambda x: x,
                "power 0.5": lambda x: power_normalize(x, 0.5),
                "PCA whitening": lambda x, fit=fit: PCAWhitening(eps=args.eps).fit(fit).transform(x),
                "PCA whitening 512": lambda x, fit=fit: PCAWhitening(512, eps=args.eps).fit(fit).transform(x),
                "power 0.5 + DBA k=1": lambda x: database_augmentation(power_normalize(x, 0.5), 1, 3.0),
                "DBA k=1": lambda x: database_augmentation(x, 1, 3.0),
                "DBA k=2": lambda x: database_augmentation(x, 2, 3.0),
            }
            for name, transform in variants.items():
                row = {"pooling": pooling, "flip": flip, "option": name}
                for set_name, (x, labels) in sets.items():
                    row[set_name] = scores(transform(x), labels)
                rows.append(row)
            for k in (1, 2):
                row = {"pooling": pooling, "flip": flip, "option": f"alpha-QE k={k}"}
                for set_name, (x, labels) in sets.items():
                    row[set_name] = scores(x, labels, alpha_query_expansion(x, x, k, 3.0, exclude_self=True))
                rows.append(row)
            if pooling == "gem":  # the slowest option: measured on the better pooling only
                row = {"pooling": pooling, "flip": flip, "option": "k-reciprocal (20, 6, 0.3)"}
                for set_name, (x, labels) in sets.items():
                    # the distance-matrix metrics agree with deepmetric.evaluation on the plain ranking
                    if distance_scores(1 - x @ x.T, labels) != scores(x, labels):
                        raise AssertionError("distance_scores disagrees with deepmetric.evaluation")
                    row[set_name] = distance_scores(k_reciprocal_rerank(x, x, args.k1, 6, 0.3), labels)
                rows.append(row)
    for row in rows:
        print(json.dumps(row))
    write_json(out / "table.json", rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["pool", "table"])
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--root", required=True, help="the CUB_100_subset folder")
    parser.add_argument("--cache", default="~/.cache/deepmetric/features", help="feature-map cache folder")
    parser.add_argument("--views", default="image,mirror", help="cached views to pool")
    parser.add_argument(
        "--eps", type=float, default=1e-3, help="whitening eps (relative to the largest variance)"
    )
    parser.add_argument("--k1", type=int, default=20, help="k-reciprocal re-ranking k1")
    parser.add_argument("--out", required=True, help="folder for pooled features and table.json")
    args = parser.parse_args()
    pool(args) if args.step == "pool" else table(args)


if __name__ == "__main__":
    main()
