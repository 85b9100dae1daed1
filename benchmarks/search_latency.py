"""One-query-at-a-time search latency of the index backends on one core, and recall@10 against exact.

The gallery is synthetic but clustered (uniform random vectors have no near neighbours worth finding,
which makes approximate search meaningless): ``--clusters`` Gaussian clusters in ``--dim`` dimensions,
unit-normalised, searched by cosine similarity; queries are fresh draws from the same clusters. Exact
ground truth comes from one batched exact search. Every backend is searched through
``deepmetric.retrieval.Index`` (what an application calls), one query per call, one thread.

    OMP_NUM_THREADS=1 python benchmarks/search_latency.py [--size 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from deepmetric.retrieval import Index


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    members = rng.integers(0, clusters, n)
    x = centres[members] + rng.normal(0, 0.35, (n, dim)).astype(np.float32) / np.sqrt(dim) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def latencies(index: Index, queries: np.ndarray, k: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-query wall time (ms) and the returned indices."""
    times, found = np.empty(len(queries)), np.empty((len(queries), k), dtype=np.int64)
    for i in tqdm(range(len(queries)), desc=desc, leave=False):
        start = time.perf_counter()
        _, indices = index.search(queries[i : i + 1], k)
        times[i] = (time.perf_counter() - start) * 1000
        found[i] = indices[0]
    return times, found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=50, help="queries timed for exact search")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", default="32,64,128,256")
    parser.add_argument("--build-threads", type=int, default=1, help="threads for building faiss indexes")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    gallery = clustered(args.size, args.dim, args.clusters, rng, centres)
    queries = clustered(args.queries, args.dim, args.clusters, rng, centres)
    print(f"gallery {args.size} x {args.dim} ({args.clusters} clusters), {args.queries} queries, k={args.k}")
    print(f"load before: {os.getloadavg()[0]:.1f} (1-minute load average, {os.cpu_count()} cores)")

    exact = Index.build(gallery, distance="cosine", backend="torch", device="cpu")
    start = time.perf_counter()
    truth = exact.search(queries, args.k)[1]
    print(f"ground truth (batched exact): {time.perf_counter() - start:.1f} s")
    rows = []
    for name in ("torch", "faiss_flat"):
        index = exact if name == "torch" else Index.build(gallery, distance="cosine", backend=name)
        times, found = latencies(index, queries[: args.exact_queries], args.k, name)
        rows.append((f"exact ({name})", "", times, recall(found, truth[: args.exact_queries]), 0.0))
        del index
    del exact  # each index holds its own copy of the gallery

    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    ivf = Index.build(gallery, distance="cosine", backend="faiss_ivf", nlist=args.nlist)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    for nprobe in map(int, args.nprobe.split(",")):
        ivf.backend.index.nprobe = nprobe
        times, found = latencies(ivf, queries, args.k, f"ivf nprobe={nprobe}")
        rows.append(
            ("faiss IVF-Flat", f"nlist={args.nlist}, nprobe={nprobe}", times, recall(found, truth), build)
        )
    del ivf

    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    hnsw = Index.build(gallery, distance="cosine", backend="faiss_hnsw", m=args.hnsw_m)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    for ef in map(int, args.ef_search.split(",")):
        hnsw.backend.index.hnsw.efSearch = ef
        times, found = latencies(hnsw, queries, args.k, f"hnsw ef={ef}")
        rows.append(
            ("faiss HNSW-Flat", f"M={args.hnsw_m}, efSearch={ef}", times, recall(found, truth), build)
        )

    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(f"\n| backend | parameters | p50 ms | p99 ms | recall@{args.k} | build s |")
    print("|---|---|---:|---:|---:|---:|")
    for name, params, times, rec, build in rows:
        p50, p99 = np.percentile(times, [50, 99])
        print(f"| {name} | {params} | {p50:.2f} | {p99:.2f} | {rec:.3f} | {build:.0f} |")


if __name__ == "__main__":
    main()
