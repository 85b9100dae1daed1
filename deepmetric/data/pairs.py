"""Offline pairs and triplets: the Siamese / triplet network setting, where the tuples are drawn up front
instead of mined inside a P x K batch.

- :class:`PairDataset` wraps any dataset with ``.labels`` and yields ``(x1, x2, same)``: exactly half the
  pairs (rounded up) are positives (two different samples of one class), the rest negatives; in the
  trainer's batches of pairs the balance holds within every batch.
- :class:`TripletDataset` yields ``(anchor, positive, negative)``; every sample of a class with two or more
  samples serves as anchor in turn.
- Both redraw their tuples per epoch from ``(seed, epoch)`` (:meth:`set_epoch`), or keep one fixed draw
  (``fixed=True``, for evaluation).
- :class:`TupleBatchSampler` gives the trainer batches of ``B`` pairs or triplets as one list of dataset
  indices (all first members, then all second [, then all third] members), embedded in one forward
  pass; :func:`tuple_indices` turns such a batch into the pair 4-tuple or triplet 3-tuple that
  losses take as ``indices`` (``sampler.mode: pairs | triplets`` in a config).

Tuples are drawn vectorised: partners are picked by position in the class-sorted order of the samples,
so drawing costs ``O(number of tuples)`` whatever the number of classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from deepmetric.masks import PairIndices, TripletIndices

TUPLE_MEMBERS = {"pairs": 2, "triplets": 3}


class ClassIndex:
    """The samples grouped by class, to draw positive and negative partners of anchors."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"pairs and triplets need 1-D integer class labels, got {labels.dtype} {labels.shape}"
            )
        classes, self.inverse, self.counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"negatives need at least 2 classes, the labels hold {len(classes)}")
        if self.counts.max() < 2:
            raise ValueError("positives need a class with at least 2 samples; every class has one")
        self.size = len(labels)
        self.order = np.argsort(self.inverse, kind="stable")
        self.starts = np.cumsum(self.counts) - self.counts
        self.position = np.empty(self.size, dtype=np.int64)  # rank of each sample within its class
        self.position[self.order] = np.arange(self.size) - self.starts[self.inverse[self.order]]
        self.with_positives = np.flatnonzero(self.counts[self.inverse] >= 2)

    def positives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Another sample of each anchor's class, uniformly (anchors must be in ``with_positives``)."""
        cls = self.inverse[anchors]
        count = self.counts[cls]
        step = 1 + rng.integers(0, count - 1)  # 1 .. count-1: never the anchor itself
        return self.order[self.starts[cls] + (self.position[anchors] + step) % count]

    def negatives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A sample of another class for each anchor, uniformly over all such samples."""
        cls = self.inverse[anchors]
        slot = rng.integers(0, self.size - self.counts[cls])  # a slot among the other classes' samples
        slot = np.where(slot >= self.starts[cls], slot + self.counts[cls], slot)
        return self.order[slot]

    def anchors(self, pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` anchors cycling through shuffled passes over ``pool`` (each used about equally often)."""
        passes = [rng.permutation(pool) for _ in range(max(1, math.ceil(count / len(pool))))]
        return np.concatenate(passes)[:count]


def draw_pairs(
    index: ClassIndex, count: int, rng: np.random.Generator, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, same)``: ``count x 2`` sample indices and whether each pair is positive.

    Every run of ``batch_size`` consecutive pairs (default: all ``count``) holds exactly
    ``ceil(batch_size / 2)`` positives, in random order.
    """
    batch = count if batch_size is None else batch_size
    if count % batch:
        raise ValueError(f"count={count} is not a whole number of batches of {batch}")
    batches, num_positive = count // batch, (batch + 1) // 2
    first_p = index.anchors(index.with_positives, batches * num_positive, rng)
    first_n = index.anchors(np.arange(index.size), batches * (batch - num_positive), rng)
    positive = np.stack([first_p, index.positives(first_p, rng)], 1).reshape(batches, num_positive, 2)
    negative = np.stack([first_n, index.negatives(first_n, rng)], 1).reshape(batches, -1, 2)
    pairs = np.concatenate([positive, negative], axis=1)
    same = np.broadcast_to(np.arange(batch) < num_positive, (batches, batch))
    order = rng.permuted(np.broadcast_to(np.arange(batch), (batches, batch)), axis=1)
    pairs = np.take_along_axis(pairs, order[..., None], axis=1).reshape(count, 2)
    return pairs.astype(np.int64), np.take_along_axis(same, order, axis=1).reshape(count)


def draw_triplets(index: ClassIndex, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count x 3`` sample indices ``(anchor, positive, negative)``."""
    anchors = index.anchors(index.with_positives, count, rng)
    triplets = np.stack([anchors, index.positives(anchors, rng), index.negatives(anchors, rng)], 1)
    return triplets.astype(np.int64)


def _check_count(count: int | None, default: int, name: str) -> int:
    count = default if count is None else count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {count!r}")
    return int(count)


