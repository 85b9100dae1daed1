"""Native CPU kernels (``kernels.c``): the hot loops of exact k-nearest-neighbour search (and of k-means's
seeding and assignment).

Numpy and torch run a selection as several passes over memory (compare, gather, partition); the C
kernels do it in one pass with a per-query bound (see the comment at the top of ``kernels.c``), which is
what makes Hamming search and the evaluation engine's ranking fast on a CPU.

The source is compiled on first use with the system C compiler (``$CC``, else ``cc``), for this very CPU
(``-march=native``), into a cache folder (``$DEEPMETRIC_CACHE``, else ``~/.cache/deepmetric``) under a
name that hashes the source, the flags and the CPU's features, and loaded with ctypes; later runs load the
cached library. The build holds an exclusive file lock (``flock`` on ``kernels-<key>.lock`` next to the
library), so processes that start together (torchrun ranks, data-loader workers) compile it once: the
others wait for the lock and load the result. Without a compiler (or with ``DEEPMETRIC_NATIVE=0``) :func:`available` is False, a
warning says so once, and every caller falls back to its numpy/torch path, which gives the same results.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False

_int64, _ptr = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "dm_hamming_knn": [_ptr, _int64, _ptr, _int64, _int64, _int64, _ptr, _ptr],
    "dm_topk_rows": [_ptr, _int64, _int64, _int64, _int64, _int64, ctypes.c_float, _int64, _int64]
    + [_ptr] * 3,
    "dm_topk_columns": [_ptr, _int64, _int64, _int64, _int64, _int64, ctypes.c_float, _int64, _int64]
    + [_ptr] * 3,
    "dm_topk_finish": [_int64, _int64, ctypes.c_float, _int64, _int64, _ptr, _ptr, _ptr, _ptr],
    "dm_argmax_rows": [_ptr, _int64, _int64, _int64, _ptr, _ptr, _ptr],
    "dm_hamming_radius": [_ptr, _int64, _ptr, _int64, _int64, _int64, _ptr, _ptr, _ptr],
    "dm_kmeans_plus_plus": [_ptr, _ptr, _int64, _int64, _int64, _int64, _int64, _ptr, _ptr],
}
# The functions that allocate return 0, or -1 when memory ran out; the others return nothing.
# The Hamming kernels' candidates are distance << 40 | index (kernels.c, INDEX_BITS).
_HAMMING_INDEX_BITS = 40
_RESTYPES = {
    name: ctypes.c_int
    for name in (
        "dm_hamming_knn",
        "dm_hamming_radius",
        "dm_topk_rows",
        "dm_topk_columns",
        "dm_topk_finish",
        "dm_kmeans_plus_plus",
    )
}


def _cpu_features() -> str:
    """The CPU's feature flags (part of the cache key: a library built for one CPU may crash another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("DEEPMETRIC_CACHE", Path.home() / ".cache" / "deepmetric")) / "native"


def cache_dir() -> Path:
    """Where the compiled kernels are cached."""
    return _cache_dir()


def compiler() -> str | None:
    """The C compiler the kernels are built with (``$CC``, else ``cc``), or None when there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def _compile(compiler: str, flags: list[str]) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu_features()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not target.exists():  # built by the process that held the lock before this one
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                subprocess.run(
                    [compiler, *flags, str(_SOURCE), "-o", str(built), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                os.replace(built, target)  # atomic: a reader that skips the lock never sees half a file
    return target


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DEEPMETRIC_NATIVE", "1") == "0":
        return None
    cc = compiler()
    if cc is None:
        warnings.warn("deepmetric: no C compiler found; using the slower numpy/torch kernels", stacklevel=3)
        return None
    errors = []
    for flags in ([*_FLAGS, "-march=native"], _FLAGS):  # -march=native is refused by some compilers
        try:
            library = ctypes.CDLL(str(_compile(cc, flags)))
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(getattr(error, "stderr", None) or str(error))
            continue
        for name, argtypes in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, _RESTYPES.get(name)
        return library
    warnings.warn(
        "deepmetric: could not build the native kernels; using the slower numpy/torch kernels "
        f"({errors[-1].strip()[:500]})",
        stacklevel=3,
    )
    return None


def library() -> ctypes.CDLL | None:
    """The loaded kernels, compiled on the first call; None where they cannot be built."""
    global _library, _tried
    with _lock:
        if not _tried:
            _library, _tried = _load(), True
    return _library


def available() -> bool:
    return library() is not None


def _address(array: np.ndarray | torch.Tensor) -> int:
    return array.ctypes.data if isinstance(array, np.ndarray) else array.data_ptr()


def _threads(tasks: int) -> int:
    return max(1, min(torch.get_num_threads(), tasks))


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0  # a forked child (a DataLoader worker) inherits the pool object but none of its threads


def _run_spans(function: Callable[[tuple[int, int]], None], spans: list[tuple[int, int]]) -> None:
    """``function`` on every span, in parallel on one long-lived pool (ctypes releases the GIL); a pool
    per call would cost more than a small block's work."""
    global _pool, _pool_size, _pool_pid
    if len(spans) == 1:
        function(spans[0])
        return
    with _lock:
        if _pool_size < len(spans) or _pool_pid != os.getpid():
            _pool_size = max(len(spans), os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="deepmetric")
            _pool_pid = os.getpid()
        pool = _pool
    list(pool.map(function, spans))


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // parts)
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _check_hamming_size(database: np.ndarray) -> None:
    if database.shape[0] >= 1 << _HAMMING_INDEX_BITS:
        raise ValueError(f"the native Hamming kernel indexes at most 2^{_HAMMING_INDEX_BITS} codes")


