"""Deep hashing benchmarks.

(a) speed and memory: exact Hamming k-NN over N random 64-bit codes (deepmetric.hashing.hamming_knn, and
    faiss' IndexBinaryFlat when installed) vs exact float k-NN over N x 128 float32 vectors (torch matmul +
    topk over database chunks: the reference; deepmetric's own float search, retrieval.knn; and faiss'
    IndexFlatL2 when installed); same queries and k. deepmetric's CPU kernels are the compiled ones of
    deepmetric.native (the line above the table says whether they were built, or the numpy/torch
    fallbacks ran). Each side runs in its own subprocess: its peak RSS (``ru_maxrss``: data, index and
    working memory, imports included) and its database bytes belong to it alone. Goal: Hamming >= 20x
    faster, 16x smaller.

(b) CIFAR-10 retrieval quality of learned codes (the DeepHash setting): database/training =
    cifar10_train10k.npz, queries = 1,000 test images (100 per class); frozen EfficientNet-Lite0 features
    (ImageNet weights, cached); a linear HashHead (tanh) trained with the ``hashing`` loss (base
    ``triplet`` on squared euclidean distances, margin = bits/8 in Hamming units, all triplets of
    10 x 10 batches) for each code length, with the geometric alpha schedule
    1 -> 16 and with a fixed alpha = 1; compared with the mAP of the float features themselves (cosine)
    and of a float head of the same size trained with the same triplet loss.

    .venv/bin/python benchmarks/hashing.py --part a [--size 1000000 --queries 1000 --k 100 --repeats 2]
    .venv/bin/python benchmarks/hashing.py --part b [--data /work/shared/data --bits 12 24 32 48 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FLOAT_DIM = 128
BITS = 64


def _random_codes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)  # random bits, packed as pack_bits does


def _random_floats(n: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, FLOAT_DIM, generator=generator)


def _float_knn_torch(queries, database, k: int, chunk: int):
    """Squared-euclidean k-NN: ``||x||^2 - 2 q.x`` (one fused addmm per database chunk, the norms computed
    once), topk, merged with the running best. The ``||q||^2`` term does not change a query's ranking."""
    import torch

    norms = (database * database).sum(1)
    best_values = best_indices = None
    for start in range(0, database.shape[0], chunk):
        block = database[start : start + chunk]
        scores = torch.addmm(norms[None, start : start + chunk], queries, block.T, alpha=-2)
        values, indices = torch.topk(scores, min(k, block.shape[0]), dim=1, largest=False)
        indices = indices + start
        if best_values is not None:
            values, indices = torch.cat([best_values, values], 1), torch.cat([best_indices, indices], 1)
            values, order = torch.topk(values, k, dim=1, largest=False)
            indices = torch.gather(indices, 1, order)
        best_values, best_indices = values, indices
    return best_values, best_indices


