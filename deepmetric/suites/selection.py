"""Hyper-parameter selection on a class-disjoint validation split of the training classes.

"A Metric Learning Reality Check" (Musgrave et al. 2020): hyper-parameters and the number of iterations
are chosen on classes held out of the *training* classes, never on the test classes. A suite's
``select`` section:

    select:
      validation_classes: 0.25     # fraction of the training classes held out (data.validation_classes)
      seeds: [0]                   # seeds of the selection runs (scores are averaged over them)
      metric: recall@1             # default: base train.best_metric
      eval_every: 100              # evaluate validation every N iterations (default: train.eval_every)
      iterations: true             # also pick the iteration count: the best validation checkpoint's
      grid:                        # tried for every method (every combination)
        optimizer.lr: [1e-4, 1e-3]
      methods:                     # extra per-method grids, combined with ``grid``
        contrastive: {loss.neg_margin: [0.3, 0.5]}

or, instead of ``grid``, a TPE search with Optuna (``search: optuna``, ``trials``, ``space``: see
:mod:`deepmetric.suites.search`), scored the same way.

Every candidate is a normal run folder under ``OUT/_select/<method>/...``, trained with
``data.validation_classes`` set. The trainer evaluates the validation classes every ``eval_every``
iterations and records the best validation score and its iteration in ``metrics.json`` (``best_score``,
``best_iteration``, ``selected_on: validation``); only those numbers are read here. The winner per
method (highest mean validation score; ties go to the earlier candidate) is written to
``OUT/selected.yaml`` and applied over the method's overrides in the final runs. Methods that do not
train (``train.iterations: 0``, the untrained baseline) are not selected.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deepmetric.suites.runner import read_metrics, run_grid
from deepmetric.suites.search import SEARCH_KEYS, check_search, optuna_search
from deepmetric.suites.suite import RunSpec, Suite, build_config, merge, point_dirname
from deepmetric.training.config import ConfigError

SELECT_KEYS = {"validation_classes", "seeds", "metric", "eval_every", "iterations", "grid", "methods"}
SELECT_KEYS |= SEARCH_KEYS


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"select grid {key}: expected a non-empty list of values, got {values!r}")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def trained_methods(
    suite: Suite, out_dir: Path, only: list[str] | None = None
) -> list[tuple[str, dict[str, Any], list[int], str]]:
    """(method, overrides with the validation split, selection seeds, metric) of every method that trains."""
    select = suite.select or {}
    unknown = sorted(set(select) - SELECT_KEYS)
    if unknown:
        raise ConfigError(f"select.{unknown[0]}: unknown key; select has {sorted(SELECT_KEYS)}")
    check_search(select)
    fraction = float(select.get("validation_classes", 0.25))
    seeds = select.get("seeds", suite.seeds[:1])
    per_method = select.get("methods") or {}
    for key in per_method:
        suite.method(key)  # names a real method
    found = []
    for method in suite.methods:
        if only and method.key not in only:
            continue
        overrides = merge(method.overrides, {"data.validation_classes": fraction})
        if "eval_every" in select:
            overrides = merge(overrides, {"train.eval_every": int(select["eval_every"])})
        if "metric" in select:
            overrides = merge(overrides, {"train.best_metric": str(select["metric"])})
        probe = build_config(suite, overrides, {}, seeds[0], method.key, out_dir)
        if probe.train.iterations == 0:
            continue  # nothing is trained, nothing to select
        found.append((method.key, overrides, seeds, probe.train.best_metric))
    return found


def selection_specs(
    suite: Suite, out_dir: Path, only: list[str] | None = None
) -> dict[str, list[tuple[dict, RunSpec]]]:
    """Per method, its grid's (candidate overrides, run spec) pairs."""
    select = suite.select or {}
    per_method = select.get("methods") or {}
    specs: dict[str, list[tuple[dict, RunSpec]]] = {}
    for key, overrides, seeds, _ in trained_methods(suite, out_dir, only):
        grid = {**(select.get("grid") or {}), **(per_method.get(key) or {})}
        for candidate in _grid_points(grid):
            folder = out_dir / "_select" / key
            folder = folder.joinpath(*(point_dirname(f, v) for f, v in candidate.items()))
            for seed in seeds:
                config = build_config(
                    suite, merge(overrides, candidate), {}, seed, f"{suite.name}-select-{key}", out_dir
                )
                spec = RunSpec(suite.method(key), dict(candidate), seed, config, folder / f"seed{seed}")
                specs.setdefault(key, []).append((candidate, spec))
    return specs


def choose(candidates: list[tuple[dict, RunSpec]], metric: str, pick_iterations: bool) -> dict[str, Any]:
    """The best candidate by mean validation score over its seeds."""
    scores: dict[str, list[float]] = {}
    iterations: dict[str, list[int]] = {}
    by_key: dict[str, dict] = {}
    for candidate, spec in candidates:
        metrics = read_metrics(spec.run_dir)
        if metrics.get("selected_on") != "validation" or metrics.get("best_metric") != metric:
            raise ValueError(f"{spec.run_dir}: metrics.json holds no validation score for {metric!r}")
        key = yaml.safe_dump(candidate, sort_keys=True)
        by_key[key] = candidate
        scores.setdefault(key, []).append(float(metrics["best_score"]))
        iterations.setdefault(key, []).append(int(metrics["best_iteration"]))
    best = max(scores, key=lambda k: np.mean(scores[k]))  # max keeps the first of equal scores
    chosen = dict(by_key[best])
    if pick_iterations:
        chosen["train.iterations"] = round(float(np.mean(iterations[best])))
    return {
        "overrides": chosen,
        "validation_score": float(np.mean(scores[best])),
        "metric": metric,
        "candidates": [
            {"overrides": by_key[k], "validation_score": float(np.mean(v)), "best_iteration": iterations[k]}
            for k, v in scores.items()
        ],
    }


def run_selection(
    suite: Suite, out_dir: str | Path, only: list[str] | None = None, announce=print
) -> dict[str, dict[str, Any]]:
    """Run (or skip, when finished) every candidate, pick per method, write ``OUT/selected.yaml``.

    Returns ``{method: {"overrides": ..., "validation_score": ..., ...}}``.
    """
    out_dir = Path(out_dir)
    select = suite.select or {}
    pick_iterations = bool(select.get("iterations", True))
    selected = {}
    if select.get("search", "grid") == "optuna":
        for key, overrides, seeds, metric in trained_methods(suite, out_dir, only):
            pairs = optuna_search(suite, key, overrides, seeds, metric, out_dir, announce)
            selected[key] = {**choose(pairs, metric, pick_iterations), "search": "optuna"}
    else:
        specs = selection_specs(suite, out_dir, only)
        run_grid([spec for pairs in specs.values() for _, spec in pairs], out_dir / "timings.jsonl", announce)
        for key, pairs in specs.items():
            selected[key] = choose(pairs, pairs[0][1].config.train.best_metric, pick_iterations)
    path = out_dir / "selected.yaml"
    previous = yaml.safe_load(path.read_text()) if path.is_file() else {}
    path.write_text(yaml.safe_dump({**(previous or {}), **selected}, sort_keys=False))
    return selected
