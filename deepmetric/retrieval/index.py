"""A searchable collection of embeddings with their labels and ids (image paths, product ids, ...).

>>> index = Index.build(gallery_embeddings, labels=gallery_labels, ids=gallery_paths, distance="cosine")
>>> distances, indices = index.search(query_embeddings, k=10)
>>> index.ids_of(indices), index.labels_of(indices)
>>> index.remove(["img_3.jpg"])
>>> index.save("my_index"); index = Index.load("my_index")

On disk an index is a directory: ``vectors.npy`` (N x D float32), ``labels.npy`` when labels were given,
``metadata.json`` (format version, distance, backend and its parameters, dimension, ids, the
fingerprint of the model that made the vectors, free-form ``info`` such as a calibrated threshold) and
whatever the search backend writes (``faiss.index`` for the faiss backends). How vectors are searched is
the backend's business (:mod:`deepmetric.retrieval.backends`), so new kinds of search plug in by name.
Saving is atomic: the directory is written beside its target and renamed into place, so a reader never
sees half an index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.checks import check_embeddings
from deepmetric.distances import get_distance
from deepmetric.io import FILE_MODE
from deepmetric.retrieval.backends import SEARCH_BACKENDS, SearchBackend

FORMAT_VERSION = 1
VECTORS_FILE, LABELS_FILE, METADATA_FILE = "vectors.npy", "labels.npy", "metadata.json"


def _as_matrix(embeddings: Any, name: str) -> np.ndarray:
    array = embeddings.detach().cpu().numpy() if torch.is_tensor(embeddings) else np.asarray(embeddings)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    check_embeddings(array, name)
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class SearchResult:
    """``distances``/``indices`` (``num_queries x k``, closest first; index -1 marks an empty slot) and the
    ids and labels of the hits (None in empty slots; labels None when the index has none)."""

    distances: np.ndarray
    indices: np.ndarray
    ids: list[list[str | None]]
    labels: list[list[Any]] | None


class Index:
    """Embeddings + labels + ids, searched by a pluggable backend (``torch``, ``faiss_flat``, ...)."""

    def __init__(
        self, dim: int, distance: str = "cosine", backend: str = "torch", **backend_params: Any
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.distance_name = get_distance(distance).name
        self.backend_name = backend
        self.backend: SearchBackend = SEARCH_BACKENDS.build(
            backend, dim=dim, distance=get_distance(distance), **backend_params
        )
        self._vectors: list[np.ndarray] = []
        self.ids: list[str] = []
        self._labels: list[np.ndarray] | None = None
        # which model embedded the vectors (None: unknown); queries from another model are meaningless
        self.model_fingerprint: str | None = None
        self.info: dict[str, Any] = {}  # JSON-serialisable extras kept with the index (e.g. a threshold)

    @classmethod
    def build(
        cls,
        embeddings: Any,
        labels: Any = None,
        ids: Sequence[Any] | None = None,
        distance: str = "cosine",
        backend: str = "torch",
        **backend_params: Any,
    ) -> Index:
        """An index of ``embeddings`` (``N x D``) with ``labels`` and ``ids`` (default: positions)."""
        matrix = _as_matrix(embeddings, "embeddings")
        index = cls(matrix.shape[1], distance, backend, **backend_params)
        index.add(matrix, labels, ids)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> np.ndarray:
        if len(self._vectors) > 1:
            self._vectors = [np.concatenate(self._vectors)]
        return self._vectors[0] if self._vectors else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def labels(self) -> np.ndarray | None:
        if self._labels is None:
            return None
        if len(self._labels) > 1:
            self._labels = [np.concatenate(self._labels)]
        return self._labels[0]

    def add(self, embeddings: Any, labels: Any = None, ids: Sequence[Any] | None = None) -> None:
        """Append embeddings; labels must be given for all additions or none; ids default to positions."""
        matrix = _as_matrix(embeddings, "embeddings")
        if matrix.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {matrix.shape[1]} but the index has {self.dim}")
        if labels is not None:
            labels = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
            if len(labels) != len(matrix):
                raise ValueError(f"labels has {len(labels)} entries but embeddings has {len(matrix)} rows")
        if len(self) and (labels is None) != (self._labels is None):
            raise ValueError("labels must be given for every addition to an index, or for none")
        if ids is None:
            ids = [str(i) for i in range(len(self), len(self) + len(matrix))]
        ids = [str(i) for i in ids]
        if len(ids) != len(matrix):
            raise ValueError(f"ids has {len(ids)} entries but embeddings has {len(matrix)} rows")
        self.backend.add(matrix)
        self._vectors.append(matrix)
        self.ids.extend(ids)
        if labels is not None:
            self._labels = [*(self._labels or []), labels]

    def remove(self, ids: Sequence[Any]) -> int:
        """Remove the items with these ``ids`` (every one must be present) and return how many went.

        The backend is rebuilt from the remaining vectors (faiss IVF re-trains its cells on them)."""
        wanted = {str(i) for i in ids}
        missing = wanted.difference(self.ids)
        if missing:
            raise ValueError(f"cannot remove ids not in the index: {sorted(missing)[:5]}")
        keep = np.asarray([i not in wanted for i in self.ids], dtype=bool)
        vectors, labels = self.vectors[keep], None if self._labels is None else self.labels[keep]
        self.backend = SEARCH_BACKENDS.build(
            self.backend_name,
            dim=self.dim,
            distance=get_distance(self.distance_name),
            **self.backend.params(),
        )
        if len(vectors):
            self.backend.add(vectors)
        self._vectors = [vectors] if len(vectors) else []
        self.ids = [i for i, kept in zip(self.ids, keep) if kept]
        if labels is not None:
            self._labels = [labels]
        return int((~keep).sum())

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)``, each ``num_queries x k``, closest first (a single vector works too)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not len(self):
            raise ValueError("the index is empty; add embeddings before searching")
        matrix = _as_matrix(queries[None] if np.ndim(queries) == 1 else queries, "queries")
        if matrix.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {matrix.shape[1]} but the index has {self.dim}")
        distances, indices = self.backend.search(matrix, min(k, len(self)))
        return distances, indices.astype(np.int64)

    def search_results(self, queries: Any, k: int) -> SearchResult:
        """:meth:`search` plus the ids and labels of the hits."""
        distances, indices = self.search(queries, k)
        labels = None if self._labels is None else self.labels_of(indices)
        return SearchResult(distances, indices, self.ids_of(indices), labels)

    def ids_of(self, indices: np.ndarray) -> list[list[str | None]]:
        return [[self.ids[i] if i >= 0 else None for i in row] for row in np.atleast_2d(indices)]

    def labels_of(self, indices: np.ndarray) -> list[list[Any]]:
        if self._labels is None:
            raise ValueError("this index was built without labels")
        labels = self.labels
        return [[labels[i].tolist() if i >= 0 else None for i in row] for row in np.atleast_2d(indices)]

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` (replacing an index there) atomically and return its path."""
        directory = Path(directory)
        if directory.exists() and not (directory / METADATA_FILE).exists() and any(directory.iterdir()):
            raise FileExistsError(f"{directory} exists and is not an index; refusing to replace it")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._write(staging)
            for path in staging.iterdir():
                path.chmod(FILE_MODE)
            staging.chmod(0o755)
            if directory.exists():
                # two renames: the old index stays whole until the new one is complete
                retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
                os.replace(directory, retired / "index")
                os.replace(staging, directory)
                shutil.rmtree(retired)
            else:
                os.replace(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def _write(self, directory: Path) -> None:
        np.save(directory / VECTORS_FILE, self.vectors)
        if self._labels is not None:
            np.save(directory / LABELS_FILE, self.labels, allow_pickle=False)
        metadata = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "distance": self.distance_name,
            "backend": self.backend_name,
            "backend_params": self.backend.params(),
            "count": len(self),
            "ids": self.ids,
            "model_fingerprint": self.model_fingerprint,
            "info": self.info,
        }
        (directory / METADATA_FILE).write_text(json.dumps(metadata))
        self.backend.save(directory)

    @classmethod
    def load(cls, directory: str | Path, model_fingerprint: str | None = None) -> Index:
        """Read an index written by :meth:`save`; with ``model_fingerprint``, refuse an index whose
        vectors another model made (its distances to this model's queries would mean nothing)."""
        directory = Path(directory)
        if not (directory / METADATA_FILE).exists():
            raise ValueError(f"{directory} holds no index ({METADATA_FILE} is missing)")
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{directory / METADATA_FILE} is not valid JSON: {error}") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{directory / METADATA_FILE}: expected a JSON object")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: unsupported index format {metadata.get('format_version')!r}")
        missing = [
            key
            for key in ("dim", "distance", "backend", "backend_params", "count", "ids")
            if key not in metadata
        ]
        if missing:
            raise ValueError(f"{directory / METADATA_FILE} lacks {missing}")
        stored = metadata.get("model_fingerprint")
        if model_fingerprint is not None and stored is not None and stored != model_fingerprint:
            raise ValueError(
                f"{directory} was built with another model (fingerprint {stored}, this model's is "
                f"{model_fingerprint}); rebuild the index with this model"
            )
        index = cls(metadata["dim"], metadata["distance"], metadata["backend"], **metadata["backend_params"])
        index.model_fingerprint, index.info = stored, dict(metadata.get("info", {}))
        if not (directory / VECTORS_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} holds no {VECTORS_FILE}: the index was not saved completely"
            )
        try:
            vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"cannot read {directory / VECTORS_FILE}: {error}") from None
        if vectors.shape != (metadata["count"], metadata["dim"]) or len(metadata["ids"]) != metadata["count"]:
            raise ValueError(f"{directory}: vectors, ids and metadata disagree on the index size")
        index.backend.load(directory, vectors)
        index._vectors = [vectors] if len(vectors) else []
        index.ids = list(metadata["ids"])
        if (directory / LABELS_FILE).exists():
            index._labels = [np.load(directory / LABELS_FILE, allow_pickle=False)]
        return index
