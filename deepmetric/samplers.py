"""P x K batch sampling: every batch holds ``P`` distinct classes with ``K`` samples each.

Metric-learning losses need positives and negatives inside each batch, so batches are built from whole
classes. Unlike PML's ``MPerClassSampler`` (which draws a fixed number of samples per class and so skips
some samples and classes every epoch, PML issue #684), :class:`PKSampler` covers the dataset: every
sample appears at least once per epoch.

How an epoch is built (a pure function of ``seed``, ``epoch`` and the labels):

1. Each class's indices are shuffled and cut into *chunks* of ``K``. A last, short chunk is completed with
   other samples of the same class (drawn without repetition), so a chunk never repeats a sample when the
   class has at least ``K`` samples. A class with fewer than ``K`` samples gives one chunk that repeats
   its samples as evenly as possible (a class of one sample gives ``K`` copies of it: with random
   augmentation these are different views of the same image).
2. Chunks are dealt into batches of ``P`` distinct classes. Each batch takes the classes that must go now
   to finish in the fewest batches (those with as many chunks left as batches left), then fills up with
   classes drawn at random, weighted by how many chunks they have left. This finishes in
   ``max(ceil(total_chunks / P), max chunks of one class)`` batches, the fewest possible.
3. A batch that could not get ``P`` classes (the last ones, or when one class dominates the dataset) is
   padded with chunks from other random classes; these are the only repeated samples besides step 1.
4. Under ``torch.distributed`` every rank builds the same list, pads it with extra random batches to a
   multiple of ``world_size`` and takes every ``world_size``-th batch starting at its rank, so ranks get
   disjoint batches and the same number of them.

A resumed run can skip the first ``n`` batches of an epoch and see exactly the data it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from deepmetric.data.pairs import TupleBatchSampler
from deepmetric.registry import Registry

# Batch samplers by name (``sampler.mode`` in a config): functions of the training labels, the settings they
# use among ``classes_per_batch``, ``samples_per_class``, ``tuples_per_batch``, and ``seed``.
SAMPLERS = Registry("sampler")


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Batch sampler yielding lists of ``classes_per_batch * samples_per_class`` dataset indices.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(labels, P, K, seed=seed))`` and call
    :meth:`set_epoch` before each epoch. ``rank`` and ``world_size`` default to the initialised
    ``torch.distributed`` process group (or a single process).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        labels_array = _as_label_array(labels)
        if isinstance(classes_per_batch, bool) or not isinstance(classes_per_batch, (int, np.integer)):
            raise ValueError(f"classes_per_batch must be an int, got {classes_per_batch!r}")
        if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, (int, np.integer)):
            raise ValueError(f"samples_per_class must be an int, got {samples_per_class!r}")
        if classes_per_batch < 2:
            raise ValueError(
                "classes_per_batch must be >= 2 (a batch of one class has no negatives), "
                f"got {classes_per_batch}"
            )
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")

        classes, inverse, counts = np.unique(labels_array, return_inverse=True, return_counts=True)
        if len(classes) < classes_per_batch:
            raise ValueError(
                f"the dataset has {len(classes)} classes, fewer than classes_per_batch={classes_per_batch}"
            )
        if counts.max() < 2:
            raise ValueError(
                "every class has a single sample, so no batch can contain a positive pair; "
                "metric learning needs at least one class with two or more samples"
            )

        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")

        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        # Dataset indices of each class, in index order (shuffling happens per epoch).
        order = np.argsort(inverse, kind="stable")
        self._class_indices = np.split(order, np.cumsum(counts)[:-1])
        self._chunks_per_class = np.maximum(1, -(-counts // self.samples_per_class))
        total_chunks = int(self._chunks_per_class.sum())
        self._batches_per_epoch = max(
            math.ceil(total_chunks / self.classes_per_batch), int(self._chunks_per_class.max())
        )

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self._batches_per_epoch / self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        for batch in batches[self.rank :: self.world_size]:
            yield batch.tolist()

    def _epoch_batches(self) -> list[np.ndarray]:
        """All ranks' batches of the current epoch, in the order they are dealt out."""
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = [self._class_chunks(members, rng) for members in self._class_indices]
        remaining = np.array([len(c) for c in chunks])
        taken = np.zeros_like(remaining)
        batches: list[np.ndarray] = []
        for batch_number in range(self._batches_per_epoch):
            batches_left = self._batches_per_epoch - batch_number
            chosen = self._choose_classes(remaining, batches_left, rng)
            parts = [chunks[c][taken[c]] for c in chosen]
            taken[chosen] += 1
            remaining[chosen] -= 1
            parts += self._padding(chosen, rng)
            batches.append(np.concatenate(parts))
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
        while len(batches) % self.world_size:
            batches.append(np.concatenate(self._padding(np.empty(0, dtype=np.int64), rng)))
        return batches

    def _class_chunks(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The class's samples, shuffled and cut into rows of ``K`` (see step 1 of the module docstring)."""
        k = self.samples_per_class
        shuffled = rng.permutation(members)
        if len(shuffled) < k:
            return self._fill(shuffled, rng)[None, :]
        short = len(shuffled) % k
        if short:
            # Complete the last chunk with samples of this class that are not already in it.
            others = shuffled[: len(shuffled) - short]
            shuffled = np.concatenate([shuffled, rng.choice(others, k - short, replace=False)])
        return shuffled.reshape(-1, k)

    def _fill(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``K`` samples of one class: distinct when it has enough, otherwise each repeated evenly."""
        k = self.samples_per_class
        if len(members) >= k:
            return rng.choice(members, k, replace=False)
        repeats = np.tile(rng.permutation(members), -(-k // len(members)))
        return rng.permutation(repeats[:k])

    def _choose_classes(
        self, remaining: np.ndarray, batches_left: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Up to ``P`` distinct classes with chunks left: the forced ones, then a weighted random draw."""
        available = np.flatnonzero(remaining)
        count = min(self.classes_per_batch, len(available))
        # Gumbel-top-k: sampling without replacement with probability proportional to chunks left.
        keys = np.log(remaining[available]) + rng.gumbel(size=len(available))
        # A class with a chunk for every batch left must be in every remaining batch.
        keys[remaining[available] >= batches_left] = np.inf
        top = np.argpartition(-keys, count - 1)[:count] if count < len(available) else np.arange(count)
        return available[np.sort(top)]

    def _padding(self, chosen: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Chunks of random classes not in ``chosen`` that complete a batch to ``P`` classes."""
        missing = self.classes_per_batch - len(chosen)
        if missing <= 0:
            return []
        candidates = np.setdiff1d(np.arange(len(self._class_indices)), chosen)
        extra = rng.choice(candidates, missing, replace=False)
        return [self._fill(self._class_indices[c], rng) for c in extra]


def _as_label_array(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Labels as a 1-D int64 array, refusing anything that is not a non-empty vector of integers."""
    array = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class ids, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("labels is empty")
    whole_floats = np.issubdtype(array.dtype, np.floating) and bool(np.all(np.mod(array, 1) == 0))
    if not np.issubdtype(array.dtype, np.integer) and not whole_floats:
        raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64)


@SAMPLERS.register("pk")
def pk_batches(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    classes_per_batch: int,
    samples_per_class: int,
    seed: int = 0,
) -> PKSampler:
    return PKSampler(labels, classes_per_batch, samples_per_class, seed=seed)


@SAMPLERS.register("pairs")
def pair_batches(
    labels: Sequence[int] | np.ndarray | torch.Tensor, tuples_per_batch: int, seed: int = 0
) -> TupleBatchSampler:
    """Random balanced pairs (:class:`deepmetric.data.pairs.TupleBatchSampler`)."""
    return TupleBatchSampler(labels, "pairs", tuples_per_batch, seed=seed)


@SAMPLERS.register("triplets")
def triplet_batches(
    labels: Sequence[int] | np.ndarray | torch.Tensor, tuples_per_batch: int, seed: int = 0
) -> TupleBatchSampler:
    """Random triplets (:class:`deepmetric.data.pairs.TupleBatchSampler`)."""
    return TupleBatchSampler(labels, "triplets", tuples_per_batch, seed=seed)
