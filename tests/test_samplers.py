from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from deepmetric.samplers import PKSampler


def uneven_labels(seed: int = 0, num_classes: int = 13) -> np.ndarray:
    """Classes of 1 to 11 samples, shuffled, so chunks, fills and padding all occur."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, size=num_classes)
    sizes[0] = 11
    labels = np.repeat(np.arange(num_classes) * 7 + 3, sizes)  # non-contiguous class ids
    return rng.permutation(labels)


def check_batch_structure(batch: list[int], labels: np.ndarray, p: int, k: int) -> None:
    assert len(batch) == p * k
    assert all(isinstance(i, int) for i in batch)
    per_class = Counter(labels[batch].tolist())
    assert len(per_class) == p
    assert set(per_class.values()) == {k}
    # Samples of a class repeat only when the class is smaller than K.
    for cls in per_class:
        members = [i for i in batch if labels[i] == cls]
        class_size = int((labels == cls).sum())
        assert len(set(members)) == min(k, class_size)


@pytest.mark.parametrize(("p", "k"), [(2, 2), (4, 3), (3, 4), (5, 1)])
def test_batches_have_p_classes_of_k_samples(p: int, k: int) -> None:
    labels = uneven_labels()
    sampler = PKSampler(labels, p, k, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        check_batch_structure(batch, labels, p, k)
    assert sampler.batch_size == p * k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_sample_is_seen_each_epoch(seed: int) -> None:
    labels = uneven_labels(seed)
    sampler = PKSampler(labels, 4, 3, seed=seed)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = {i for batch in sampler for i in batch}
        assert seen == set(range(len(labels)))


def test_divisible_dataset_is_a_permutation() -> None:
    # 12 classes x 6 samples, P=4, K=3: 24 chunks -> exactly 6 batches, no sample repeated.
    labels = np.repeat(np.arange(12), 6)
    sampler = PKSampler(labels, 4, 3, seed=5)
    indices = [i for batch in sampler for i in batch]
    assert len(sampler) == 6
    assert sorted(indices) == list(range(len(labels)))


def test_length_is_the_fewest_batches_possible() -> None:
    labels = uneven_labels()
    k, p = 3, 4
    chunks = [max(1, -(-c // k)) for c in Counter(labels.tolist()).values()]
    expected = max(-(-sum(chunks) // p), max(chunks))
    assert len(PKSampler(labels, p, k)) == expected
    # A dominating class needs one batch per chunk; small classes pad those batches.
    dominated = np.concatenate([np.zeros(30, dtype=int), np.arange(1, 4)])
    sampler = PKSampler(dominated, 2, 3)
    assert len(sampler) == 10
    batches = list(sampler)
    assert {i for b in batches for i in b} == set(range(len(dominated)))
    for batch in batches:
        check_batch_structure(batch, dominated, 2, 3)


def test_deterministic_under_seed_and_epoch() -> None:
    labels = uneven_labels()
    first = PKSampler(labels, 4, 3, seed=7)
    second = PKSampler(torch.as_tensor(labels), 4, 3, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    assert list(first) == list(first)  # iterating again replays the epoch


def test_epochs_and_seeds_differ() -> None:
    labels = uneven_labels()
    sampler = PKSampler(labels, 4, 3, seed=7)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    other_seed = PKSampler(labels, 4, 3, seed=8)
    assert list(other_seed) != epoch0


def test_resume_skipping_batches_gives_identical_data() -> None:
    labels = uneven_labels()
    sampler = PKSampler(labels, 4, 3, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = PKSampler(labels, 4, 3, seed=3)
    resumed.set_epoch(2)
    iterator = iter(resumed)
    for _ in range(3):
        next(iterator)
    assert list(iterator) == full[3:]


def test_batches_mix_classes_across_the_epoch() -> None:
    # With 20 equal classes, each class should meet many different classes over an epoch.
    labels = np.repeat(np.arange(20), 12)
    sampler = PKSampler(labels, 4, 3, seed=0)
    partners: dict[int, set[int]] = {c: set() for c in range(20)}
    for batch in sampler:
        classes = set(labels[batch].tolist())
        for c in classes:
            partners[c] |= classes - {c}
    assert min(len(p) for p in partners.values()) >= 6


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_batches_of_equal_count(world_size: int) -> None:
    labels = np.repeat(np.arange(12), 6)  # 6 batches in all: no padding for world_size 2 and 3
    samplers = [PKSampler(labels, 4, 3, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(s) for s in samplers]
    assert {len(b) for b in per_rank} == {len(samplers[0])} == {6 // world_size}
    per_rank_indices = [{i for b in batches for i in b} for batches in per_rank]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not per_rank_indices[a] & per_rank_indices[b]
    assert set().union(*per_rank_indices) == set(range(len(labels)))


def test_ranks_split_one_global_epoch_with_padding() -> None:
    labels = uneven_labels()
    single = PKSampler(labels, 4, 3, seed=4)
    global_batches = list(single)
    world_size = 4
    samplers = [PKSampler(labels, 4, 3, seed=4, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    assert len(samplers[0]) == -(-len(global_batches) // world_size)
    # Interleaving the ranks' batches gives the single-process epoch, then padding batches.
    interleaved = [per_rank[r][i] for i in range(len(per_rank[0])) for r in range(world_size)]
    assert interleaved[: len(global_batches)] == global_batches
    for batch in interleaved[len(global_batches) :]:
        check_batch_structure(batch, labels, 4, 3)


def test_distributed_defaults_read_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    sampler = PKSampler(np.repeat(np.arange(12), 6), 4, 3)
    assert (sampler.rank, sampler.world_size) == (2, 3)
    explicit = PKSampler(np.repeat(np.arange(12), 6), 4, 3, rank=0, world_size=1)
    assert (explicit.rank, explicit.world_size) == (0, 1)


def test_small_and_singleton_classes_are_filled_by_repetition() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    sampler = PKSampler(labels, 2, 4, seed=0)
    batches = list(sampler)
    assert {i for b in batches for i in b} == set(range(len(labels)))
    for batch in batches:
        check_batch_structure(batch, labels, 2, 4)
        counts = Counter(batch)
        # Within a small class, samples repeat evenly (class 3: 3 samples -> counts 2, 1, 1).
        for cls in set(labels[batch].tolist()):
            members = [counts[i] for i in set(batch) if labels[i] == cls]
            assert max(members) - min(members) <= 1


def test_works_with_a_dataloader() -> None:
    labels = uneven_labels()
    dataset = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    sampler = PKSampler(labels, 4, 2, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert all(len(idx) == 8 for idx, _ in batches)


@pytest.mark.parametrize(
    ("labels", "p", "k", "message"),
    [
        ([0, 0, 1, 1], 3, 2, "fewer than classes_per_batch"),
        ([0, 0, 1, 1], 2, 0, "samples_per_class must be >= 1"),
        ([0, 0, 1, 1], 1, 2, "classes_per_batch must be >= 2"),
        ([0, 1, 2, 3], 2, 2, "single sample"),
        ([], 2, 2, "empty"),
        ([[0, 1], [1, 0]], 2, 2, "1-D"),
        ([0.5, 1.0, 1.0, 0.5], 2, 2, "integer class ids"),
        ([0, 0, 1, 1], 2.0, 2, "classes_per_batch must be an int"),
    ],
)
def test_bad_arguments_are_refused(labels: list, p: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PKSampler(labels, p, k)


def test_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        PKSampler([0, 0, 1, 1], 2, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        PKSampler([0, 0, 1, 1], 2, 2, rank=0, world_size=0)
