"""Build the parts of an experiment from its config: model, loss, miner, optimizer, schedule."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from deepmetric import losses, miners
from deepmetric.data.pairs import TupleBatchSampler, tuple_indices
from deepmetric.losses.xbm import CrossBatchMemory
from deepmetric.masks import PairIndices, TripletIndices
from deepmetric.models import HEADS, Backbone, EmbeddingModel, build_backbone
from deepmetric.models.ensemble import build_ensemble, meta_class_partitions
from deepmetric.registry import Registry
from deepmetric.samplers import SAMPLERS, PKSampler
from deepmetric.training.config import ConfigError, ExperimentConfig, SamplerConfig
from deepmetric.training.optim import OPTIMIZERS, SCHEDULES


def build_named(registry: Registry, name: str, *args: Any, **settings: Any) -> Any:
    """Build ``name`` from ``registry`` with those of ``settings`` its constructor declares: one config
    section serves every choice (e.g. ``optimizer.momentum`` is read by sgd only)."""
    accepted = registry.parameters(name)
    return registry.lookup(name)(*args, **{k: v for k, v in settings.items() if k in accepted})


def build_model(config: ExperimentConfig) -> EmbeddingModel:
    """The backbone + head model, or with ``config.ensemble`` an ensemble of learners (independent
    backbones, or one shared backbone in frozen-feature mode where its features are cached)."""
    model_config = config.model

    def backbone() -> Backbone:
        return build_backbone(
            model_config.backbone,
            pretrained=model_config.pretrained,
            weights=model_config.weights,
            **model_config.backbone_options,
        )

    def head(in_features: int) -> torch.nn.Module:
        return build_named(
            HEADS,
            model_config.head,
            in_features,
            embedding_size=model_config.embedding_size,
            pooling=model_config.pooling,
            batchnorm=model_config.batchnorm,
            normalize=model_config.normalize,
            dropout=model_config.dropout,
            init=model_config.head_init,
            activation=model_config.hash_activation,
        )

    if config.ensemble is not None:
        return build_ensemble(
            backbone, head, config.ensemble.size, model_config.frozen, model_config.batchnorm_frozen
        )
    body = backbone()
    try:
        top = head(body.feature_dim)
    except ValueError as error:  # e.g. an identity head whose size differs from the features
        raise ConfigError(f"model.head_init: {error}") from None
    try:
        return EmbeddingModel(
            body,
            top,
            freeze_batchnorm=model_config.batchnorm_frozen,
            trainable=model_config.trainable_part,
            flip_average=config.eval.flip,
        )
    except ValueError as error:  # a cut point this backbone does not have
        raise ConfigError(f"model.trainable: {model_config.backbone}: {error}") from None


def build_loss(
    config: ExperimentConfig, num_classes: int, embedding_size: int, train_size: int | None = None
) -> losses.MetricLoss | CrossBatchMemory:
    """The configured loss; proxy/classification losses get the class count and embedding size.
    With ``loss.memory`` the loss is wrapped in a cross-batch memory, no larger than the ``train_size``
    training samples."""
    accepted = losses.LOSSES.parameters(config.loss.name)
    provided = {"num_classes": num_classes, "embedding_size": embedding_size}
    if config.ensemble is not None:
        size, meta_classes = config.ensemble.size, config.ensemble.meta_classes
        provided["partitions"] = meta_class_partitions(num_classes, size, meta_classes, config.seed)
    kwargs = {k: v for k, v in provided.items() if k in accepted}
    params = dict(config.loss.params)
    memory = params.pop("memory", None)
    loss = losses.get(config.loss.name, **params, **kwargs)
    if memory is None:
        return loss
    if train_size is not None and memory["size"] > train_size:
        raise ConfigError(
            f"loss.memory.size: {memory['size']} is larger than the {train_size} training samples"
        )
    return CrossBatchMemory(loss, embedding_size, **memory)


def build_batch_sampler(config: ExperimentConfig, labels: np.ndarray) -> PKSampler | TupleBatchSampler:
    """P x K batches (``sampler.mode: pk``), or batches of random pairs or triplets."""
    sampler = config.sampler
    return build_named(
        SAMPLERS,
        sampler.mode,
        labels,
        classes_per_batch=sampler.classes_per_batch,
        samples_per_class=sampler.samples_per_class,
        tuples_per_batch=sampler.tuples_per_batch,
        seed=config.seed,
    )


def batch_indices(sampler: SamplerConfig, labels: torch.Tensor) -> PairIndices | TripletIndices | None:
    """The pairs or triplets a tuple batch holds, for the loss (None for P x K batches: all pairs)."""
    return None if sampler.mode == "pk" else tuple_indices(sampler.mode, labels, sampler.tuples_per_batch)


def build_miner(config: ExperimentConfig) -> miners.Miner | None:
    return None if config.miner is None else miners.get(config.miner.name, **config.miner.params)


def build_optimizer(
    config: ExperimentConfig, model: torch.nn.Module, loss: torch.nn.Module
) -> torch.optim.Optimizer:
    opt = config.optimizer
    groups = []
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    if backbone_params:
        groups.append(
            {"params": backbone_params, "lr": opt.backbone_lr if opt.backbone_lr is not None else opt.lr}
        )
    if head_params:
        groups.append({"params": head_params, "lr": opt.lr})
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": opt.loss_lr if opt.loss_lr is not None else opt.lr})
    if not groups:
        if config.train.iterations > 0:
            raise ConfigError(
                "nothing to train: the backbone is frozen, there is no embedding head (model.embedding_size=0) "
                "and the loss has no parameters; set model.embedding_size or train.iterations=0"
            )
        # An evaluation-only run (e.g. the untrained baseline) keeps an optimizer with nothing to update,
        # so that checkpoints and resumption work as for any other run.
        groups.append({"params": [], "lr": opt.lr})
    return build_named(
        OPTIMIZERS, opt.name, groups, lr=opt.lr, weight_decay=opt.weight_decay, momentum=opt.momentum
    )


def lr_factor(config: ExperimentConfig, iteration: int) -> float:
    """Multiplier of the base learning rates at ``iteration`` (linear warm-up, then the schedule)."""
    schedule, total = config.schedule, max(config.train.iterations, 1)
    if iteration < schedule.warmup_iterations:
        return (iteration + 1) / schedule.warmup_iterations
    progress = (iteration - schedule.warmup_iterations) / max(total - schedule.warmup_iterations, 1)
    return build_named(
        SCHEDULES,
        schedule.name,
        iteration=iteration,
        progress=min(max(progress, 0.0), 1.0),
        step_size=schedule.step_size,
        gamma=schedule.gamma,
        min_lr_ratio=schedule.min_lr_ratio,
    )


def build_scheduler(
    config: ExperimentConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(config, it))


def accepts_progress(loss: torch.nn.Module) -> bool:
    """Losses with a schedule of their own (e.g. hashing's quantization weight) expose ``set_progress``."""
    return (
        callable(getattr(loss, "set_progress", None))
        and len(inspect.signature(loss.set_progress).parameters) == 2
    )
