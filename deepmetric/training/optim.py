"""Optimizers and learning-rate schedules by name (``optimizer.name`` and ``schedule.name`` in a config).

An optimizer is a function ``(param_groups, lr, ...) -> torch.optim.Optimizer``; a schedule is a function
returning the multiplier of the base learning rates after warm-up. Both declare the config settings they
use as keyword parameters (optimizer: ``weight_decay``, ``momentum``; schedule: ``iteration``,
``progress`` in [0, 1] after warm-up, ``step_size``, ``gamma``, ``min_lr_ratio``) and receive only those,
so a new one is one registered function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from deepmetric.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")

ParamGroups = Iterable[dict[str, Any]]


@OPTIMIZERS.register("adam")
def adam(params: ParamGroups, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: ParamGroups, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(
    params: ParamGroups, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@SCHEDULES.register("constant")
def constant() -> float:
    return 1.0


@SCHEDULES.register("step")
def step(iteration: int, step_size: int, gamma: float) -> float:
    """``gamma`` times smaller every ``step_size`` iterations (counted from the start, warm-up included)."""
    return gamma ** (iteration // step_size)


@SCHEDULES.register("cosine")
def cosine(progress: float, min_lr_ratio: float) -> float:
    """Half a cosine from 1 down to ``min_lr_ratio`` (Loshchilov & Hutter's SGDR, without restarts)."""
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULES.register("linear")
def linear(progress: float, min_lr_ratio: float) -> float:
    return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
