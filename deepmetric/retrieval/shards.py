"""Embeddings stored as memory-mappable shards: galleries larger than memory, written by several processes.

A shard folder holds a fixed plan and the shards done so far::

    manifest.json                    plan: dim, dtype, total rows, shard size, where the rows came from
    shard-00000.vectors.npy          rows [0, S): float32 / float16 vectors, or packed uint8 codes ("bits")
    shard-00000.labels.npy           int64 labels (when the rows have labels)
    shard-00000.json                 written last: the shard is complete once this file exists
    paths.txt                        optional: the image file of each row, one a line

A row's id is its global row number (for embedded datasets: its position in the split), so no ids are
stored: 10^8 rows would spend 800 MB on them.

Shard ``i`` always holds rows ``[i * S, min((i + 1) * S, N))``, whoever writes it, so a folder written by
two processes is the one a single process writes, and a killed job resumes at its first shard without a
``.json``. Every file is written to a temporary name and renamed (atomic), mode 0644. Readers open the
arrays with ``mmap_mode="r"``: nothing is loaded until it is touched, and :meth:`ShardSet.rows` gathers
arbitrary rows (for exact re-ranking) by reading only their pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.io import atomic_write, write_json

FORMAT = "deepmetric-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PATHS = "paths.txt"
DTYPES = ("float32", "float16", "bits")  # bits: sign bits packed 8 per byte (hashing.packing layout)


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def write_paths(directory: Path, paths: list[str]) -> None:
    """``paths.txt``: line ``i`` names the file of id ``i``."""
    if any("\n" in path for path in paths):
        raise ValueError("file paths with line breaks cannot be recorded in paths.txt")
    atomic_write(directory / PATHS, lambda handle: handle.write("".join(f"{p}\n" for p in paths).encode()))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class Plan:
    """What a shard folder holds: ``count`` rows of ``dim`` values (``bits`` bits when dtype is bits)."""

    dim: int
    dtype: str
    count: int
    shard_size: int
    labels: bool
    source: dict[str, Any]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown shard dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("dim", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"a shard folder needs at least one row, got count={self.count!r}")

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    @property
    def row_width(self) -> int:
        """Stored values per row: ``dim`` floats, or ``ceil(dim / 8)`` bytes of packed bits."""
        return -(-self.dim // 8) if self.dtype == "bits" else self.dim

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.dtype == "bits" else self.dtype)

    def rows(self, shard: int) -> range:
        """The global rows of shard ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.count))

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "dtype": self.dtype,
            "count": self.count,
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "labels": self.labels,
            "source": self.source,
        }

    @classmethod
    def read(cls, directory: Path) -> Plan:
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no shards ({MANIFEST} is missing)")
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a deepmetric shard manifest of version {FORMAT_VERSION}")
        return cls(
            data["dim"], data["dtype"], data["count"], data["shard_size"], data["labels"], data["source"]
        )


