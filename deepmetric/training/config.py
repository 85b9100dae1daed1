"""Experiment configs: YAML files mapped onto typed dataclasses, with ``key=value`` command-line overrides.

A config file holds the sections below; anything left out takes the default shown here. ``loss`` and
``miner`` are written flat (``loss: {name: triplet, margin: 0.2}``): ``name`` picks the registered class
and the other keys are its constructor's parameters, checked against its signature. Unknown keys and
values of the wrong type are refused with a :class:`ConfigError` that names the key.

    deepmetric train configs/cub_frozen.yaml loss.margin=0.2 train.iterations=2000
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the offending key."""


# Loss constructor arguments the trainer fills in from the data and the model, never from the config
# (``partitions``: the meta-class table of an ensemble's learners, drawn from the seed).
PROVIDED_LOSS_ARGS = {"num_classes", "embedding_size", "partitions"}


@dataclass
class DataConfig:
    name: str = "digits"  # a name from deepmetric.data.DATASETS
    root: str | None = None  # dataset folder (None for embedded data sets)
    train_split: str = "train"
    test_split: str = "test"  # the query split when gallery_split is set
    gallery_split: str | None = None  # query/gallery protocol (In-Shop): e.g. "gallery"
    query_per_class: int = 0  # keep only this many queries per class (seeded; 0: all), e.g. DeepHash's 100
    validation_classes: float = 0.0  # fraction of training classes held out for model selection
    augment: str = "standard"  # "standard" (random resized crop + flip), "light" (small affine) or "none"
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # extra dataset constructor arguments


@dataclass
class ModelConfig:
    backbone: str = "small_cnn"  # a name from deepmetric.models.BACKBONES
    pretrained: bool = False
    weights: str | None = None  # a local weights file for the backbone
    backbone_options: dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 128  # 0 keeps the pooled backbone features
    pooling: str = "avg"  # avg, max, gem, avg+max
    batchnorm: bool = False
    normalize: bool = True  # L2-normalise embeddings
    dropout: float = 0.0
    head_init: str = "random"  # random, or identity (embedding_size = the backbone's features)
    freeze_batchnorm: bool | None = None  # BatchNorm in eval mode (None: yes for last_stage/last_2_stages)
    frozen: bool = False  # frozen-feature mode: cache backbone features once, train the head only
    # what trains (None: head when frozen, else all): head, last_stage, last_2_stages (from cached
    # feature maps of the stages before the cut, deepmetric.models.feature_maps) or all (end to end)
    trainable: str | None = None
    cache_crops: int = 0  # last_stage/last_2_stages: random-resized-crop views cached per training image
    head: str = "embedding"  # embedding, or hash: embedding_size-bit codes (deepmetric.models.HEADS)
    hash_activation: str = "tanh"  # hash head relaxation: tanh or sign_ste (straight-through sign)
    feature_cache: str = "~/.cache/deepmetric/features"  # where frozen-mode features are cached

    @property
    def trainable_part(self) -> str:
        return self.trainable if self.trainable is not None else "head" if self.frozen else "all"

    @property
    def batchnorm_frozen(self) -> bool:
        if self.freeze_batchnorm is not None:
            return self.freeze_batchnorm
        return self.trainable_part in ("last_stage", "last_2_stages")


@dataclass
class ComponentConfig:
    """A registered component built by name: ``name`` plus its constructor parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerConfig:
    classes_per_batch: int = 8  # P
    samples_per_class: int = 4  # K
    mode: str = "pk"  # pk (P x K batches), pairs or triplets (random balanced tuples, deepmetric.data.pairs)
    tuples_per_batch: int = 32  # pairs/triplets modes: pairs or triplets per batch

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class


@dataclass
class EnsembleConfig:
    """DREML (Xuan et al. 2018): ``size`` learners, each classifying its own random grouping of the
    training classes into ``meta_classes`` meta-classes (with ``loss: dreml``); the embedding concatenates
    the learners' embeddings."""

    size: int = 12  # D learners
    meta_classes: int = 12  # L meta-classes per learner


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam, adamw, sgd (with momentum)
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    backbone_lr: float | None = None  # learning rate of the backbone (None: lr)
    loss_lr: float | None = None  # learning rate of loss parameters such as proxies (None: lr)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, cosine, step, linear
    warmup_iterations: int = 0
    step_size: int = 1000  # step: decay every step_size iterations
    gamma: float = 0.1  # step: decay factor
    min_lr_ratio: float = 0.0  # cosine/linear: final lr = lr * min_lr_ratio