def hamming_knn(query: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of uint64 codes (``Q x words`` and ``N x words``, C-contiguous): ``(distances, indices)``,
    int64 ``Q x k``, by (distance, index). Queries are split over ``torch.get_num_threads()`` threads."""
    lib = library()
    _check_hamming_size(database)
    distances = np.empty((query.shape[0], k), dtype=np.int64)
    indices = np.empty((query.shape[0], k), dtype=np.int64)
    words = query.shape[1]

    def run(span: tuple[int, int]) -> None:
        start, stop = span
        status = lib.dm_hamming_knn(
            _address(query[start:stop]),
            stop - start,
            _address(database),
            database.shape[0],
            words,
            k,
            _address(distances[start:stop]),
            _address(indices[start:stop]),
        )
        if status != 0:
            raise MemoryError("the native Hamming kernel could not allocate its buffers")

    _run_spans(run, _split(query.shape[0], _threads(query.shape[0])))
    return distances, indices


def hamming_radius(
    query: np.ndarray, database: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every code of ``database`` within Hamming ``radius`` of each query (uint64 codes, ``Q x words`` and
    ``N x words``, C-contiguous): ``(lims, distances, indices)`` in faiss's range-search layout, each
    query's results by (distance, index). Two scans: one counts, one fills the exact-sized arrays."""
    lib = library()
    _check_hamming_size(database)
    counts = np.zeros(query.shape[0], dtype=np.int64)
    spans = _split(query.shape[0], _threads(query.shape[0]))

    def scan(span: tuple[int, int], lims: np.ndarray | None = None, keys: np.ndarray | None = None) -> None:
        start, stop = span
        offsets = None if lims is None else np.ascontiguousarray(lims[start:stop] - lims[start])
        status = lib.dm_hamming_radius(
            _address(query[start:stop]), stop - start, _address(database), database.shape[0],
            query.shape[1], radius, None if offsets is None else _address(offsets),
            None if keys is None else _address(keys[lims[start] :]), _address(counts[start:stop]),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native Hamming kernel could not allocate its buffers")

    _run_spans(scan, spans)
    lims = np.concatenate([[0], np.cumsum(counts)])
    keys = np.empty(max(1, int(lims[-1])), dtype=np.uint64)  # one slot at least: a valid address
    _run_spans(lambda span: scan(span, lims, keys), spans)
    keys = keys[: lims[-1]]
    distances = (keys >> np.uint64(_HAMMING_INDEX_BITS)).astype(np.int64)
    return lims, distances, (keys & np.uint64((1 << _HAMMING_INDEX_BITS) - 1)).astype(np.int64)


def argmax_rows(block: torch.Tensor, second: bool = False) -> tuple[torch.Tensor, ...]:
    """``block.max(1)`` of a float32 CPU block with contiguous rows, in one vectorised pass per row:
    ``(values, indices)``, the first column among equal maxima; with ``second``, also each row's second
    largest value (the largest again where it occurs twice, ``-inf`` for a single column)."""
    if block.dtype != torch.float32 or block.device.type != "cpu" or block.stride(1) != 1:
        raise ValueError("argmax_rows takes a float32 CPU block with contiguous rows")
    rows, cols = block.shape
    values = torch.empty(rows, dtype=torch.float32)
    indices = torch.empty(rows, dtype=torch.int64)
    seconds = torch.empty(rows, dtype=torch.float32) if second else None

    def run(span: tuple[int, int]) -> None:
        start, stop = span
        library().dm_argmax_rows(
            block[start:stop].data_ptr(), stop - start, cols, block.stride(0),
            values[start:].data_ptr(), indices[start:].data_ptr(),
            None if seconds is None else seconds[start:].data_ptr(),
        )  # fmt: skip

    _run_spans(run, _split(rows, _threads(rows)))
    return (values, indices) if seconds is None else (values, indices, seconds)


def kmeans_plus_plus(
    points: torch.Tensor, norms: torch.Tensor, k: int, first: int, uniform: torch.Tensor
) -> torch.Tensor:
    """Greedy k-means++ of float32 CPU ``points`` (``n x d``) with their squared ``norms``, from the random
    draws ``first`` and ``uniform`` (``(k - 1) x trials`` float64), as
    :func:`deepmetric.evaluation.clustering.kmeans_plus_plus` does it with torch: the ``k`` chosen indices
    (int64). One thread: its steps are sequential, each a pass over the points."""
    if points.dtype != torch.float32 or points.device.type != "cpu" or points.dim() != 2:
        raise ValueError("kmeans_plus_plus takes float32 CPU points (n x d)")
    points, norms = points.contiguous(), norms.to(torch.float32).contiguous()
    uniform = uniform.to(torch.float64).contiguous()
    if uniform.shape[0] != k - 1 or not 0 <= first < len(points) or norms.shape != (len(points),):
        raise ValueError(
            "kmeans_plus_plus needs one norm per point, k - 1 rows of uniforms and a first point among the points"
        )
    chosen = torch.empty(k, dtype=torch.int64)
    status = library().dm_kmeans_plus_plus(
        points.data_ptr(), norms.data_ptr(), len(points), points.shape[1], k, uniform.shape[1], first,
        uniform.data_ptr(), chosen.data_ptr(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the native k-means++ kernel could not allocate its buffers")
    return chosen


class TopK:
    """Streaming exact top-k of many rows of float32 scores (CPU), fed block by block.

    ``offer_rows(block, index0, row0)``: row ``i`` of ``block`` brings candidates ``index0 + j`` (its
    columns) to row ``row0 + i``. ``offer_columns`` brings column ``j`` to row ``row0 + j`` with candidates
    ``index0 + i`` (the other half of a symmetric block). A row may receive its candidates in any order
    across calls (each candidate once). ``result()``: ``(values, indices)``, ``rows x k``, best first,
    ties by lower index; slots without a candidate hold the worst value (``-inf`` when ``largest``, else
    ``inf``) and index ``-1``. Scores of ``-inf``/``inf`` (excluded items) are never candidates.
    """

    def __init__(self, rows: int, k: int, largest: bool) -> None:
        self.lib = library()
        self.rows, self.k, self.sign = rows, k, 1.0 if largest else -1.0
        # k + 32 free slots between cuts: fewer cuts than k/2 + 16, a state still small enough for the cache
        self.cap = 2 * k + 32
        self.entries = np.empty(rows * self.cap * 8, dtype=np.uint8)  # C struct {float key; int32 index}
        self.count = np.zeros(rows, dtype=np.int64)
        self.bound = np.full(rows, np.finfo(np.float32).min, dtype=np.float32)  # every finite score enters

    def _offer(self, function, block: torch.Tensor, index0: int, row0: int, split_rows: bool) -> None:
        if block.dtype != torch.float32 or block.device.type != "cpu" or block.stride(1) != 1:
            raise ValueError("TopK takes float32 CPU blocks with contiguous rows")
        rows, cols = block.shape
        if index0 + (cols if split_rows else rows) > 2**31:
            raise ValueError("the native top-k indexes at most 2^31 candidates (int32 indices)")
        if row0 + (rows if split_rows else cols) > self.rows:
            raise ValueError(f"the block reaches past the {self.rows} rows of this TopK")
        ld = block.stride(0)
        # threads own disjoint state rows: split block rows (rows pass) or block columns (columns pass)
        spans = _split(rows if split_rows else cols, _threads(rows if split_rows else cols))

        def run(span: tuple[int, int]) -> None:
            start, stop = span
            if split_rows:
                pointer, r, c, first, state0 = (
                    block[start:stop].data_ptr(),
                    stop - start,
                    cols,
                    index0,
                    row0 + start,
                )
            else:
                pointer, r, c, first, state0 = (
                    block[:, start:stop].data_ptr(),
                    rows,
                    stop - start,
                    index0,
                    row0 + start,
                )
            status = function(
                pointer, r, c, ld, first, state0, self.sign, self.k, self.cap,
                self.entries.ctypes.data, self.count.ctypes.data, self.bound.ctypes.data,
            )  # fmt: skip
            if status != 0:
                raise MemoryError("the native top-k kernel could not allocate its scratch buffer")

        _run_spans(run, spans)

    def offer_rows(self, block: torch.Tensor, index0: int, row0: int) -> None:
        self._offer(self.lib.dm_topk_rows, block, index0, row0, split_rows=True)

    def offer_columns(self, block: torch.Tensor, index0: int, row0: int) -> None:
        self._offer(self.lib.dm_topk_columns, block, index0, row0, split_rows=False)

    def result(self, row0: int = 0, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k of state rows ``row0 .. row0 + rows`` (all rows by default)."""
        rows = self.rows - row0 if rows is None else rows
        values = torch.empty(rows, self.k, dtype=torch.float32)
        indices = torch.empty(rows, self.k, dtype=torch.int64)
        status = self.lib.dm_topk_finish(
            row0, rows, self.sign, self.k, self.cap,
            self.entries.ctypes.data, self.count.ctypes.data, values.data_ptr(), indices.data_ptr(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native top-k could not allocate its buffers")
        return values, indices
