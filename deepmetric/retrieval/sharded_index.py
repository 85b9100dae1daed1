"""Indexes built from embedding shards without loading them all, and searched across index files.

>>> build_sharded_index("shards/test", "index", kind="ivfpq", nlist=4096, m=16, rerank=100)
>>> index = ShardedIndex("index")
>>> values, rows = index.search(queries, k=10)          # rows: global rows of the shard folder
>>> index.ids_of(rows), index.labels_of(rows)

Kinds (:func:`index_kinds`; one option chooses): ``ivfflat`` and ``ivfpq`` are faiss inverted
file indexes. Their coarse quantizer (and product quantizer) is trained on ``train_size`` rows drawn at
random from all shards; then the vectors are added shard by shard, ``shards_per_part`` shards per *part*
file (``part-00000.faiss`` ...), each part written as soon as it is full, so memory holds one part's
codes at a time and a killed build resumes at its first missing part. ``storage="ondisk"`` then merges
the parts' inverted lists into one on-disk file (faiss's ``OnDiskInvertedLists``, ``lists.ivfdata``,
memory-mapped at search time) and deletes the parts; ``storage="parts"`` keeps the parts, which are
memory-mapped (``IO_FLAG_MMAP``) and searched one by one, their top-k merged into one. ``rerank=R``
re-ranks each query's ``R`` best candidates exactly from the memory-mapped float shards: PQ codes find
the candidates, the stored vectors order them. ``hamming`` searches packed binary code shards (dtype
``bits``) exactly with the native Hamming k-NN, shard by shard, merging the per-shard top-k.

Results are ordered by (value, global row), like the in-memory search, so ties are deterministic and a
sharded search equals one search over the concatenated vectors. ``index.json`` records how the index
was built (kind, parameters, source shards, counts, times, faiss version); it is written last.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.distances import Distance, EuclideanDistance, get_distance
from deepmetric.io import FILE_MODE, atomic_path, write_json
from deepmetric.registry import Registry
from deepmetric.retrieval.index import SearchResult
from deepmetric.retrieval.knn import knn
from deepmetric.retrieval.shards import MANIFEST, ShardSet

INDEX_FORMAT, INDEX_VERSION, INDEX_FILE = "deepmetric-sharded-index", 1, "index.json"
TRAINED, MERGED, LISTS = "trained.faiss", "index.faiss", "lists.ivfdata"
STORAGES = ("ondisk", "parts")
_ADD_ROWS = 65_536  # rows converted to float32 and added to faiss at once

SHARDED_INDEX_KINDS = Registry("sharded index kind")  # faiss index factories: (dim, metric, nlist, ...)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ValueError("IVF indexes need faiss (pip install 'deepmetric[faiss]')") from None
    return faiss


@SHARDED_INDEX_KINDS.register("ivfflat")
def ivf_flat(dim: int, metric: int, nlist: int) -> Any:
    """Inverted lists of full float32 vectors: exact distances within the probed cells."""
    faiss = _faiss()
    return faiss.IndexIVFFlat(faiss.IndexFlat(dim, metric), dim, nlist, metric)


@SHARDED_INDEX_KINDS.register("ivfpq")
def ivf_pq(dim: int, metric: int, nlist: int, m: int | None = None, nbits: int = 8) -> Any:
    """Inverted lists of product-quantised codes: ``m`` sub-vectors of ``nbits`` bits (``m * nbits / 8``
    bytes a vector); ``m`` must divide the dimension (default ``dim / 8``)."""
    faiss = _faiss()
    m = m or max(1, dim // 8)
    if dim % m:
        raise ValueError(f"PQ m={m} must divide the dimension {dim}")
    return faiss.IndexIVFPQ(faiss.IndexFlat(dim, metric), dim, nlist, m, nbits, metric)


def index_kinds() -> list[str]:
    """Every kind :func:`build_sharded_index` accepts: the faiss kinds and ``hamming`` (exact Hamming
    k-NN over memory-mapped packed code shards: no index files, nothing to train)."""
    return [*SHARDED_INDEX_KINDS.names(), "hamming"]


def default_nlist(count: int) -> int:
    """About sqrt(N) cells, a power of two, with >= 39 training points each (faiss's minimum)."""
    target = 2 ** round(math.log2(max(1.0, math.sqrt(count))))
    return int(max(1, min(target, count // 39)))


def merge_topk(values: np.ndarray, rows: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``values``/``rows`` (``Q x C``), ordered by (value, row);
    row ``-1`` marks an empty slot and goes last."""
    empty = rows < 0
    key_value = np.where(empty, np.inf, -values if largest else values)
    key_row = np.where(empty, np.iinfo(np.int64).max, rows)
    order = np.lexsort((key_row, key_value), axis=-1)[:, :k]
    return np.take_along_axis(values, order, 1), np.take_along_axis(rows, order, 1)


def _part_name(part: int) -> str:
    return f"part-{part:05d}.faiss"


def _write_faiss(faiss: Any, index: Any, path: Path) -> None:
    """faiss writes by file name: a temporary name, then renamed (atomic), mode 0644."""
    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))


def _prepared(distance: Distance, vectors: np.ndarray) -> np.ndarray:
    """float32 rows as faiss sees them (unit length for cosine)."""
    matrix = torch.from_numpy(np.array(vectors, dtype=np.float32))  # a copy: memory maps are read-only
    return np.ascontiguousarray(distance.prepare(matrix).numpy(), dtype=np.float32)


def build_sharded_index(
    shards: str | Path,
    out: str | Path,
    kind: str = "ivfpq",
    distance: str = "cosine",
    nlist: int | None = None,
    m: int | None = None,
    nbits: int = 8,
    train_size: int | None = None,
    nprobe: int = 16,
    rerank: int = 0,
    storage: str = "ondisk",
    shards_per_part: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> ShardedIndex:
    """Build an index of the shard folder ``shards`` into the folder ``out`` and open it.

    ``nprobe`` and ``rerank`` are the search defaults stored with the index (both can be changed when
    it is opened). Building again into the same folder with the same settings resumes (or does nothing
    when it is complete); other settings are refused.
    """
    started = time.perf_counter()
    shard_set = ShardSet(shards)
    if kind not in index_kinds():
        raise ValueError(f"unknown index kind {kind!r}; choose one of {index_kinds()}")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    for name, value in (("nprobe", nprobe), ("shards_per_part", shards_per_part), ("nbits", nbits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be a non-negative integer, got {rerank!r}")
    binary = shard_set.plan.dtype == "bits"
    if (kind == "hamming") != binary:
        raise ValueError(
            f"kind {kind!r} needs {'packed code shards (dtype bits)' if kind == 'hamming' else 'float shards'}"
            f", but {shards} holds dtype {shard_set.plan.dtype}"
        )
    count = len(shard_set)
    nlist = nlist or default_nlist(count)
    if kind != "hamming" and not 1 <= nlist <= count:
        raise ValueError(f"nlist must be in 1..{count} (the number of vectors), got {nlist}")
    train_size = min(count, train_size or max(50 * nlist, 10_000))
    params = {
        "kind": kind,
        "distance": "hamming" if kind == "hamming" else get_distance(distance).name,
        "shards": str(Path(shards).resolve()),
        "count": count,
        "dim": shard_set.dim,
        "build": {}
        if kind == "hamming"
        else {
            "nlist": nlist,
            "m": (m or max(1, shard_set.dim // 8)) if kind == "ivfpq" else None,
            "nbits": nbits if kind == "ivfpq" else None,
            "train_size": train_size,
            "seed": seed,
            "storage": storage,
            "shards_per_part": shards_per_part,
        },
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "build.json"  # the settings of a build under way: a rerun must use the same ones
    if plan_file.exists() and json.loads(plan_file.read_text()) != params:
        raise ValueError(
            f"{out} holds an index built with other settings; choose another folder or delete it"
        )
    if not plan_file.exists():
        write_json(plan_file, params)
    record: dict[str, Any] = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, **params}
    record["search"] = {"nprobe": nprobe, "rerank": rerank}
    # where the shards are seen from the index: still found after both folders move together
    record["shards_relative"] = os.path.relpath(Path(shards).resolve(), out.resolve())
    if kind != "hamming":
        record.update(_build_faiss(shard_set, out, params, progress))
    record["built"] = {"seconds": round(time.perf_counter() - started, 3), "date": time.strftime("%FT%TZ")}
    write_json(out / INDEX_FILE, record)
    return ShardedIndex(out)


def _build_faiss(shard_set: ShardSet, out: Path, params: dict[str, Any], progress: bool) -> dict[str, Any]:
    faiss = _faiss()
    build, dim = params["build"], params["dim"]
    distance = get_distance(params["distance"])
    metric = faiss.METRIC_INNER_PRODUCT if distance.is_similarity else faiss.METRIC_L2
    if not (out / TRAINED).exists():
        rng = np.random.default_rng(build["seed"])
        sample = np.sort(rng.choice(len(shard_set), size=build["train_size"], replace=False))
        extra = {"m": build["m"], "nbits": build["nbits"]} if params["kind"] == "ivfpq" else {}
        index = SHARDED_INDEX_KINDS.lookup(params["kind"])(dim, metric, build["nlist"], **extra)
        index.train(_prepared(distance, shard_set.rows(sample)))
        _write_faiss(faiss, index, out / TRAINED)
    groups = [
        list(range(first, min(first + build["shards_per_part"], shard_set.num_shards)))
        for first in range(0, shard_set.num_shards, build["shards_per_part"])
    ]
    parts = [_part_name(p) for p in range(len(groups))]
    merged = build["storage"] == "ondisk" and (out / MERGED).exists()
    todo = [] if merged else [p for p in range(len(groups)) if not (out / parts[p]).exists()]
    for part in tqdm(todo, desc="index parts", unit="part", disable=not progress):
        index = faiss.read_index(str(out / TRAINED))
        for shard in groups[part]:
            vectors, first = shard_set.vectors(shard), int(shard_set.starts[shard])
            for start in range(0, len(vectors), _ADD_ROWS):
                chunk = _prepared(distance, vectors[start : start + _ADD_ROWS])
                index.add_with_ids(
                    chunk, np.arange(first + start, first + start + len(chunk), dtype=np.int64)
                )
        _write_faiss(faiss, index, out / parts[part])
        del index
    if build["storage"] == "ondisk" and not merged:
        from faiss.contrib.ondisk import merge_ondisk

        (out / LISTS).unlink(missing_ok=True)  # a merge killed half-way starts again
        index = faiss.read_index(str(out / TRAINED))
        merge_ondisk(index, [str(out / name) for name in parts], str(out / LISTS))
        _write_faiss(faiss, index, out / MERGED)
        os.chmod(out / LISTS, FILE_MODE)
        del index
        for name in parts:
            (out / name).unlink()
    files = [MERGED, LISTS] if build["storage"] == "ondisk" else parts
    return {
        "files": files,
        "bytes": sum((out / name).stat().st_size for name in files),
        "faiss": faiss.__version__,
    }


class ShardedIndex:
    """An index folder written by :func:`build_sharded_index`, opened memory-mapped.

    ``nprobe`` / ``rerank`` override the defaults stored with the index; ``memory_budget_mb`` bounds the
    rows gathered at once for re-ranking and the blocks of exact search.
    """

    def __init__(
        self,
        folder: str | Path,
        nprobe: int | None = None,
        rerank: int | None = None,
        memory_budget_mb: float = 256,
    ) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.folder} holds no finished sharded index ({INDEX_FILE} is missing)"
            )
        self.record = json.loads(path.read_text())
        if self.record.get("format") != INDEX_FORMAT or self.record.get("format_version") != INDEX_VERSION:
            raise ValueError(f"{path}: not a deepmetric sharded index of version {INDEX_VERSION}")
        self.kind = self.record["kind"]
        self.shards = ShardSet(self._shard_folder())
        if len(self.shards) != self.record["count"]:
            raise ValueError(
                f"{self.folder} indexes {self.record['count']} rows but its shards hold {len(self.shards)}"
            )
        self.nprobe = nprobe or self.record["search"]["nprobe"]
        self.rerank = self.record["search"]["rerank"] if rerank is None else rerank
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        self.memory_budget_mb = memory_budget_mb
        self.distance = None if self.kind == "hamming" else get_distance(self.record["distance"])
        self.indexes: list[Any] = []
        if self.kind != "hamming":
            faiss = _faiss()
            # the merged index maps its lists file itself (found beside it wherever the folder moved);
            # parts hold their lists inline, mapped with IO_FLAG_MMAP
            merged = self.record["build"]["storage"] == "ondisk"
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR if merged else faiss.IO_FLAG_MMAP
            for name in self.record["files"]:
                if name.endswith(".faiss"):
                    index = faiss.read_index(str(self.folder / name), flags)
                    index.nprobe = self.nprobe
                    self.indexes.append(index)

    def _shard_folder(self) -> Path:
        """The shards at the same place relative to the index as when it was built (both folders moved
        together), else where they were then (the index folder alone moved)."""
        relative = self.record.get("shards_relative")
        if relative is not None and (self.folder / relative / MANIFEST).is_file():
            return self.folder / relative
        return Path(self.record["shards"])

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def dim(self) -> int:
        return self.shards.dim

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, rows)``, each ``Q x k``: similarities for cosine/dot (largest first), distances
        otherwise (smallest first), Hamming distances for ``hamming``; rows ``-1`` where fewer than ``k``
        vectors were found (a probe of too few cells)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self):
            raise ValueError(f"k must be in 1..{len(self)} (the number of indexed vectors), got {k!r}")
        queries = np.asarray(queries)
        if self.kind == "hamming":
            return self._search_hamming(queries, k)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must be a 2-D array with {self.dim} columns, got shape {queries.shape}"
            )
        prepared = _prepared(self.distance, queries)
        if not np.isfinite(prepared).all():
            raise ValueError("queries contain NaN or infinite values")
        wanted = min(len(self), max(k, self.rerank))
        found = [index.search(prepared, wanted) for index in self.indexes]
        values = np.concatenate([v for v, _ in found], axis=1)
        rows = np.concatenate([i for _, i in found], axis=1)
        largest = self.distance.is_similarity
        values, rows = merge_topk(values, rows, wanted, largest)
        if self.rerank:
            return self._exact_order(prepared, rows, k)
        values, rows = values[:, :k], rows[:, :k]
        if type(self.distance) is EuclideanDistance:
            values = np.sqrt(np.maximum(values, 0))
        return np.where(rows < 0, -np.inf if largest else np.inf, values), rows

    def _exact_order(self, prepared: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank candidate ``rows`` with exact distances from the stored vectors (``prepared`` queries)."""
        largest = self.distance.is_similarity
        block = max(1, int(self.memory_budget_mb * 2**20 // (rows.shape[1] * self.dim * 4 * 2)))
        values_out, rows_out = [], []
        for start in range(0, len(rows), block):
            candidates = rows[start : start + block]
            valid = candidates >= 0
            gathered = torch.from_numpy(self.shards.rows(np.where(valid, candidates, 0)))  # a fresh array
            vectors = self.distance.prepare(gathered)
            query = torch.from_numpy(prepared[start : start + block])
            if largest:
                values = torch.bmm(vectors, query[:, :, None])[:, :, 0]
            else:
                values = ((vectors - query[:, None, :]) ** 2).sum(-1)
                if type(self.distance) is EuclideanDistance:
                    values = values.sqrt()
            values = values.numpy()
            values = np.where(valid, values, -np.inf if largest else np.inf)
            top_values, top_rows = merge_topk(values, candidates, k, largest)
            values_out.append(top_values)
            rows_out.append(top_rows)
        return np.concatenate(values_out), np.concatenate(rows_out)

    def _search_hamming(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from deepmetric.hashing.packing import pack_bits
        from deepmetric.hashing.search import hamming_knn

        width = self.shards.plan.row_width
        if queries.dtype != np.uint8:  # ±1 / {0, 1} / real codes: their sign bits
            if queries.ndim != 2 or queries.shape[1] != self.dim:
                raise ValueError(f"queries must be {self.dim}-bit codes, got shape {queries.shape}")
            queries = pack_bits(queries)
        if queries.ndim != 2 or queries.shape[1] != width:
            raise ValueError(f"packed queries must have {width} bytes per code, got shape {queries.shape}")
        values, rows = [], []
        for start, codes in self.shards:
            with warnings.catch_warnings():  # torch warns about read-only memory maps; they are only read
                warnings.simplefilter("ignore", UserWarning)
                distances, indices = hamming_knn(queries, codes, min(k, len(codes)))
            values.append(distances)
            rows.append(indices + start)
        return merge_topk(np.concatenate(values, 1), np.concatenate(rows, 1), k, largest=False)

    @property
    def distance_name(self) -> str:
        return self.record["distance"]

    @property
    def own_distance(self) -> str | None:
        """``hamming`` when :meth:`search` reports Hamming distances, None for the float distance's units
        (like :attr:`deepmetric.retrieval.SearchBackend.own_distance`)."""
        return "hamming" if self.kind == "hamming" else None

    @property
    def model_fingerprint(self) -> str | None:
        """The fingerprint of the model that embedded the shards (None when they do not record it)."""
        return self.shards.plan.source.get("fingerprint")

    @property
    def info(self) -> dict[str, Any]:
        return self.record.setdefault("info", {})

    def search_results(self, queries: np.ndarray, k: int) -> SearchResult:
        """:meth:`search` (``k`` capped at the size) with the hits named like
        :meth:`deepmetric.retrieval.Index.search_results`: ids are the image paths when the shards record
        them (else the stored ids as text), labels the class names when recorded (else the label values)."""
        values, rows = self.search(queries, min(k, len(self)))
        stored = self.ids_of(rows)
        paths, names = self.shards.paths, self.shards.class_names
        ids = [
            [None if i < 0 else paths[i] if paths is not None else str(i) for i in row.tolist()]
            for row in stored
        ]
        labels = None
        if self.shards.plan.labels:
            labels = [
                [None if r < 0 else names[label] if names else label for r, label in zip(row_rows, row)]
                for row_rows, row in zip(rows.tolist(), self.labels_of(rows).tolist())
            ]
        return SearchResult(values, rows, ids, labels)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored ids of ``rows`` (-1 stays -1)."""
        return np.where(rows >= 0, self.shards.ids_of(np.maximum(rows, 0)), -1)

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, self.shards.labels_of(np.maximum(rows, 0)), -1)


def exact_search(
    shards: ShardSet,
    queries: np.ndarray,
    k: int,
    distance: str | Distance = "cosine",
    memory_budget_mb: float = 256,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN over float shards, shard by shard (:func:`deepmetric.retrieval.knn.knn` on ``device``, a
    GPU when given), merged by (value, row): the ground truth for the approximate kinds."""
    distance = get_distance(distance)
    if shards.plan.dtype == "bits":
        raise ValueError(f"{shards.directory} holds packed binary codes; search them with a hamming index")
    if not 1 <= k <= len(shards):
        raise ValueError(f"k must be in 1..{len(shards)}, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    step = max(k, int(memory_budget_mb * 2**20 // (shards.dim * 4)))  # float32 rows converted at once
    best_values = np.empty((len(queries), 0), dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    for first, vectors in shards:
        for start in range(0, len(vectors), step):
            chunk = np.array(vectors[start : start + step], dtype=np.float32)  # a writable copy for torch
            kk = min(k, len(chunk))
            values, indices = knn(
                queries, kk, chunk, distance, memory_budget_mb=memory_budget_mb, device=device
            )
            best_values, best_rows = merge_topk(
                np.concatenate([best_values, values.numpy()], 1),
                np.concatenate([best_rows, indices.numpy() + first + start], 1),
                k,
                distance.is_similarity,
            )
    return best_values, best_rows