@dataclass
class TrainConfig:
    iterations: int = 1000
    eval_every: int = 0  # evaluate every N iterations (0: at the end only)
    checkpoint_every: int = 0  # also checkpoint every N iterations (0: at evaluations and the end)
    log_every: int = 50
    best_metric: str = "recall@1"  # selects the best checkpoint
    amp: bool = False  # mixed precision (CUDA float16, CPU bfloat16)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    grad_clip: float = 0.0  # clip the gradient norm (0: off)
    tensorboard: bool = False  # TensorBoard events in RUN/tensorboard (the loggers extra)
    mlflow: bool = False  # an MLflow run in the file store RUN/mlruns (the loggers extra)


@dataclass
class EvalConfig:
    metrics: list[str] = field(
        default_factory=lambda: ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r"]
    )
    distance: str = "cosine"  # cosine, dot, euclidean, squared_euclidean
    batch_size: int = 128  # embedding batch size
    save_embeddings: bool = True
    binarize: bool = False  # evaluate sign(embedding) codes (hashing: ranking by Hamming distance)
    memory_budget_mb: float = 512  # working memory of the evaluation, on top of the embeddings
    flip: bool = False  # embed each image and its mirror, average the embeddings (flip TTA)
    dba_k: int = 0  # database-side augmentation with this many neighbours before ranking (0: off)
    dba_alpha: float = 3.0  # DBA neighbour weight: cosine similarity ** dba_alpha


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ensemble: EnsembleConfig | None = None  # a DREML ensemble of learners (null: one model)
    loss: ComponentConfig = field(default_factory=lambda: ComponentConfig("triplet"))
    miner: ComponentConfig | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------- dict <-> dataclass


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)), True
    return tp, False


def _convert(value: Any, tp: Any, key: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required (got null)")
    if tp is ComponentConfig:
        return _component(value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _from_dict(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _unknown_key(key: str, known: list[str], prefix: str) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {full!r}{hint}")


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise _unknown_key(key, names, prefix)
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def _component(value: Any, key: str) -> ComponentConfig:
    if isinstance(value, str):
        return ComponentConfig(value)
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{key}: expected a mapping with a 'name' (e.g. {{name: triplet, margin: 0.2}})")
    params = {k: v for k, v in value.items() if k != "name"}
    if "params" in params and isinstance(params["params"], dict) and len(params) == 1:
        params = dict(params["params"])  # accept the nested form written by to_dict's older readers
    if not isinstance(value["name"], str):
        raise ConfigError(f"{key}.name: expected a string, got {value['name']!r}")
    return ComponentConfig(value["name"], params)


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain YAML-ready data (components written flat, as in config files)."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, ComponentConfig):
            return {"name": obj.name, **obj.params}
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(config)


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from plain data."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    config = _from_dict(ExperimentConfig, values)
    validate(config)
    return config


# ---------------------------------------------------------------- overrides and files


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loss.margin=0.2"`` -> (["loss", "margin"], 0.2); values are read as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. loss.margin=0.2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot read value {raw!r}: {error}") from None
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key=value`` overrides into a plain config mapping (before validation)."""
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None and depth == 0 and part == "miner" and path[1] != "name":
                raise ConfigError(f"{'.'.join(path)}: no miner is configured; set miner.name first")
            if child is None:
                child = node[part] = (
                    {"name": ExperimentConfig().loss.name} if (depth, part) == (0, "loss") else {}
                )
            if isinstance(child, str) and path[0] in ("loss", "miner") and depth == 0:
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{'.'.join(path[: depth + 1])} is not a section; cannot set {'.'.join(path)}"
                )
            node = child
        node[path[-1]] = value
    return values


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    A relative ``data.root`` in the file is relative to the file's folder, one given as an override to
    the current directory; both are made absolute, so that the config saved in a run folder reads the
    same data from any directory.
    """
    values = load_yaml(path) if path is not None else {}
    if path is not None:
        _absolute_root(values, Path(path).parent)
    values = apply_overrides(values, list(overrides or []))
    _absolute_root(values, Path.cwd())
    return from_dict(values)


def _absolute_root(values: dict[str, Any], base: Path) -> None:
    data = values.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"].strip():
        try:
            root = Path(data["root"]).expanduser()
        except RuntimeError as error:  # ~user of an unknown user
            raise ConfigError(f"data.root: cannot expand {data['root']!r}: {error}") from None
        data["root"] = str(root if root.is_absolute() else (base / root).resolve())


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# ---------------------------------------------------------------- validation


def _check_name(key: str, kind: str, value: str, names: Iterable[str]) -> None:
    """``value`` must be one of ``names`` (a registry's or the owning module's table)."""
    names = sorted(names)
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; choose one of {names}"
        raise ConfigError(f"{key}: unknown {kind} {value!r}{hint}")


def _check_component(kind: str, component: ComponentConfig, registry: Any, provided: set[str]) -> None:
    _check_name(f"{kind}.name", kind, component.name, registry.names())
    accepted = registry.parameters(component.name)
    for key in component.params:
        if key not in accepted or key in provided:
            known = sorted(set(accepted) - provided)
            raise _unknown_key(key, known, kind)
    _check_param_types(kind, component, accepted)


# Annotations that a config value can be checked against (constructors spell them as strings).
_SIMPLE_TYPES = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "None": "null",
}


def _matches(value: Any, type_name: str) -> bool:
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str, "None": type(None)}[type_name])


