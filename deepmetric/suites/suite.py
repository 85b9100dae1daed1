"""Benchmark suites: one shared protocol, a grid of methods x varied settings x seeds, one run folder each.

A suite YAML file holds:

    name: cub_subset_frozen
    description: free text
    base: {...}            # an ExperimentConfig (the protocol: data, backbone, sampler, budget, evaluation)
    seeds: [0, 1, 2]
    vary:                  # optional: config fields to vary, every combination is run
      model.embedding_size: [64, 128, 512]
    methods:
      contrastive:
        label: Contrastive            # the table's Method column (default: the key)
        normalized: "yes"             # the table's Normalized column (free text)
        margin: "0.5"                 # the table's Margin column (free text)
        overrides:                    # nested sections or dotted keys, merged into ``base``
          loss: {name: contrastive, neg_margin: 0.5}
        pml:                          # optional: the same method with pytorch-metric-learning's classes
          loss: {name: "pml:ContrastiveLoss", neg_margin: 0.5}
    select: {...}          # optional: hyper-parameter selection on validation classes (see selection.py)

Merging: a ``loss`` or ``miner`` section that names a component replaces the base one (its parameters do
not leak into another loss); ``miner: null`` removes the miner; every other section is merged key by key.
A method whose overrides set a varied field keeps its own value and is not varied along that field (the
untrained baseline with ``model.embedding_size: 0`` is run once, not once per embedding size).

Run folders: ``OUT/<method>/<field=value>/.../seed<k>/`` (``OUT/pml/<method>/...`` for PML runs).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepmetric.training.config import ConfigError, ExperimentConfig, from_dict, load_yaml

COMPONENT_SECTIONS = ("loss", "miner")
METHOD_KEYS = {"label", "normalized", "margin", "overrides", "pml"}
SUITE_KEYS = {"name", "description", "base", "seeds", "vary", "methods", "select"}


@dataclass
class Method:
    key: str
    label: str
    normalized: str
    margin: str
    overrides: dict[str, Any]
    pml: dict[str, Any] | None = None


@dataclass
class Suite:
    name: str
    base: dict[str, Any]
    seeds: list[int]
    methods: list[Method]
    vary: dict[str, list[Any]] = field(default_factory=dict)
    select: dict[str, Any] | None = None
    description: str = ""

    def method(self, key: str) -> Method:
        for method in self.methods:
            if method.key == key:
                return method
        raise ValueError(f"suite {self.name!r} has no method {key!r}; it has {[m.key for m in self.methods]}")


@dataclass
class RunSpec:
    """One grid point: a method, the values of the varied fields, a seed, its config and run folder."""

    method: Method
    point: dict[str, Any]  # varied field -> value (only the fields this method is varied along)
    seed: int
    config: ExperimentConfig
    run_dir: Path
    implementation: str = "deepmetric"  # or "pml"


# ---------------------------------------------------------------- merging overrides


def expand_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """``{"loss.margin": 0.2, "train": {...}}`` -> nested sections (dotted keys become sub-mappings)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is set to a value and cannot hold {parts[-1]!r}")
            node = child
        last = parts[-1]
        value = expand_dotted(value) if isinstance(value, dict) else value
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last] = merge(node[last], value)
        else:
            node[last] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """``overrides`` deep-merged into a copy of ``base`` (component sections with a name replace)."""
    result = copy.deepcopy(base)
    for key, value in expand_dotted(overrides).items():
        replaces = (
            top and key in COMPONENT_SECTIONS and (value is None or isinstance(value, str) or "name" in value)
        )
        if replaces or not isinstance(value, dict) or not isinstance(result.get(key), dict):
            result[key] = copy.deepcopy(value)
        else:
            result[key] = merge(result[key], value, top=False)
    return result


