"""The ``hamming`` search backend: exact Hamming search over the binary codes of the stored vectors.

Each vector becomes a code of ``dim`` bits, bit ``j`` = ``vector[j] > 0`` (the sign of a hash network's
relaxed code; ±1 and {0, 1} codes keep their bits), packed ``dim / 8`` bytes per item
(:func:`deepmetric.hashing.pack_bits`) and searched exactly by :class:`deepmetric.hashing.HammingIndex`
(native k-NN kernel on the CPU, torch on CUDA). Distances are Hamming distances (as float32), ties go to
the lower index as in the other exact backends. The index's ``distance`` plays no part in the search.

    index = Index.build(codes, labels, backend="hamming")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepmetric.distances import Distance
from deepmetric.hashing import HammingIndex
from deepmetric.hashing.search import DEFAULT_MEMORY_BUDGET
from deepmetric.retrieval.backends import SEARCH_BACKENDS, SearchBackend


@SEARCH_BACKENDS.register("hamming")
class HammingBackend(SearchBackend):
    """Codes kept packed on ``device``; ``memory_budget`` (bytes) bounds one search chunk's working memory."""

    name = "hamming"
    own_distance = "hamming"

    def __init__(
        self, dim: int, distance: Distance, device: str = "cpu", memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        super().__init__(dim, distance)
        self.device = device
        self.memory_budget = memory_budget
        self.codes = HammingIndex(dim, device, memory_budget)

    def add(self, vectors: np.ndarray) -> None:
        self.codes.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = self.codes.search(queries, k)
        return distances.astype(np.float32), indices

    def params(self) -> dict[str, Any]:
        return {"device": self.device, "memory_budget": self.memory_budget}