def _check_param_types(kind: str, component: ComponentConfig, accepted: dict[str, Any]) -> None:
    """Values of constructor parameters annotated with simple types (``float``, ``int | None``, ...) must
    have that type, so that ``loss.alpha=abc`` is refused here and not deep inside the first step."""
    for key, value in component.params.items():
        parameter = accepted[key]
        annotation = parameter.annotation
        if annotation is parameter.empty:
            default = parameter.default
            annotation = type(default).__name__ if isinstance(default, (bool, int, float, str)) else ""
        names = [part.strip() for part in str(annotation).split("|")]
        if not all(name in _SIMPLE_TYPES for name in names) or any(_matches(value, n) for n in names):
            continue  # an annotation it cannot check (e.g. str | Distance), or a match
        if "float" in names and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                component.params[key] = float(value)
                continue
            except ValueError:
                pass
        expected = " or ".join(_SIMPLE_TYPES[n] for n in names)
        raise ConfigError(f"{kind}.{key}: expected {expected}, got {value!r}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_ensemble(config: ExperimentConfig, loss_takes_partitions: bool) -> None:
    ensemble = config.ensemble
    if ensemble is None:
        if loss_takes_partitions:
            raise ConfigError(
                f"loss.name: {config.loss.name!r} trains an ensemble; add an ensemble section "
                "(ensemble: {size: D, meta_classes: L})"
            )
        return
    _positive(ensemble.size, "ensemble.size")
    if ensemble.meta_classes < 2:
        raise ConfigError(f"ensemble.meta_classes: must be >= 2, got {ensemble.meta_classes}")
    if not loss_takes_partitions:
        raise ConfigError(
            f"loss.name: an ensemble trains its learners on meta-classes with loss dreml, "
            f"not {config.loss.name!r}"
        )
    if config.model.embedding_size == 0:
        raise ConfigError("model.embedding_size: an ensemble needs each learner's embedding size (> 0)")


def _check_tuple_sampling(config: ExperimentConfig) -> None:
    from deepmetric.samplers import SAMPLERS

    sampler = config.sampler
    _check_name("sampler.mode", "sampler", sampler.mode, SAMPLERS.names())
    _positive(sampler.tuples_per_batch, "sampler.tuples_per_batch")
    if sampler.mode == "pairs" and sampler.tuples_per_batch < 2:
        raise ConfigError("sampler.tuples_per_batch: pairs mode needs >= 2 pairs (a positive and a negative)")
    if sampler.mode != "pk" and config.miner is not None:
        raise ConfigError(
            f"miner: sampler.mode={sampler.mode} gives the loss its pairs or triplets; remove the miner"
        )


def _check_trainable(config: ExperimentConfig) -> None:
    from deepmetric.models.backbones import TRAINABLE

    model = config.model
    if model.trainable is not None and model.trainable not in TRAINABLE:
        raise ConfigError(f"model.trainable: must be one of {list(TRAINABLE)}, got {model.trainable!r}")
    if model.frozen and model.trainable not in (None, "head"):
        raise ConfigError(
            f"model.trainable: {model.trainable!r} trains the backbone, but model.frozen is true"
        )
    _positive(model.cache_crops, "model.cache_crops", allow_zero=True)
    partial = model.trainable_part in ("last_stage", "last_2_stages")
    if model.cache_crops and not partial:
        raise ConfigError(
            "model.cache_crops: cached crops are for model.trainable last_stage or last_2_stages"
        )
    if model.cache_crops and config.data.augment == "none":
        raise ConfigError("model.cache_crops: cached crops are augmentation, but data.augment is none")
    if partial and config.ensemble is not None:
        raise ConfigError("model.trainable: partial fine-tuning does not train ensembles; use head or all")


def _check_memory(config: ExperimentConfig, loss_parameters: list[str] | dict) -> None:
    """``loss.memory: {size, start, weight}``: a cross-batch memory around a pair-based loss."""
    memory = config.loss.params["memory"]
    if not isinstance(memory, dict) or "size" not in memory:
        raise ConfigError(f"loss.memory: expected a mapping with size (and start, weight), got {memory!r}")
    for key in memory:
        if key not in ("size", "start", "weight"):
            raise _unknown_key(key, ["size", "start", "weight"], "loss.memory")
    for key in ("size", "start"):
        if key in memory and (isinstance(memory[key], bool) or not isinstance(memory[key], int)):
            raise ConfigError(f"loss.memory.{key}: expected an integer, got {memory[key]!r}")
    _positive(memory["size"], "loss.memory.size")
    _positive(memory.get("start", 0), "loss.memory.start", allow_zero=True)
    weight = memory.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise ConfigError(f"loss.memory.weight: must be a number > 0, got {weight!r}")
    if "num_classes" in loss_parameters:
        raise ConfigError(
            f"loss.memory: a cross-batch memory wraps pair-based losses; {config.loss.name!r} uses proxies "
            "or class weights"
        )
    if config.ensemble is not None:
        raise ConfigError("loss.memory: an ensemble's loss cannot take a cross-batch memory")


def validate(config: ExperimentConfig) -> None:
    """Check values and component names/parameters; raises ConfigError naming the key."""
    from deepmetric import data, losses, miners, models  # registries fill on import
    from deepmetric.data.transforms import AUGMENTATIONS
    from deepmetric.distances import DISTANCES
    from deepmetric.evaluation import parse_metric
    from deepmetric.models import hash_head
    from deepmetric.training.optim import OPTIMIZERS, SCHEDULES

    _check_name("data.name", "dataset", config.data.name, data.DATASETS.names())
    if not 0 <= config.data.validation_classes < 1:
        raise ConfigError(f"data.validation_classes: must be in [0, 1), got {config.data.validation_classes}")
    _check_name("data.augment", "augmentation", config.data.augment, AUGMENTATIONS)
    _positive(config.data.num_workers, "data.num_workers", allow_zero=True)
    _positive(config.data.query_per_class, "data.query_per_class", allow_zero=True)
    if not models.backbones.is_backbone_name(config.model.backbone):  # or any timm model as timm:<name>
        _check_name("model.backbone", "backbone", config.model.backbone, models.BACKBONES.names())
    _positive(config.model.embedding_size, "model.embedding_size", allow_zero=True)
    _check_name("model.head", "head", config.model.head, models.HEADS.names())
    _check_name(
        "model.hash_activation", "hash activation", config.model.hash_activation, hash_head.ACTIVATIONS
    )
    low, high = hash_head.MIN_BITS, hash_head.MAX_BITS
    if config.model.head == "hash" and not low <= config.model.embedding_size <= high:
        raise ConfigError(
            f"model.embedding_size: a hash head takes {low} to {high} bits, got {config.model.embedding_size}"
        )
    _check_name("model.head_init", "head init", config.model.head_init, models.head.HEAD_INITS)
    if config.model.head_init != "random" and config.model.head != "embedding":
        raise ConfigError(f"model.head_init: {config.model.head_init} is for model.head: embedding")
    _check_trainable(config)
    _check_name("model.pooling", "pooling", config.model.pooling, models.POOLINGS)
    loss_params = {k: v for k, v in config.loss.params.items() if k != "memory"}
    _check_component(
        "loss", ComponentConfig(config.loss.name, loss_params), losses.LOSSES, PROVIDED_LOSS_ARGS
    )
    if "memory" in config.loss.params:
        _check_memory(config, losses.LOSSES.parameters(config.loss.name))
    _check_ensemble(config, "partitions" in losses.LOSSES.parameters(config.loss.name))
    if config.miner is not None:
        _check_component("miner", config.miner, miners.MINERS, set())
    _positive(config.sampler.classes_per_batch, "sampler.classes_per_batch")
    _positive(config.sampler.samples_per_class, "sampler.samples_per_class")
    _check_tuple_sampling(config)
    _check_name("optimizer.name", "optimizer", config.optimizer.name, OPTIMIZERS.names())
    _positive(config.optimizer.lr, "optimizer.lr")
    _check_name("schedule.name", "schedule", config.schedule.name, SCHEDULES.names())
    _positive(config.train.iterations, "train.iterations", allow_zero=True)
    for key in ("eval_every", "checkpoint_every", "log_every"):
        _positive(getattr(config.train, key), f"train.{key}", allow_zero=True)
    _check_name("eval.distance", "distance", config.eval.distance, DISTANCES)
    _positive(config.eval.memory_budget_mb, "eval.memory_budget_mb")
    if not config.eval.metrics:
        raise ConfigError("eval.metrics: give at least one metric")
    for name in config.eval.metrics:
        try:
            parse_metric(name)
        except ValueError as error:
            raise ConfigError(f"eval.metrics: {error}") from None
    _positive(config.eval.dba_k, "eval.dba_k", allow_zero=True)
    _positive(config.eval.dba_alpha, "eval.dba_alpha", allow_zero=True)
    if config.eval.dba_k and config.eval.binarize:
        raise ConfigError(
            "eval.dba_k: database-side augmentation mixes real-valued embeddings, not binary codes"
        )
    if config.train.best_metric not in config.eval.metrics:
        raise ConfigError(
            f"train.best_metric: {config.train.best_metric!r} is not among eval.metrics {config.eval.metrics}"
        )