def field_value(values: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(present, value) of a dotted field in nested plain data."""
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


# ---------------------------------------------------------------- loading


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _method(key: str, spec: Any) -> Method:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(f"methods.{key}: expected a mapping with overrides, got {spec!r}")
    unknown = sorted(set(spec) - METHOD_KEYS)
    if unknown:
        raise ConfigError(f"methods.{key}.{unknown[0]}: unknown key; a method has {sorted(METHOD_KEYS)}")
    overrides = spec.get("overrides") or {}
    pml = spec.get("pml")
    for name, value in (("overrides", overrides), ("pml", pml)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"methods.{key}.{name}: expected a mapping of config fields, got {value!r}")
    return Method(
        key=key,
        label=str(spec.get("label", key)),
        normalized=_text(spec.get("normalized")),
        margin=_text(spec.get("margin")),
        overrides=dict(overrides),
        pml=dict(pml) if pml is not None else None,
    )


def suite_from_dict(values: dict[str, Any], default_name: str = "suite") -> Suite:
    unknown = sorted(set(values) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite key {unknown[0]!r} is unknown; a suite has {sorted(SUITE_KEYS)}")
    methods = values.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ConfigError("methods: give at least one method (a mapping of name -> overrides)")
    seeds = values.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} lists a seed twice")
    vary = values.get("vary") or {}
    if not isinstance(vary, dict) or not all(isinstance(v, list) and v for v in vary.values()):
        raise ConfigError("vary: expected a mapping of config field -> non-empty list of values")
    base = values.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base: expected a mapping of config sections")
    select = values.get("select")
    if select is not None and not isinstance(select, dict):
        raise ConfigError("select: expected a mapping (grid, validation_classes, ...)")
    return Suite(
        name=str(values.get("name", default_name)),
        base=base,
        seeds=list(seeds),
        methods=[_method(str(k), v) for k, v in methods.items()],
        vary={str(k): list(v) for k, v in vary.items()},
        select=select,
        description=str(values.get("description", "")),
    )


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file (every grid point's config is validated when the grid is built)."""
    path = Path(path)
    return suite_from_dict(load_yaml(path), default_name=path.stem)


# ---------------------------------------------------------------- the grid


def format_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def point_dirname(field_name: str, value: Any) -> str:
    text = f"{field_name}={format_value(value)}"
    return "".join(ch if ch.isalnum() or ch in "._=+-" else "_" for ch in text)


def varied_fields(suite: Suite, method: Method, overrides: dict[str, Any]) -> list[str]:
    """The suite's varied fields this method is varied along (those it does not set itself)."""
    nested = expand_dotted(overrides)
    return [name for name in suite.vary if not field_value(nested, name)[0]]


def build_config(
    suite: Suite, overrides: dict[str, Any], point: dict[str, Any], seed: int, name: str, output_dir: Path
) -> ExperimentConfig:
    values = merge(suite.base, overrides)
    values = merge(values, dict(point))
    values.update(seed=seed, name=name, output_dir=str(output_dir))
    try:
        return from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"suite {suite.name!r}, {name} seed {seed}: {error}") from None


def expand_grid(
    suite: Suite,
    out_dir: str | Path,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    implementation: str = "deepmetric",
    chosen: dict[str, dict[str, Any]] | None = None,
) -> list[RunSpec]:
    """Every run of the suite, validated: methods (``only`` a subset) x varied values x seeds.

    ``implementation="pml"`` builds the PML twin of each method that has one (others are left out).
    ``chosen`` maps a method to the overrides picked on validation; they are applied over its own.
    """
    out_dir = Path(out_dir)
    keys = [m.key for m in suite.methods]
    for key in only or []:
        if key not in keys:
            raise ConfigError(f"--only: suite {suite.name!r} has no method {key!r}; it has {keys}")
    seeds = list(seeds) if seeds is not None else suite.seeds
    specs = []
    for method in suite.methods:
        if only and method.key not in only:
            continue
        overrides = method.overrides
        folder = out_dir / method.key
        if implementation == "pml":
            if method.pml is None:
                continue
            overrides = merge(overrides, method.pml)
            folder = out_dir / "pml" / method.key
        if chosen and method.key in chosen:
            overrides = merge(overrides, chosen[method.key])
        fields = varied_fields(suite, method, overrides)
        for values in itertools.product(*(suite.vary[f] for f in fields)):
            point = dict(zip(fields, values))
            point_dir = folder.joinpath(*(point_dirname(f, v) for f, v in point.items()))
            for seed in seeds:
                name = f"{suite.name}-{method.key}" + ("-pml" if implementation == "pml" else "")
                config = build_config(suite, overrides, point, seed, name, out_dir)
                specs.append(RunSpec(method, point, seed, config, point_dir / f"seed{seed}", implementation))
    return specs
