"""Optimizers, schedules, heads and samplers come from registries: configs validate against them (with
did-you-mean hints) and the trainer builds them from them, so a newly registered name works everywhere."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from deepmetric.data.pairs import TupleBatchSampler
from deepmetric.hashing import HashHead
from deepmetric.models import HEADS, EmbeddingHead, build_backbone
from deepmetric.samplers import SAMPLERS, PKSampler
from deepmetric.training.components import build_batch_sampler, build_model, build_optimizer, lr_factor
from deepmetric.training.config import ConfigError, load_config
from deepmetric.training.optim import OPTIMIZERS, SCHEDULES

SMALL_MODEL = ["model.backbone_options={in_channels: 1, image_size: 8, width: 4}"]


def reference_lr_factor(name, iteration, total, warmup, step_size, gamma, low):
    """The schedules written out from their definitions."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = min(max((iteration - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return {
        "constant": 1.0,
        "step": gamma ** (iteration // step_size),
        "cosine": low + (1 - low) * (1 + math.cos(math.pi * progress)) / 2,
        "linear": low + (1 - low) * (1 - progress),
    }[name]


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_schedules_follow_their_definition(name, warmup):
    config = load_config(
        None,
        [
            f"schedule.name={name}",
            f"schedule.warmup_iterations={warmup}",
            "schedule.step_size=7",
            "schedule.gamma=0.5",
            "schedule.min_lr_ratio=0.1",
            "train.iterations=40",
        ],
    )
    for iteration in range(45):
        expected = reference_lr_factor(name, iteration, 40, warmup, 7, 0.5, 0.1)
        assert lr_factor(config, iteration) == pytest.approx(expected, abs=1e-12), iteration


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizers_get_their_settings(name, cls):
    config = load_config(
        None,
        [*SMALL_MODEL, f"optimizer.name={name}", "optimizer.weight_decay=0.25", "optimizer.momentum=0.5"],
    )
    model = build_model(config)
    optimizer = build_optimizer(config, model, torch.nn.Identity())
    assert type(optimizer) is cls
    assert optimizer.defaults["weight_decay"] == 0.25
    assert optimizer.defaults.get("momentum") == (0.5 if name == "sgd" else None)


def test_heads_are_built_by_name():
    hashing = build_model(
        load_config(
            None,
            [*SMALL_MODEL, "model.head=hash", "model.embedding_size=16", "model.hash_activation=sign_ste"],
        )
    )
    assert type(hashing.head) is HashHead
    assert (hashing.head.bits, hashing.head.activation) == (16, "sign_ste")
    plain = build_model(load_config(None, [*SMALL_MODEL, "model.embedding_size=12", "model.pooling=max"]))
    assert type(plain.head) is EmbeddingHead
    assert (plain.head.embedding_size, plain.head.pooling) == (12, "max")
    features = torch.randn(3, build_backbone("small_cnn", width=4).feature_dim)
    assert HEADS.lookup("hash")(features.shape[1], 8)(features).shape == (3, 8)


@pytest.mark.parametrize(
    ("mode", "cls"), [("pk", PKSampler), ("pairs", TupleBatchSampler), ("triplets", None)]
)
def test_samplers_are_built_by_mode(mode, cls):
    labels = np.repeat(np.arange(6), 5)
    sampler_settings = [
        "sampler.classes_per_batch=3",
        "sampler.samples_per_class=2",
        "sampler.tuples_per_batch=4",
    ]
    config = load_config(None, [f"sampler.mode={mode}", *sampler_settings])
    sampler = build_batch_sampler(config, labels)
    assert type(sampler) is (cls or TupleBatchSampler)
    batch = next(iter(sampler))
    assert len(batch) == {"pk": 6, "pairs": 8, "triplets": 12}[mode]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.name=adamx", "optimizer.name: unknown optimizer 'adamx' (did you mean 'adam'?)"),
        ("schedule.name=cosin", "schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?)"),
        ("model.head=hsh", "model.head: unknown head 'hsh' (did you mean 'hash'?)"),
        ("sampler.mode=pair", "sampler.mode: unknown sampler 'pair' (did you mean 'pairs'?)"),
        ("model.pooling=gme", "model.pooling: unknown pooling 'gme' (did you mean 'gem'?)"),
        ("data.augment=nonee", "data.augment: unknown augmentation 'nonee' (did you mean 'none'?)"),
        ("model.hash_activation=tan", "model.hash_activation: unknown hash activation 'tan' (did you mean"),
        (
            "optimizer.name=zzz",
            "optimizer.name: unknown optimizer 'zzz'; choose one of ['adam', 'adamw', 'sgd']",
        ),
        (
            "model.backbone=small_cn",
            "model.backbone: unknown backbone 'small_cn' (did you mean 'small_cnn'?)",
        ),
    ],
)
def test_unknown_names_get_a_hint(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_a_newly_registered_optimizer_and_schedule_are_accepted_and_built(monkeypatch):
    def rmsprop(params, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum)

    monkeypatch.setitem(OPTIMIZERS._entries, "rmsprop", rmsprop)
    monkeypatch.setitem(SCHEDULES._entries, "halved", lambda: 0.5)
    config = load_config(None, [*SMALL_MODEL, "optimizer.name=rmsprop", "optimizer.momentum=0.3"])
    optimizer = build_optimizer(config, build_model(config), torch.nn.Identity())
    assert type(optimizer) is torch.optim.RMSprop and optimizer.defaults["momentum"] == 0.3
    assert lr_factor(load_config(None, ["schedule.name=halved"]), 3) == 0.5


def test_registries_hold_the_expected_names():
    assert OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert SCHEDULES.names() == ["constant", "cosine", "linear", "step"]
    assert HEADS.names() == ["embedding", "hash"]
    assert SAMPLERS.names() == ["pairs", "pk", "triplets"]
