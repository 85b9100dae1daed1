"""Search backends of :class:`deepmetric.retrieval.Index`: how stored vectors are searched.

A backend receives every vector the index stores (``add``) and answers ``search(queries, k)`` with
``(values, indices)`` arrays, closest first, ``-1`` for empty slots. It may write extra files on ``save``
and read them back in ``load``. New backends (e.g. Hamming search over binary hash codes) register
themselves in :data:`SEARCH_BACKENDS` and are picked by name: ``Index(..., backend="name")``.

* ``torch``: exact, chunked search in torch against the gallery prepared once (CPU or GPU, ties by index).
* ``faiss_flat``: exact faiss search; ``faiss_ivf``: inverted lists (``nlist``, ``nprobe``), trained on
  the first vectors added; ``faiss_hnsw``: HNSW graph (``m``, ``ef_search``). The faiss backends need
  ``faiss`` installed and support ``cosine``, ``dot``, ``euclidean`` and ``squared_euclidean``.
* ``hamming``: exact Hamming search over the vectors' binary codes (:mod:`deepmetric.retrieval.hamming`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.distances import CosineSimilarity, Distance, EuclideanDistance, get_distance
from deepmetric.registry import Registry
from deepmetric.retrieval.knn import knn, resolve_device, to_reported_values, topk_deterministic

SEARCH_BACKENDS = Registry("search backend")


class SearchBackend:
    """The contract. ``params()`` returns the constructor keywords, stored in the index metadata."""

    name: str = ""
    # The distance the backend's values are in when it is not the index's (e.g. "hamming"), else None.
    own_distance: str | None = None

    def __init__(self, dim: int, distance: Distance) -> None:
        self.dim = dim
        self.distance = distance

    def add(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def save(self, directory: Path) -> None:
        """Write backend-specific files (the index's vectors are already saved by the Index)."""

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        """Restore the state saved by :meth:`save`; by default rebuild it from the stored vectors."""
        if len(vectors):
            self.add(vectors)


@SEARCH_BACKENDS.register("torch")
class TorchBackend(SearchBackend):
    """Exact search in torch, chunked within ``memory_budget_mb``; ``device`` default CUDA when available.

    The gallery is prepared once when added (normalised for cosine, squared norms kept for Euclidean), so
    a search costs one matrix product against it: one query at a time stays cheap on large galleries."""

    name = "torch"
    batch_queries = 64  # from this many queries on, search through retrieval.knn

    def __init__(
        self, dim: int, distance: Distance, device: str | None = None, memory_budget_mb: float = 512
    ) -> None:
        super().__init__(dim, distance)
        self.device = device
        self.memory_budget_mb = memory_budget_mb
        self._gallery: torch.Tensor | None = None
        self._squared_norms: torch.Tensor | None = None  # 1 x N, for the Euclidean distances

    def _prepare(self, vectors: np.ndarray, name: str) -> torch.Tensor:
        tensor = self.distance.prepare(torch.from_numpy(vectors).to(resolve_device(self.device)))
        if not bool(torch.isfinite((tensor * tensor).sum(1)).all()):
            raise ValueError(f"{name} are too large: their squared norms overflow float32")
        return tensor

    def add(self, vectors: np.ndarray) -> None:
        prepared = self._prepare(vectors, "embeddings")
        self._gallery = prepared if self._gallery is None else torch.cat([self._gallery, prepared])
        if not self.distance.is_similarity:
            self._squared_norms = (self._gallery * self._gallery).sum(1)[None]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        gallery, largest = self._gallery, self.distance.is_similarity
        query = self._prepare(queries, "queries")
        if len(query) >= self.batch_queries:
            # many queries: knn's streaming selection wins, and its checks of the gallery are amortised
            # (prepared vectors: cosine is the dot product of the normalised ones)
            distance = get_distance("dot") if type(self.distance) is CosineSimilarity else self.distance
            values, indices = knn(
                query, k, gallery, distance, memory_budget_mb=self.memory_budget_mb, device=self.device
            )
            return values.numpy(), indices.numpy()
        # score matrix + top-k work space per query row: about three floats per gallery item
        rows = max(1, int(self.memory_budget_mb * 2**20) // (12 * len(gallery)))
        all_values, all_indices = [], []
        for start in range(0, len(query), rows):
            block = query[start : start + rows]
            if largest:
                scores = block @ gallery.T
            else:  # squared Euclidean distances: rank by them, report the distance's own values
                norms = (block * block).sum(1, keepdim=True)
                scores = torch.addmm(norms + self._squared_norms, block, gallery.T, alpha=-2).clamp_min(0)
            values, indices = topk_deterministic(scores, k, largest)
            all_values.append(to_reported_values(values, self.distance).cpu())
            all_indices.append(indices.cpu())
        return torch.cat(all_values).numpy(), torch.cat(all_indices).numpy()

    def params(self) -> dict[str, Any]:
        return {"device": self.device, "memory_budget_mb": self.memory_budget_mb}


class FaissBackend(SearchBackend):
    """Shared faiss plumbing: metric choice, normalisation for cosine, deterministic order of results."""

    index_file = "faiss.index"

    def __init__(self, dim: int, distance: Distance) -> None:
        super().__init__(dim, distance)
        try:
            import faiss
        except ImportError:
            raise ValueError(f"backend {self.name!r} needs faiss (pip install faiss-cpu)") from None
        self.faiss = faiss
        self.metric = faiss.METRIC_INNER_PRODUCT if distance.is_similarity else faiss.METRIC_L2
        self.index = None

    def _make_index(self, vectors: np.ndarray) -> Any:
        raise NotImplementedError

    def _configure(self, index: Any) -> Any:
        """Apply search-time settings (faiss files do not keep all of them)."""
        return index

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        prepared = self.distance.prepare(torch.from_numpy(vectors)).numpy()
        return np.ascontiguousarray(prepared, dtype=np.float32)

    def add(self, vectors: np.ndarray) -> None:
        prepared = self._prepare(vectors)
        if self.index is None:
            self.index = self._configure(self._make_index(prepared))
        self.index.add(prepared)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, indices = self.index.search(self._prepare(queries), k)
        worst = -np.inf if self.distance.is_similarity else np.inf
        values = np.where(indices < 0, worst, values)
        if type(self.distance) is EuclideanDistance:
            values = np.sqrt(np.maximum(values, 0))
        # faiss orders ties arbitrarily: order by value, then by index (empty slots last)
        sort_key = np.where(indices < 0, np.iinfo(np.int64).max, indices)
        by_index = np.argsort(sort_key, axis=1, kind="stable")
        values, indices = np.take_along_axis(values, by_index, 1), np.take_along_axis(indices, by_index, 1)
        by_value = np.argsort(-values if self.distance.is_similarity else values, axis=1, kind="stable")
        return np.take_along_axis(values, by_value, 1), np.take_along_axis(indices, by_value, 1)

    def save(self, directory: Path) -> None:
        if self.index is not None:
            self.faiss.write_index(self.index, str(directory / self.index_file))

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        path = directory / self.index_file
        if path.exists():
            self.index = self._configure(self.faiss.read_index(str(path)))
        elif len(vectors):
            self.add(vectors)


@SEARCH_BACKENDS.register("faiss_flat")
class FaissFlatBackend(FaissBackend):
    name = "faiss_flat"

    def _make_index(self, vectors: np.ndarray) -> Any:
        return self.faiss.IndexFlat(self.dim, self.metric)


@SEARCH_BACKENDS.register("faiss_ivf")
class FaissIVFBackend(FaissBackend):
    """Inverted file index: ``nlist`` k-means cells (at most one per vector), ``nprobe`` cells searched."""

    name = "faiss_ivf"

    def __init__(self, dim: int, distance: Distance, nlist: int = 100, nprobe: int = 10) -> None:
        super().__init__(dim, distance)
        self.nlist, self.nprobe = nlist, nprobe

    def _make_index(self, vectors: np.ndarray) -> Any:
        quantizer = self.faiss.IndexFlat(self.dim, self.metric)
        index = self.faiss.IndexIVFFlat(quantizer, self.dim, min(self.nlist, len(vectors)), self.metric)
        index.train(vectors)
        return index

    def _configure(self, index: Any) -> Any:
        index.nprobe = self.nprobe
        return index

    def params(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}


@SEARCH_BACKENDS.register("faiss_hnsw")
class FaissHNSWBackend(FaissBackend):
    """HNSW graph: ``m`` links per node, ``ef_search`` candidates explored per query."""

    name = "faiss_hnsw"

    def __init__(self, dim: int, distance: Distance, m: int = 32, ef_search: int = 64) -> None:
        super().__init__(dim, distance)
        self.m, self.ef_search = m, ef_search

    def _make_index(self, vectors: np.ndarray) -> Any:
        return self.faiss.IndexHNSWFlat(self.dim, self.m, self.metric)

    def _configure(self, index: Any) -> Any:
        index.hnsw.efSearch = self.ef_search
        return index

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "ef_search": self.ef_search}