def worker(side: str, size: int, num_queries: int, k: int) -> dict:
    """One measurement: build the data, time the search (the search alone), report peak memory."""
    import torch

    import deepmetric.hashing  # noqa: F401  (every side pays the same imports before the baseline RSS)

    baseline_mb = _current_rss_mb()

    if side in ("hamming", "faiss_binary"):
        database, queries = _random_codes(size, 0), _random_codes(num_queries, 1)
        database_bytes = database.nbytes
        if side == "hamming":
            from deepmetric.hashing import hamming_knn

            start = time.perf_counter()
            hamming_knn(queries, database, k)
        else:
            import faiss

            index = faiss.IndexBinaryFlat(BITS)
            index.add(database)
            start = time.perf_counter()
            index.search(queries, k)
    else:
        database, queries = _random_floats(size, 0), _random_floats(num_queries, 1)
        database_bytes = database.numel() * 4
        if side == "float_torch":
            start = time.perf_counter()
            with torch.no_grad():
                _float_knn_torch(queries, database, k, chunk=65536)
        elif side == "float_deepmetric":
            from deepmetric.evaluation import knn

            start = time.perf_counter()
            knn(queries, k, database, distance="squared_euclidean", device="cpu")
        else:
            import faiss

            index = faiss.IndexFlatL2(FLOAT_DIM)
            index.add(database.numpy())
            start = time.perf_counter()
            index.search(queries.numpy(), k)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "side": side,
        "seconds": seconds,
        "added_mb": peak_mb - baseline_mb,
        "database_mb": database_bytes / 2**20,
    }


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def run_side(side: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--size", str(args.size)]
    command += ["--queries", str(args.queries), "--k", str(args.k)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def part_a(args: argparse.Namespace) -> None:
    import importlib.util

    import torch

    sides = ["float_torch", "float_deepmetric", "hamming"]
    if importlib.util.find_spec("faiss") is not None:
        sides += ["faiss_float", "faiss_binary"]
    print(f"(a) exact k-NN: {args.queries} queries, k={args.k}, database {args.size:,} items")
    threads = torch.get_num_threads()
    print(f"    float: {FLOAT_DIM}-d float32; hamming: {BITS}-bit codes; torch threads {threads}")
    from deepmetric import native

    kernel = "native (compiled C)" if native.available() else "numpy fallback (no C compiler)"
    print(f"    deepmetric CPU kernels: {kernel}")
    print("    memory: peak RSS of the side's process minus its RSS after imports (data + index + search)")
    print(f"    time: the best of {args.repeats} rounds, the sides taking turns (the machine's load varies)")
    runs = [
        {side: run_side(side, args) for side in sides} for _ in range(args.repeats)
    ]  # rounds: interleaved
    results = {side: min((run[side] for run in runs), key=lambda r: r["seconds"]) for side in sides}
    reference = results["float_torch"]
    fastest_float = min((results[side] for side in sides if "float" in side), key=lambda r: r["seconds"])
    names = {
        "float_torch": f"float {FLOAT_DIM}-d, torch matmul+topk (reference)",
        "float_deepmetric": f"float {FLOAT_DIM}-d, deepmetric retrieval.knn",
        "faiss_float": f"float {FLOAT_DIM}-d, faiss IndexFlatL2",
        "hamming": f"hamming {BITS}-bit, deepmetric hamming_knn",
        "faiss_binary": f"hamming {BITS}-bit, faiss IndexBinaryFlat",
    }
    header = f"| {'search':48} | {'time s':>8} | {'speed-up':>8} | {'vs fastest float':>16} "
    header += f"| {'database MB':>11} | {'smaller':>7} "
    header += f"| {'memory MB':>9} | {'less':>5} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for side in sides:
        r = results[side]
        speedup = reference["seconds"] / r["seconds"]
        smaller = reference["database_mb"] / r["database_mb"]
        print(
            f"| {names[side]:48} | {r['seconds']:8.2f} | {speedup:7.1f}x "
            f"| {fastest_float['seconds'] / r['seconds']:15.1f}x | {r['database_mb']:11.1f} "
            f"| {smaller:6.0f}x | {r['added_mb']:9.0f} | {reference['added_mb'] / r['added_mb']:4.0f}x |"
        )


def _load_cifar(data: Path, per_class_queries: int):
    train = np.load(data / "cifar10_train10k.npz")
    test = np.load(data / "cifar10_test.npz")
    rng = np.random.default_rng(0)
    queries = np.concatenate(
        [rng.choice(np.flatnonzero(test["labels"] == c), per_class_queries, replace=False) for c in range(10)]
    )
    return train["images"], train["labels"], test["images"][queries], test["labels"][queries]


def _features(images: np.ndarray, labels: np.ndarray, cache_dir: Path):
    import torch

    from deepmetric.data.base import ArrayDataset
    from deepmetric.data.transforms import build_transform
    from deepmetric.models.backbones import build_backbone
    from deepmetric.models.features import extract_features

    # channels_last: ~1.7x faster depthwise convolutions on CPU; same weights, so the same cache key
    backbone = build_backbone("efficientnet_lite0", pretrained=True).to(memory_format=torch.channels_last)
    dataset = ArrayDataset(images, labels, transform=build_transform(backbone.input_spec, train=False))
    return np.asarray(
        extract_features(backbone, dataset, batch_size=128, cache_dir=cache_dir)
    ), backbone.feature_dim


def _train_head(features, labels, head, loss, iterations: int, seed: int):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-5)
    for iteration in range(iterations):
        if hasattr(loss, "set_progress"):
            loss.set_progress(iteration, iterations)
        batch = np.concatenate([rng.choice(members, 10, replace=False) for members in by_class])  # 10 x 10
        optimizer.zero_grad()
        loss(head(x[batch]), y[batch]).backward()
        optimizer.step()
    return head.eval()


def part_b(args: argparse.Namespace) -> None:
    import torch

    from deepmetric import losses
    from deepmetric.hashing import HashHead, evaluate_hashing
    from deepmetric.models.head import EmbeddingHead

    db_images, db_labels, q_images, q_labels = _load_cifar(Path(args.data), 100)
    cache = Path(args.cache_dir)
    db_features, dim = _features(db_images, db_labels, cache)
    q_features, _ = _features(q_images, q_labels, cache)

    def float_map(query: np.ndarray, database: np.ndarray) -> float:
        from deepmetric.evaluation import evaluate

        result = evaluate(query, q_labels, database, db_labels, metrics=("map",), distance="cosine")
        return float(result["map"])

    sizes = f"database {len(db_labels)} (train10k), {len(q_labels)} queries"
    print(f"(b) CIFAR-10: {sizes}, {args.iterations} iterations per head")
    features_map = float_map(q_features, db_features)
    print(f"float features ({dim}-d, frozen EfficientNet-Lite0), cosine mAP: {features_map:.4f}")
    header = "| bits | float head mAP | hash mAP (alpha 1->16) | ratio | hash mAP (alpha 1) | ratio "
    header += "| map@1000 (1->16) | prec@r2 (1->16) |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for bits in args.bits:
        float_head = _train_head(
            db_features,
            db_labels,
            EmbeddingHead(dim, bits),
            losses.get("triplet", margin=0.2),
            args.iterations,
            0,
        )
        with torch.no_grad():
            reference = float_map(
                float_head(torch.from_numpy(q_features)).numpy(),
                float_head(torch.from_numpy(db_features)).numpy(),
            )
        row = [f"| {bits:4d} | {reference:14.4f} "]
        extra = {}
        for schedule in ("geometric", "constant"):
            params = {"alpha": 1.0}
            if schedule == "geometric":
                params.update(alpha_final=16.0, alpha_schedule="geometric")
            # squared euclidean between ±1 codes = 4 x Hamming: a margin of bits / 8 Hamming bits
            base_params = {"distance": "squared_euclidean", "margin": bits / 2}
            loss = losses.get("hashing", base="triplet", base_params=base_params, **params)
            head = _train_head(db_features, db_labels, HashHead(dim, bits), loss, args.iterations, 0)
            with torch.no_grad():
                q_codes, db_codes = head(torch.from_numpy(q_features)), head(torch.from_numpy(db_features))
            metrics = evaluate_hashing(
                q_codes, q_labels, db_codes, db_labels, metrics=("map", "map@1000", "precision@r2")
            )
            row.append(f"| {metrics['map']:22.4f} | {metrics['map'] / reference:5.3f} ")
            extra = extra or metrics
        row.append(f"| {extra['map@1000']:16.4f} | {extra['precision@r2']:15.4f} |")
        print("".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["a", "b"], default="a")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--repeats", type=int, default=2, help="part a: rounds over all sides, best time kept"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="/work/shared/data")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "deepmetric" / "features"))
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 24, 32, 48, 64])
    parser.add_argument("--iterations", type=int, default=1000)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.queries, args.k)))
    elif args.part == "a":
        part_a(args)
    else:
        part_b(args)


if __name__ == "__main__":
    main()
