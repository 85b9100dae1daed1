"""Offline pairs and triplets: label relations and balance of the datasets, the trainer's tuple batches and
their loss indices, and tiny pairs/triplets-mode runs on the built-in digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deepmetric.data import ArrayDataset
from deepmetric.data.pairs import PairDataset, TripletDataset, TupleBatchSampler, tuple_indices
from deepmetric.training import train
from deepmetric.training.config import ConfigError
from tests.demo_configs import TINY_RUN, demo_config


def tiny_config(*extra: str):
    return demo_config(*TINY_RUN, *extra)


def labelled(counts=(5, 3, 1, 4)) -> ArrayDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    return ArrayDataset(images, labels)


def test_pair_dataset_relations_balance_and_epochs():
    dataset = labelled()
    pairs = PairDataset(dataset, num_pairs=401, seed=1)
    first, second = pairs.pairs.T
    same = dataset.labels[first] == dataset.labels[second]
    np.testing.assert_array_equal(same, pairs.same)
    assert pairs.same.sum() == 201 and (first != second).all()
    assert (dataset.labels[first[pairs.same]] != 2).all()  # the class of one sample has no positive
    x1, x2, flag = pairs[0]
    assert (
        flag == int(pairs.same[0]) and np.asarray(x1)[0, 0] == first[0] and np.asarray(x2)[0, 0] == second[0]
    )
    before = pairs.pairs.copy()
    pairs.set_epoch(1)
    assert not np.array_equal(before, pairs.pairs)
    pairs.set_epoch(0)
    np.testing.assert_array_equal(before, pairs.pairs)
    fixed = PairDataset(dataset, num_pairs=401, seed=1, fixed=True)
    fixed.set_epoch(5)
    np.testing.assert_array_equal(before, fixed.pairs)
    negatives = pairs.pairs[~pairs.same]  # negatives spread over all other classes
    assert len(np.unique(dataset.labels[negatives[:, 1]])) == 4


def test_triplet_dataset_relations():
    dataset = labelled()
    triplets = TripletDataset(dataset, seed=0)
    anchor, positive, negative = triplets.triplets.T
    labels = dataset.labels
    assert len(triplets) == len(dataset)
    assert (labels[anchor] == labels[positive]).all() and (anchor != positive).all()
    assert (labels[anchor] != labels[negative]).all()
    assert set(anchor.tolist()) == set(np.flatnonzero(labels != 2).tolist())  # every sample with a positive
    with pytest.raises(ValueError, match="2 classes"):
        TripletDataset(ArrayDataset(np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        PairDataset(ArrayDataset(np.zeros((3, 2, 2), np.uint8), np.arange(3)))


def test_tuple_batches_and_their_loss_indices():
    labels = np.repeat(np.arange(4), 5)
    sampler = TupleBatchSampler(labels, "pairs", tuples_per_batch=6, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4 and all(len(b) == 12 for b in batches)
    batch_labels = torch.as_tensor(labels[batches[0]])
    a_p, p, a_n, n = tuple_indices("pairs", batch_labels, 6)
    assert len(a_p) == 3 and len(a_n) == 3  # balanced
    assert (batch_labels[a_p] == batch_labels[p]).all() and (batch_labels[a_n] != batch_labels[n]).all()
    assert sorted(torch.cat([a_p, a_n]).tolist()) == list(range(6))
    assert sorted(torch.cat([p, n]).tolist()) == list(range(6, 12))
    two_ranks = [list(TupleBatchSampler(labels, "triplets", 4, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(two_ranks[0]) == len(two_ranks[1]) == 3 and two_ranks[0] != two_ranks[1]
    global_labels = torch.as_tensor(labels[two_ranks[0][0] + two_ranks[1][0]])
    anchor, positive, negative = tuple_indices("triplets", global_labels, 4)
    assert anchor.tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert (global_labels[anchor] == global_labels[positive]).all()
    assert (global_labels[anchor] != global_labels[negative]).all()
    with pytest.raises(ValueError, match="whole batches"):
        tuple_indices("pairs", torch.zeros(5, dtype=torch.long), 2)


@pytest.mark.parametrize("mode, loss", [("pairs", "contrastive"), ("triplets", "triplet")])
def test_tuple_modes_train(tmp_path, monkeypatch, mode, loss):
    from deepmetric.training import trainer

    given = []

    def recording(sampler, labels):
        indices = tuple_indices(sampler.mode, labels, sampler.tuples_per_batch)
        given.append((labels, indices))
        return indices

    monkeypatch.setattr(trainer, "batch_indices", recording)
    config = tiny_config(f"sampler.mode={mode}", "sampler.tuples_per_batch=8", f"loss.name={loss}")
    metrics = train(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert len(given) == 4
    for labels, indices in given:  # the loss gets the batch's 8 tuples, balanced pairs or valid triplets
        assert len(labels) == 8 * (2 if mode == "pairs" else 3)
        if mode == "pairs":
            assert len(indices) == 4 and len(indices[0]) == len(indices[2]) == 4
        else:
            anchor, positive, negative = indices
            assert len(anchor) == 8 and (labels[anchor] == labels[positive]).all()
            assert (labels[anchor] != labels[negative]).all()
    assert set(metrics["trained"]) == {"recall@1", "knn_accuracy@3"}
    with pytest.raises(ConfigError, match="remove the miner"):
        tiny_config(f"sampler.mode={mode}", "miner.name=batch_hard")
    with pytest.raises(ConfigError, match=r"sampler\.mode"):
        tiny_config("sampler.mode=quadruplets")
