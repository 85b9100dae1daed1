"""``deepmetric embed-shards``, ``build-index``, ``search-index``, ``evaluate-shards``: galleries past memory.

torchrun --nproc_per_node 2 -m deepmetric.cli embed RUN --shards SHARDS --dtype float16   # = embed-shards
deepmetric build-index SHARDS/test --out INDEX --kind ivfpq --nlist 4096 --rerank 100
deepmetric search INDEX query.jpg -k 10 --json            # images, embedded by the shards' model
deepmetric search-index INDEX --queries Q.npy -k 10 --out results.npz   # vectors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepmetric.cli.common import load_array, print_metrics
from deepmetric.retrieval.shards import DTYPES


def cmd_embed_shards(args: argparse.Namespace) -> None:
    """Every process of a torchrun job runs this; each embeds its own shards."""
    import torch

    from deepmetric.training import distributed
    from deepmetric.training.data import build_data
    from deepmetric.training.embed import load_model
    from deepmetric.training.run_folder import RunFolder
    from deepmetric.training.shard_embed import embed_to_shards

    run = RunFolder(args.run)
    if not run.config_file.is_file():
        raise FileNotFoundError(f"no run folder at {run.path} ({run.CONFIG} is missing)")
    config = run.load_config()
    # the checkpoint by name, so that deepmetric search loads the very model that embedded the shards
    checkpoint = run.selected_checkpoint() if args.checkpoint == "auto" else args.checkpoint
    try:
        device = distributed.setup(torch.device(args.device))
        model = load_model(run, checkpoint, device)
        with distributed.main_first():  # a feature cache is written once, by rank 0
            data = build_data(config, model.backbone, device)
        splits = {
            config.data.test_split if name == "test" else name: ds for name, ds in data.evaluation.items()
        }
        if args.split is not None and args.split not in splits:
            raise ValueError(
                f"split {args.split!r} is not evaluated by this run; choose one of {sorted(splits)}"
            )
        for split, dataset in splits.items():
            if args.split is not None and split != args.split:
                continue
            source = {"run": str(run.path.resolve()), "split": split, "checkpoint": checkpoint}
            shards = embed_to_shards(
                model,
                dataset,
                Path(args.out) / split,
                shard_size=args.shard_size,
                dtype=args.dtype,
                device=device,
                batch_size=args.batch_size or config.eval.batch_size,
                features=data.features,
                num_workers=config.data.num_workers,
                source=source,
            )
            if distributed.is_main():
                print(f"{split}: {len(shards)} rows in {shards.num_shards} shards -> {shards.directory}")
    finally:
        distributed.teardown()


def cmd_build_index(args: argparse.Namespace) -> None:
    from deepmetric.retrieval.sharded_index import build_sharded_index

    index = build_sharded_index(
        args.shards,
        args.out,
        kind=args.kind,
        distance=args.distance,
        nlist=args.nlist,
        m=args.m,
        nbits=args.nbits,
        train_size=args.train_size,
        nprobe=args.nprobe,
        rerank=args.rerank,
        storage=args.storage,
        shards_per_part=args.shards_per_part,
        seed=args.seed,
    )
    size = index.record.get("bytes", 0) / 2**20
    print(f"{index.kind} index of {len(index)} vectors ({size:.1f} MiB) -> {index.folder}")


def cmd_search_index(args: argparse.Namespace) -> None:
    from deepmetric.retrieval.sharded_index import ShardedIndex
    from deepmetric.retrieval.shards import write_npy

    index = ShardedIndex(args.index, nprobe=args.nprobe, rerank=args.rerank)
    queries = load_array(args.queries, "queries")
    if queries.ndim == 1:
        queries = queries[None]
    values, rows = index.search(queries, args.k)
    ids = index.ids_of(rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, array in (("values", values), ("rows", rows), ("ids", ids)):
            write_npy(out / f"{name}.npy", array)
        print(f"{len(rows)} queries x {args.k} -> {out}/{{values,rows,ids}}.npy")
    else:
        for query, (row_values, row_ids) in enumerate(zip(values, ids)):
            hits = "  ".join(f"{i}:{v:.4g}" for i, v in zip(row_ids.tolist(), row_values.tolist()))
            print(f"{query}: {hits}")


def cmd_evaluate_shards(args: argparse.Namespace) -> dict[str, float]:

    from deepmetric.cli.common import comma_list
    from deepmetric.evaluation.sharded import evaluate_shards
    from deepmetric.retrieval.sharded_index import ShardedIndex

    index = ShardedIndex(args.index, memory_budget_mb=args.memory_budget_mb) if args.index else None
    results = evaluate_shards(
        args.shards,
        comma_list(args.metrics) or ["recall@1", "recall@10"],
        index=index,
        distance=args.distance,
        max_queries=args.max_queries,
        chunk=args.chunk,
        memory_budget_mb=args.memory_budget_mb,
        device=args.device,
        progress=True,
    )
    print_metrics(results, args.json)
    return results


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_shard_options(p: argparse.ArgumentParser) -> None:
    """The options of shard embedding, shared by ``embed-shards`` and ``embed --shards``."""
    p.add_argument("--split", help="embed only this split (default: every evaluation split)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="bits: packed sign bits (hashing)")
    p.add_argument("--shard-size", type=_positive, default=100_000, help="rows per shard")
    p.add_argument("--batch-size", type=_positive, help="embedding batch (default: eval.batch_size)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-shards",
        help="embed a run's evaluation splits into memory-mappable shards (runs under torchrun)",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="shard folder (one sub-folder per split)")
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    add_shard_options(p)
    p.set_defaults(func=cmd_embed_shards)

    p = sub.add_parser("build-index", help="build an IVF-PQ / IVF-Flat / Hamming index from a shard folder")
    p.add_argument("shards", help="shard folder (written by embed-shards)")
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--kind", default="ivfpq", help="ivfpq, ivfflat or hamming (bits shards)")
    p.add_argument("--distance", default="cosine", help="cosine, dot, euclidean or squared_euclidean")
    p.add_argument("--nlist", type=_positive, help="inverted lists (default: about sqrt(N))")
    p.add_argument(
        "--m", type=_positive, help="IVF-PQ sub-quantizers (bytes a vector at 8 bits; default D/8)"
    )
    p.add_argument("--nbits", type=_positive, default=8, help="IVF-PQ bits per sub-quantizer")
    p.add_argument("--train-size", type=_positive, help="rows sampled to train (default: 50 per list)")
    p.add_argument("--nprobe", type=_positive, default=16, help="lists searched per query (default)")
    p.add_argument("--rerank", type=int, default=0, help="re-rank this many candidates exactly (default)")
    p.add_argument("--storage", default="ondisk", help="ondisk (one merged index) or parts (one file each)")
    p.add_argument("--shards-per-part", type=_positive, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_index)

    p = sub.add_parser("search-index", help="search an index built by build-index")
    p.add_argument("index", help="index folder")
    p.add_argument("--queries", required=True, help="queries .npy (vectors, or packed codes for hamming)")
    p.add_argument("-k", type=_positive, default=10)
    p.add_argument("--nprobe", type=_positive, help="override the index's nprobe")
    p.add_argument("--rerank", type=int, help="override the index's re-ranking depth (0: none)")
    p.add_argument("--out", help="folder for values.npy, rows.npy, ids.npy (default: print)")
    p.set_defaults(func=cmd_search_index)

    p = sub.add_parser(
        "evaluate-shards", help="leave-one-out metrics over a sharded gallery, in query chunks"
    )
    p.add_argument("shards", help="shard folder with labels")
    p.add_argument("--index", help="search through this index (default: exact search over the shards)")
    p.add_argument("--metrics", help="recall@K, precision@K, r_precision, map@r (comma-separated)")
    p.add_argument("--distance", default="cosine", help="exact search's distance")
    p.add_argument("--max-queries", type=_positive, help="evaluate a seeded sample of this many queries")
    p.add_argument("--chunk", type=_positive, default=1024, help="queries searched at once")
    p.add_argument("--memory-budget-mb", type=float, default=256)
    p.add_argument("--device", help="exact search device, e.g. cuda (default: CUDA when available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate_shards)