class ShardWriter:
    """Writes the shards of one :class:`Plan`; several processes may write different shards of a folder.

    Opening a folder that already has a manifest continues it (resume) when the plan is the same and
    refuses otherwise, so a job is never mixed with the rows of another one.
    """

    def __init__(self, directory: str | Path, plan: Plan, create: bool = True) -> None:
        self.directory = Path(directory)
        self.plan = plan
        manifest = self.directory / MANIFEST
        if manifest.exists():
            found = Plan.read(self.directory)
            if found != plan:
                raise ValueError(
                    f"{self.directory} holds shards of another job ({_difference(found, plan)}); "
                    "choose another output folder or delete it"
                )
        elif create:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json(manifest, plan.as_json())
        else:
            raise FileNotFoundError(f"{self.directory} holds no shards ({MANIFEST} is missing)")

    def done(self, shard: int) -> bool:
        return (self.directory / f"{shard_name(shard)}.json").is_file()

    def pending(self) -> list[int]:
        """The shards not yet complete, in order."""
        return [shard for shard in range(self.plan.num_shards) if not self.done(shard)]

    def write(self, shard: int, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        """Store shard ``shard``: its arrays first, then its ``.json`` that marks it complete."""
        plan, rows = self.plan, self.plan.rows(shard)
        expected = (len(rows), plan.row_width)
        if vectors.shape != expected:
            raise ValueError(
                f"shard {shard} must hold {expected[0]} x {expected[1]} values, got {vectors.shape}"
            )
        if (labels is not None) != plan.labels:
            raise ValueError(
                f"shard {shard}: the plan says labels={plan.labels} but labels {labels is not None}"
            )
        if plan.dtype != "bits" and not np.isfinite(vectors).all():
            raise ValueError(f"shard {shard} holds NaN or infinite values")
        base = self.directory / shard_name(shard)
        write_npy(base.with_name(base.name + ".vectors.npy"), np.ascontiguousarray(vectors, plan.numpy_dtype))
        if labels is not None:
            write_npy(base.with_name(base.name + ".labels.npy"), np.asarray(labels, dtype=np.int64))
        write_json(
            base.with_name(base.name + ".json"), {"shard": shard, "start": rows.start, "count": len(rows)}
        )


def _difference(found: Plan, wanted: Plan) -> str:
    fields = ("dim", "dtype", "count", "shard_size", "labels", "source")
    changed = [name for name in fields if getattr(found, name) != getattr(wanted, name)]
    return ", ".join(
        f"{name} {getattr(found, name)!r} there, {getattr(wanted, name)!r} now" for name in changed
    )


class ShardSet:
    """A complete shard folder, read through memory maps."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.plan = Plan.read(self.directory)
        missing = ShardWriter(self.directory, self.plan, create=False).pending()
        if missing:
            raise ValueError(
                f"{self.directory}: {len(missing)} of {self.plan.num_shards} shards are unfinished "
                f"(first: {shard_name(missing[0])}); run the embedding again to resume it"
            )
        self.starts = np.array([self.plan.rows(s).start for s in range(self.plan.num_shards)], dtype=np.int64)

    def __len__(self) -> int:
        return self.plan.count

    @property
    def num_shards(self) -> int:
        return self.plan.num_shards

    @property
    def dim(self) -> int:
        return self.plan.dim

    def _array(self, shard: int, kind: str) -> np.ndarray:
        """A fresh map each time: pages read through it leave this process's memory (RSS) with it,
        while the kernel's page cache keeps them for the next reader."""
        path = self.directory / f"{shard_name(shard)}.{kind}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"shard file missing: {path}")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = len(self.plan.rows(shard))
        if len(array) != rows or (kind == "vectors" and array.shape[1:] != (self.plan.row_width,)):
            raise ValueError(f"{path} has shape {array.shape}, the manifest says {rows} rows")
        return array

    def vectors(self, shard: int) -> np.ndarray:
        """Shard ``shard``'s vectors (packed codes for dtype bits), memory-mapped and read-only."""
        return self._array(shard, "vectors")

    def labels(self, shard: int) -> np.ndarray | None:
        return self._array(shard, "labels") if self.plan.labels else None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first global row, vectors)`` of every shard, in order."""
        for shard in range(self.num_shards):
            yield int(self.starts[shard]), self.vectors(shard)

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"rows must be in 0..{len(self) - 1}")
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return shard, rows - self.starts[shard]

    def _gather(self, rows: np.ndarray, read: Callable[[int], np.ndarray], dtype: np.dtype) -> np.ndarray:
        flat = np.asarray(rows, dtype=np.int64).ravel()
        shard, within = self._locate(flat)
        first = read(0)
        out = np.empty((len(flat), *first.shape[1:]), dtype=dtype)
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            order = np.argsort(within[where], kind="stable")  # ascending offsets: sequential page reads
            out[where[order]] = read(int(s))[within[where][order]]
        return out.reshape(*np.shape(rows), *first.shape[1:])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of global ``rows`` (any shape), as float32 (packed uint8 for dtype bits)."""
        dtype = np.uint8 if self.plan.dtype == "bits" else np.float32
        return self._gather(rows, self.vectors, dtype)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """The ids of global ``rows``: the rows themselves (positions in the embedded split), checked."""
        rows = np.asarray(rows, dtype=np.int64)
        self._locate(rows.ravel())  # refuses rows out of range
        return rows.copy()

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        if not self.plan.labels:
            raise ValueError(f"{self.directory} was written without labels")
        return self._gather(rows, self.labels, np.int64)

    @property
    def class_names(self) -> list[str] | None:
        """Names of the label values (``class_names[label]``), when the embedded dataset had them."""
        return self.plan.source.get("class_names")

    @cached_property
    def paths(self) -> list[str] | None:
        """The file of each id (``paths.txt``), or None when the rows did not come from files."""
        path = self.directory / PATHS
        return path.read_text().splitlines() if path.is_file() else None

    def all_labels(self) -> np.ndarray | None:
        """Every label in row order (8 bytes a row), or None without labels."""
        if not self.plan.labels:
            return None
        return np.concatenate([self.labels(s) for s in range(self.num_shards)])


def write_arrays(
    directory: str | Path,
    chunks: Iterator[tuple[np.ndarray, np.ndarray | None]],
    count: int,
    dim: int,
    shard_size: int,
    dtype: str = "float32",
    source: dict[str, Any] | None = None,
) -> ShardSet:
    """Shards from ``chunks`` of ``(vectors, labels)`` whose lengths are the shard sizes of the plan
    (``shard_size`` rows, the last one fewer); ids are the global row numbers. Shards already complete are
    skipped (their chunk is still drawn, so a generator stays in step)."""
    plan = None
    writer = None
    for shard, (vectors, labels) in enumerate(chunks):
        if writer is None:
            plan = Plan(dim, dtype, count, shard_size, labels is not None, source or {})
            writer = ShardWriter(directory, plan)
        if shard >= plan.num_shards:
            raise ValueError(f"more chunks than the {plan.num_shards} shards of {count} rows")
        if not writer.done(shard):
            writer.write(shard, vectors, labels)
    if writer is None:
        raise ValueError("no chunks to write")
    return ShardSet(directory)