class _TupleDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, count: int | None, seed: int, fixed: bool, name: str) -> None:
        if not hasattr(dataset, "labels"):
            raise ValueError(f"{type(dataset).__name__} has no .labels to draw pairs and triplets from")
        self.dataset = dataset
        self.index = ClassIndex(dataset.labels)
        self.count = _check_count(count, len(dataset), name)
        self.seed = int(seed)
        self.fixed = fixed
        self.epoch = 0
        self._draw()

    def set_epoch(self, epoch: int) -> None:
        """Draw the tuples of ``epoch`` (nothing changes when ``fixed``)."""
        if not self.fixed and int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._draw()

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _draw(self) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.count

    def _input(self, index: int) -> Any:
        return self.dataset[int(index)][0]


class PairDataset(_TupleDataset):
    """``(x1, x2, same)`` pairs over ``dataset`` (``same`` is 1 for a positive pair, 0 for a negative).

    ``num_pairs`` defaults to ``len(dataset)``; ``pairs`` (``N x 2``) and ``same`` hold the current draw.
    """

    def __init__(
        self, dataset: Any, num_pairs: int | None = None, seed: int = 0, fixed: bool = False
    ) -> None:
        super().__init__(dataset, num_pairs, seed, fixed, "num_pairs")

    def _draw(self) -> None:
        self.pairs, self.same = draw_pairs(self.index, self.count, self._rng())

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        first, second = self.pairs[i]
        return self._input(first), self._input(second), int(self.same[i])


class TripletDataset(_TupleDataset):
    """``(anchor, positive, negative)`` triplets over ``dataset``; ``triplets`` (``N x 3``) holds the draw.

    ``num_triplets`` defaults to ``len(dataset)``.
    """

    def __init__(
        self, dataset: Any, num_triplets: int | None = None, seed: int = 0, fixed: bool = False
    ) -> None:
        super().__init__(dataset, num_triplets, seed, fixed, "num_triplets")

    def _draw(self) -> None:
        self.triplets = draw_triplets(self.index, self.count, self._rng())

    def __getitem__(self, i: int) -> tuple[Any, Any, Any]:
        return tuple(self._input(member) for member in self.triplets[i])


class TupleBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``tuples_per_batch`` random pairs or triplets, as flat lists of dataset indices.

    An epoch draws about one tuple per sample (rounded up to whole batches) from ``(seed, epoch)``. A
    batch lists every tuple's first member, then every second member (then every third): embed it in one
    pass and give the loss :func:`tuple_indices`. Under ``torch.distributed`` every rank draws the same
    epoch and takes every ``world_size``-th batch, as :class:`deepmetric.samplers.PKSampler` does.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        kind: str,
        tuples_per_batch: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if kind not in TUPLE_MEMBERS:
            raise ValueError(f"kind must be one of {list(TUPLE_MEMBERS)}, got {kind!r}")
        self.index = ClassIndex(labels)
        self.kind = kind
        self.tuples_per_batch = _check_count(tuples_per_batch, 0, "tuples_per_batch")
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 0
        batches = math.ceil(self.index.size / self.tuples_per_batch)
        self._batches_per_rank = math.ceil(batches / self.world_size)

    @property
    def batch_size(self) -> int:
        """Dataset indices per batch (of this rank)."""
        return self.tuples_per_batch * TUPLE_MEMBERS[self.kind]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        count = self._batches_per_rank * self.world_size * self.tuples_per_batch
        if self.kind == "pairs":
            tuples = draw_pairs(self.index, count, rng, batch_size=self.tuples_per_batch)[0]
        else:
            tuples = draw_triplets(self.index, count, rng)
        batches = tuples.reshape(-1, self.tuples_per_batch, TUPLE_MEMBERS[self.kind])
        for batch in batches[self.rank :: self.world_size]:
            yield batch.T.reshape(-1).tolist()


def tuple_indices(kind: str, labels: torch.Tensor, tuples_per_batch: int) -> PairIndices | TripletIndices:
    """The loss ``indices`` of batches laid out by :class:`TupleBatchSampler`.

    ``labels`` may hold several such batches one after the other (the global batch under
    torch.distributed). Pairs give ``(a_p, p, a_n, n)`` split by whether the two labels agree; triplets
    give ``(anchor, positive, negative)``.
    """
    members = TUPLE_MEMBERS.get(kind)
    if members is None:
        raise ValueError(f"kind must be one of {list(TUPLE_MEMBERS)}, got {kind!r}")
    block = members * tuples_per_batch
    if labels.ndim != 1 or labels.shape[0] % block:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} are not whole batches of {tuples_per_batch} {kind}"
        )
    layout = torch.arange(labels.shape[0], device=labels.device).reshape(-1, members, tuples_per_batch)
    columns = [layout[:, m].reshape(-1) for m in range(members)]
    if kind == "triplets":
        return columns[0], columns[1], columns[2]
    first, second = columns
    same = labels[first] == labels[second]
    return first[same], second[same], first[~same], second[~same]
