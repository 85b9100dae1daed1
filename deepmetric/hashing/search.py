"""Exact Hamming search over packed codes: distances, k nearest neighbours, radius search.

All functions take packed uint8 codes (:func:`deepmetric.hashing.packing.pack_bits`) as numpy arrays or
torch tensors (CPU or CUDA) and answer in the same kind. Distances are XOR + popcount over 64-bit words.

CPU (numpy arrays and CPU tensors), k-NN: the native kernel (:mod:`deepmetric.native`, compiled on first
use). With AVX2 it is a fast scan: the database, in cache-sized tiles, is transposed into nibbles, and
each pair of queries gets 4-bit lookup tables of popcount(query nibble ^ v), so one byte shuffle adds one
nibble's distance for 32 codes and both queries; each query keeps its candidates under a running bound
(one comparison per pair). Other CPUs: XOR + popcount per code. Radius search runs the same scan
twice: once to count each query's codes within the radius, once to fill arrays of that size. The queries
are split over ``torch.get_num_threads()`` threads. Without a C compiler the numpy kernel below runs
instead (same results).

numpy kernel: the queries are split into blocks that ``torch.get_num_threads()``
worker threads scan in parallel (numpy releases the GIL). A block meets the database in slices of about
2^17 pairs, so the XOR buffer (8 bytes a pair) stays in L2: one XOR and one hardware popcount (numpy's
``bitwise_count``) per 64-bit word, into uint8 distances. Selection never sorts distances: they are small
integers, so each query keeps a threshold ``t`` (its k-th smallest distance so far) and a slice only yields
the pairs with distance ``<= t``, as int64 keys ``(row, distance, index)``. When candidates pile up, a
per-query histogram of their distances gives the new k-th distance and drops the rest (a counting
selection); one sort of the few survivors orders them at the end. This is exact: a final neighbour is
never farther than any running k-th distance.

Other devices (CUDA): the database is scanned in chunks sized from ``memory_budget`` with a branch-free
bit-twiddling popcount on int64 (SWAR); after each chunk every query keeps its best ``k`` (a sort of
candidate keys, which GPUs do fast) and its k-th distance bounds the candidates of later chunks.

Ties: results are ordered by (distance, database index), so among equally distant codes the lower index
comes first, on every device and for every chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from deepmetric import native
from deepmetric.hashing.packing import ArrayLike, as_words64, check_packed

DEFAULT_MEMORY_BUDGET = 64 * 2**20
_SLICE_PAIRS = 2**17  # pairs per CPU slice: a 1 MiB XOR buffer, resident in L2
_QUERY_BLOCK = 32  # queries per CPU block: the database streams through cache once per block
_PRUNE_FACTOR = 4  # a CPU block re-selects its candidates once they exceed this many times k per query
_FIRST_CHUNK = 4096
_TARGET_CHUNK = 65536  # device path: few, large chunks (every chunk re-sorts the k kept per query)

_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def popcount64(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 word (SWAR: pairs, nibbles, bytes, then one multiply sums the bytes)."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


# ---------------------------------------------------------------------------------------------- CPU (numpy)


def _distance_dtype(words: int) -> type:
    return np.uint8 if 64 * words <= 255 else np.uint16


class _SliceDistances:
    """Distances of one query block to database slices, in buffers reused from slice to slice."""

    def __init__(self, query: np.ndarray, database_t: np.ndarray, width: int) -> None:
        self.query, self.database_t = query, database_t  # database_t: words x N, each word contiguous
        pairs = query.shape[0] * width
        self.xor = np.empty(pairs, dtype=np.uint64)
        self.total = np.empty(pairs, dtype=_distance_dtype(query.shape[1]))
        self.count = np.empty(pairs, dtype=np.uint8) if query.shape[1] > 1 else None

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """``rows x (stop - start)`` distances (contiguous views of the flat buffers)."""
        shape = (self.query.shape[0], stop - start)
        size = shape[0] * shape[1]
        xor, total = self.xor[:size].reshape(shape), self.total[:size].reshape(shape)
        for w in range(self.query.shape[1]):
            np.bitwise_xor(self.query[:, w, None], self.database_t[w, None, start:stop], out=xor)
            if w == 0:
                np.bitwise_count(xor, out=total)
            else:
                count = self.count[:size].reshape(shape)
                np.bitwise_count(xor, out=count)
                total += count
        return total


def _candidates(dist: np.ndarray, limit: np.ndarray, start: int, levels: int, num_db: int) -> np.ndarray:
    """Keys ``(row * levels + distance) * num_db + index`` of the entries with ``dist <= limit`` per row."""
    flat = np.flatnonzero(dist <= limit[:, None])  # 1-D nonzero is ~10x faster than numpy's 2-D one
    rows, cols = np.divmod(flat, dist.shape[1])
    return (rows * levels + dist.ravel()[flat]) * num_db + (cols + start)


def _select(keys: np.ndarray, rows: int, k: int, levels: int, num_db: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each row's keys up to its k-th smallest distance (ties kept); also return that distance."""
    row_level = keys // num_db
    histogram = np.bincount(row_level, minlength=rows * levels).reshape(rows, levels)
    kth = (np.cumsum(histogram, axis=1) >= k).argmax(axis=1)  # first distance whose count reaches k
    keep = row_level % levels <= kth[row_level // levels]
    return keys[keep], kth


def _scan_block(
    query: np.ndarray, database_t: np.ndarray, width: int, k: int | None, radius: int | None
) -> np.ndarray:
    """Sorted keys of a query block's k nearest codes (``k``) or of all codes within ``radius``."""
    rows, num_db = query.shape[0], database_t.shape[1]
    levels = 64 * query.shape[1] + 1
    distances = _SliceDistances(query, database_t, width)
    dtype = distances.total.dtype
    limit = np.full(rows, levels - 1 if radius is None else min(radius, levels - 1), dtype=dtype)
    found, pending, bounded = [], 0, radius is not None
    for start in range(0, num_db, width):
        dist = distances(start, min(start + width, num_db))
        if not bounded and dist.shape[1] >= k:  # a slice of >= k codes: its k-th distance bounds the answer
            limit = np.partition(dist, k - 1, axis=1)[:, k - 1].copy()
            bounded = True
        found.append(_candidates(dist, limit, start, levels, num_db))
        pending += len(found[-1])
        if k is not None and pending > _PRUNE_FACTOR * k * rows and start + dist.shape[1] >= k:
            keys, kth = _select(np.concatenate(found), rows, k, levels, num_db)
            found, pending, limit, bounded = [keys], len(keys), kth.astype(dtype), True
    keys = np.concatenate(found)
    if k is None:
        return np.sort(keys)
    keys = np.sort(_select(keys, rows, k, levels, num_db)[0])
    counts = np.bincount(keys // (levels * num_db), minlength=rows)
    first = np.cumsum(counts) - counts
    return keys[first[:, None] + np.arange(k)]  # every row holds >= k keys: all of its codes were seen


def _scan_numpy(
    query: np.ndarray,
    database: np.ndarray,
    memory_budget: int,
    k: int | None = None,
    radius: int | None = None,
) -> list[tuple[int, np.ndarray]]:
    """``(first query, keys)`` of each query block (:func:`_scan_block`), on ``torch.get_num_threads()``
    threads, in query order."""
    workers = max(1, torch.get_num_threads())
    block = max(1, min(_QUERY_BLOCK, -(-query.shape[0] // workers)))
    bytes_per_pair = 8 + 1 + np.dtype(_distance_dtype(query.shape[1])).itemsize  # XOR, count, total
    pairs = max(1, min(_SLICE_PAIRS, memory_budget // (bytes_per_pair * workers)))
    width = max(1, pairs // block)
    database_t = np.ascontiguousarray(database.T)

    def scan(q_start: int) -> np.ndarray:
        return _scan_block(query[q_start : q_start + block], database_t, width, k, radius)

    starts = range(0, query.shape[0], block)
    if workers == 1 or len(starts) == 1:
        return [(s, scan(s)) for s in starts]
    with ThreadPoolExecutor(min(workers, len(starts))) as pool:
        return list(zip(starts, pool.map(scan, starts)))


def _knn_numpy(
    query: np.ndarray, database: np.ndarray, k: int, memory_budget: int
) -> tuple[np.ndarray, np.ndarray]:
    if native.available():
        return native.hamming_knn(np.ascontiguousarray(query), np.ascontiguousarray(database), k)
    levels, num_db = 64 * query.shape[1] + 1, database.shape[0]
    blocks = _scan_numpy(query, database, memory_budget, k=k)
    within = np.concatenate([keys for _, keys in blocks]) % (levels * num_db)
    return within // num_db, within % num_db


def _radius_numpy(
    query: np.ndarray, database: np.ndarray, radius: int, memory_budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if native.available():
        return native.hamming_radius(np.ascontiguousarray(query), np.ascontiguousarray(database), radius)
    levels, num_db = 64 * query.shape[1] + 1, database.shape[0]
    blocks = _scan_numpy(query, database, memory_budget, radius=radius)
    rows = np.concatenate([keys // (levels * num_db) + q_start for q_start, keys in blocks])
    within = np.concatenate([keys for _, keys in blocks]) % (levels * num_db)
    lims = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=query.shape[0]))])
    return lims, within // num_db, within % num_db


def _pairwise_hamming_numpy(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """The full ``len(query) x len(database)`` distance matrix (uint8, or uint16 beyond 255 bits)."""
    num_db = database.shape[0]
    width = min(num_db, max(1, _SLICE_PAIRS // query.shape[0]))
    distances = _SliceDistances(query, np.ascontiguousarray(database.T), width)
    total = np.empty((query.shape[0], num_db), dtype=distances.total.dtype)
    for start in range(0, num_db, width):
        total[:, start : start + width] = distances(start, min(start + width, num_db))
    return total


# ------------------------------------------------------------------------------------ other devices (torch)


def _pairwise_hamming_swar(query_words: torch.Tensor, db_words: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(query_words.shape[0], db_words.shape[0], dtype=torch.int16, device=query_words.device)
    for w in range(query_words.shape[1]):
        total += popcount64(query_words[:, None, w] ^ db_words[None, :, w]).to(torch.int16)
    return total


def _within(dist: torch.Tensor, limit: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and distances of the entries with ``dist <= limit`` (a per-row column or a number)."""
    rows, cols = (dist <= limit).nonzero(as_tuple=True)
    return rows, cols, dist[rows, cols].long()


def _block_sizes(num_queries: int, words: int, memory_budget: int) -> tuple[int, int]:
    """(queries per block, database codes per chunk): a chunk costs 8 bytes per word per pair plus ~4."""
    bytes_per_pair = 8 * words + 4
    query_block = max(1, min(num_queries, 1024, memory_budget // (bytes_per_pair * _TARGET_CHUNK)))
    chunk = max(1, memory_budget // (bytes_per_pair * query_block))
    return query_block, chunk


def _knn_torch(
    query: torch.Tensor, database: torch.Tensor, k: int, memory_budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Device k-NN over int64 words (runs on any device; used where numpy cannot go)."""
    num_db = database.shape[0]
    query_block, max_chunk = _block_sizes(query.shape[0], query.shape[1], memory_budget)
    max_chunk = max(max_chunk, k)
    span = (64 * query.shape[1] + 1) * num_db  # composite key: row * span + distance * num_db + index
    distances, indices = [], []
    for q_start in range(0, query.shape[0], query_block):
        block = query[q_start : q_start + query_block]
        rows_in_block = block.shape[0]
        best = torch.empty(0, dtype=torch.int64, device=query.device)  # sorted composite keys, k per row
        start, chunk = 0, max(k, min(_FIRST_CHUNK, max_chunk))
        while start < num_db:
            dist = _pairwise_hamming_swar(block, database[start : start + chunk])
            if start == 0:  # the first chunk holds >= k codes: its k-th distance bounds the answer
                threshold = torch.kthvalue(dist.int(), k, dim=1, keepdim=True).values.long()
            rows, cols, values = _within(dist, threshold)
            keys = rows * span + values * num_db + (cols + start)
            merged, _ = torch.sort(torch.cat([best, keys]))
            merged_rows = merged // span
            counts = torch.bincount(merged_rows, minlength=rows_in_block)
            rank = (
                torch.arange(len(merged), device=query.device)
                - (torch.cumsum(counts, 0) - counts)[merged_rows]
            )
            best = merged[rank < k]
            threshold = ((best.view(rows_in_block, k)[:, -1:] % span) // num_db).clone()
            start += chunk
            chunk = min(2 * chunk, max_chunk)
        within = best.view(rows_in_block, k) % span
        distances.append(within // num_db)
        indices.append(within % num_db)
    return torch.cat(distances), torch.cat(indices)


def _radius_torch(
    query: torch.Tensor, database: torch.Tensor, radius: int, memory_budget: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_db = database.shape[0]
    query_block, chunk = _block_sizes(query.shape[0], query.shape[1], memory_budget)
    span = (64 * query.shape[1] + 1) * num_db
    found = []
    for q_start in range(0, query.shape[0], query_block):
        block = query[q_start : q_start + query_block]
        for start in range(0, num_db, chunk):
            dist = _pairwise_hamming_swar(block, database[start : start + chunk])
            rows, cols, values = _within(dist, radius)
            found.append((rows + q_start) * span + values * num_db + (cols + start))
    keys, _ = torch.sort(torch.cat(found))
    counts = torch.bincount(keys // span, minlength=query.shape[0])
    lims = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    within = keys % span
    return lims, within // num_db, within % num_db


# -------------------------------------------------------------------------------------------- public API


def _as_torch(packed: ArrayLike, name: str) -> tuple[torch.Tensor, bool]:
    check_packed(packed, name)
    if torch.is_tensor(packed):
        return packed, True
    return torch.from_numpy(np.ascontiguousarray(packed)), False


def _check_pair(
    query_packed: ArrayLike, database_packed: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    query, query_is_torch = _as_torch(query_packed, "query_packed")
    database, db_is_torch = _as_torch(database_packed, "database_packed")
    if query_is_torch != db_is_torch:
        raise ValueError("query_packed and database_packed must both be numpy arrays or both torch tensors")
    if query.shape[1] != database.shape[1]:
        raise ValueError(
            f"query codes have {query.shape[1]} bytes but database codes have {database.shape[1]}; "
            "pack both with the same number of bits"
        )
    if query.device != database.device:
        raise ValueError(f"query codes are on {query.device} but database codes on {database.device}")
    if database.shape[0] == 0 or query.shape[0] == 0:
        raise ValueError("database_packed is empty" if database.shape[0] == 0 else "query_packed is empty")
    return as_words64(query), as_words64(database), query_is_torch


def _check_budget(memory_budget: int) -> None:
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")


def _dispatch(
    query: torch.Tensor, database: torch.Tensor, as_torch: bool, numpy_fn: Callable, torch_fn: Callable, *args
) -> tuple[ArrayLike, ...]:
    """Run the numpy kernel on CPU (words as uint64) or the torch one elsewhere; answer in the input's kind."""
    if query.device.type == "cpu":
        as_uint64 = (t.numpy().view(np.uint64) for t in (query, database))
        results = tuple(r.astype(np.int64, copy=False) for r in numpy_fn(*as_uint64, *args))
        return tuple(torch.from_numpy(r) for r in results) if as_torch else results
    results = torch_fn(query, database, *args)
    return results if as_torch else tuple(r.cpu().numpy() for r in results)


def hamming_distances(query_packed: ArrayLike, database_packed: ArrayLike) -> ArrayLike:
    """The full ``Q x N`` int64 Hamming distance matrix (small sets; :func:`hamming_knn` for large ones)."""
    query, database, as_torch = _check_pair(query_packed, database_packed)
    return _dispatch(
        query,
        database,
        as_torch,
        lambda q, d: (_pairwise_hamming_numpy(q, d),),
        lambda q, d: (_pairwise_hamming_swar(q, d).long(),),
    )[0]


def hamming_knn(
    query_packed: ArrayLike, database_packed: ArrayLike, k: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> tuple[ArrayLike, ArrayLike]:
    """Exact ``k`` nearest database codes of each query: ``(distances, indices)``, both ``Q x k`` int64.

    Sorted by (distance, index) per query; ``memory_budget`` (bytes) bounds the working set.
    """
    query, database, as_torch = _check_pair(query_packed, database_packed)
    if not 0 < k <= database.shape[0]:
        raise ValueError(f"k must be in 1..{database.shape[0]} (the database size), got {k}")
    _check_budget(memory_budget)
    return _dispatch(query, database, as_torch, _knn_numpy, _knn_torch, k, memory_budget)


def hamming_radius_search(
    query_packed: ArrayLike,
    database_packed: ArrayLike,
    radius: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """All database codes within Hamming ``radius`` of each query, as ``(lims, distances, indices)``.

    faiss' range-search layout: the results of query ``i`` are ``distances[lims[i]:lims[i+1]]`` and
    ``indices[lims[i]:lims[i+1]]``, sorted by (distance, index).
    """
    query, database, as_torch = _check_pair(query_packed, database_packed)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    _check_budget(memory_budget)
    return _dispatch(query, database, as_torch, _radius_numpy, _radius_torch, radius, memory_budget)
