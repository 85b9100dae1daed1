"""Binary-code search backends with one interface, for a retrieval index that stores hash codes.

``backend.add(codes)`` (real, ±1 or {0,1} codes, or already packed uint8 with ``packed=True``),
``backend.search(query_codes, k) -> (distances, indices)`` (``Q x k`` int64, sorted by distance) and
``backend.range_search(query_codes, radius) -> (lims, distances, indices)``, ``len(backend)``, ``bits``.

- :class:`HammingIndex`: exact, numpy/torch (CPU or CUDA), ties broken by the lower database index.
- :class:`FaissBinaryIndex`: faiss' ``IndexBinaryFlat`` (exact), ``IndexBinaryHNSW`` or ``IndexBinaryIVF``
  (approximate), when faiss is installed. faiss orders equal distances as its heaps leave them, so among
  ties the indices can differ from :class:`HammingIndex`; the distances agree for the exact flat index.
"""

from __future__ import annotations

import numpy as np
import torch

from deepmetric.hashing.packing import ArrayLike, check_packed, num_bytes, pack_bits
from deepmetric.hashing.search import DEFAULT_MEMORY_BUDGET, hamming_knn, hamming_radius_search


class _BinaryIndexBase:
    def __init__(self, bits: int) -> None:
        if not bits >= 1:
            raise ValueError(f"bits must be positive, got {bits}")
        self.bits = bits

    def _packed(self, codes: ArrayLike, packed: bool, name: str) -> ArrayLike:
        if packed:
            check_packed(codes, name)
            result = codes
        else:
            if codes.ndim != 2 or codes.shape[1] != self.bits:
                raise ValueError(f"{name} must be N x {self.bits} codes, got shape {tuple(codes.shape)}")
            result = pack_bits(codes)
        if result.shape[1] != num_bytes(self.bits):
            raise ValueError(
                f"{name} have {result.shape[1]} bytes per code; {self.bits} bits need {num_bytes(self.bits)}"
            )
        return result


class HammingIndex(_BinaryIndexBase):
    """Exact Hamming search over codes kept packed (``bits / 8`` bytes per item) on ``device``."""

    def __init__(
        self, bits: int, device: str | torch.device = "cpu", memory_budget: int = DEFAULT_MEMORY_BUDGET
    ):
        super().__init__(bits)
        self.device = torch.device(device)
        self.memory_budget = memory_budget
        self.codes = torch.empty(0, num_bytes(bits), dtype=torch.uint8, device=self.device)

    def __len__(self) -> int:
        return self.codes.shape[0]

    def _to_device(self, packed: ArrayLike) -> torch.Tensor:
        return torch.as_tensor(packed).to(self.device)

    def add(self, codes: ArrayLike, packed: bool = False) -> None:
        self.codes = torch.cat([self.codes, self._to_device(self._packed(codes, packed, "codes"))])

    def search(self, query_codes: ArrayLike, k: int, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise ValueError("the index is empty: add codes before searching")
        query = self._to_device(self._packed(query_codes, packed, "query_codes"))
        distances, indices = hamming_knn(query, self.codes, min(k, len(self)), self.memory_budget)
        return distances.cpu().numpy(), indices.cpu().numpy()

    def range_search(
        self, query_codes: ArrayLike, radius: int, packed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise ValueError("the index is empty: add codes before searching")
        query = self._to_device(self._packed(query_codes, packed, "query_codes"))
        lims, distances, indices = hamming_radius_search(query, self.codes, radius, self.memory_budget)
        return lims.cpu().numpy(), distances.cpu().numpy(), indices.cpu().numpy()


FAISS_KINDS = ("flat", "hnsw", "ivf")


class FaissBinaryIndex(_BinaryIndexBase):
    """faiss binary index: ``kind`` ``flat`` (exact), ``hnsw`` (``hnsw_neighbors`` links per node) or ``ivf``
    (``nlist`` Hamming k-means cells, ``nprobe`` searched; needs :meth:`add` to train on the first batch)."""

    def __init__(
        self, bits: int, kind: str = "flat", hnsw_neighbors: int = 16, nlist: int = 256, nprobe: int = 8
    ):
        super().__init__(bits)
        try:
            import faiss
        except ImportError:
            raise ValueError(
                "FaissBinaryIndex needs faiss (pip install faiss-cpu); use HammingIndex instead"
            ) from None
        if bits % 8:
            raise ValueError(f"faiss binary indexes need a multiple of 8 bits, got {bits}")
        if kind == "flat":
            self.index = faiss.IndexBinaryFlat(bits)
        elif kind == "hnsw":
            self.index = faiss.IndexBinaryHNSW(bits, hnsw_neighbors)
        elif kind == "ivf":
            self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
            self.index.nprobe = nprobe
        else:
            raise ValueError(f"unknown faiss binary index kind {kind!r}; choose one of {list(FAISS_KINDS)}")
        self.kind = kind

    def __len__(self) -> int:
        return self.index.ntotal

    def _numpy(self, codes: ArrayLike, packed: bool, name: str) -> np.ndarray:
        result = self._packed(codes, packed, name)
        return np.ascontiguousarray(result.cpu().numpy() if torch.is_tensor(result) else result)

    def add(self, codes: ArrayLike, packed: bool = False) -> None:
        data = self._numpy(codes, packed, "codes")
        if not self.index.is_trained:
            self.index.train(data)
        self.index.add(data)

    def search(self, query_codes: ArrayLike, k: int, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise ValueError("the index is empty: add codes before searching")
        distances, indices = self.index.search(
            self._numpy(query_codes, packed, "query_codes"), min(k, len(self))
        )
        return distances.astype(np.int64), indices.astype(np.int64)

    def range_search(
        self, query_codes: ArrayLike, radius: int, packed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.kind != "flat":
            raise ValueError(f"range search is supported by the flat faiss index only, not {self.kind!r}")
        # faiss' binary range search keeps distances strictly below its threshold
        lims, distances, indices = self.index.range_search(
            self._numpy(query_codes, packed, "query_codes"), radius + 1
        )
        lims, distances, indices = lims.astype(np.int64), distances.astype(np.int64), indices.astype(np.int64)
        query_ids = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
        order = np.lexsort(
            (indices, distances, query_ids)
        )  # (distance, index) within each query, as HammingIndex
        return lims, distances[order], indices[order]
