"""Recipe search with Optuna's TPE sampler, beside the grid of a suite's ``select`` section.

    select:
      search: optuna              # instead of a grid (default: grid)
      trials: 12                  # trials per method
      seed: 0                     # the sampler's seed (default 0): the same suite proposes the same trials
      startup_trials: 4           # random trials before TPE models the results (default: min(10, trials // 2))
      validation_classes: 0.2     # as for the grid: every trial trains with these classes held out
      space:                      # tried for every trained method
        optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        optimizer.weight_decay: {low: 0.0, high: 1.0e-3}
        train.iterations: {low: 500, high: 1500, step: 250}   # integer bounds: an integer field
        data.augment: [none, light]                           # a list: one of these values
      methods:                    # extra per-method dimensions, added to ``space``
        normalized_softmax: {loss.temperature: {low: 0.02, high: 0.2, log: true}}

A range (``low``, ``high``, optional ``log`` or ``step``) samples a float, or an integer when both bounds
are integers; a list samples one of its values (any YAML value, mappings included). Each trial is a run
folder ``OUT/_select/<method>/trial<k>/seed<s>`` trained on the training classes with
``validation_classes`` held out, scored like the grid (mean over ``select.seeds`` of the best validation
``select.metric``); the best trial wins. ``OUT/_select/<method>/trials.yaml`` records every trial.

Resuming: the sampler is seeded and proposes the same trials from the same results, so a search that is
started again skips its finished trials, resumes a killed one from its checkpoint and goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deepmetric.extras import require
from deepmetric.suites.runner import read_metrics, run_grid
from deepmetric.suites.suite import RunSpec, Suite, build_config, format_value, merge
from deepmetric.training.config import ConfigError

SEARCH_KEYS = {"search", "trials", "seed", "startup_trials", "space"}
RANGE_KEYS = {"low", "high", "log", "step"}
SEARCHES = ("grid", "optuna")


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return value
    try:
        return float(value)  # YAML reads 1e-4 (no decimal point) as text
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


class Dimension:
    """One searched config field: a float or integer range, or a list of values."""

    def __init__(self, field: str, spec: Any, where: str) -> None:
        self.field, self.where = field, where
        self.choices: list[Any] | None = None
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: the list of values is empty")
            self.choices = list(spec)
            return
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where}: expected a range {{low, high[, log | step]}} or a list of values, got {spec!r}"
            )
        unknown = sorted(set(spec) - RANGE_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; a range has {sorted(RANGE_KEYS)}")
        for key in ("low", "high"):
            if key not in spec:
                raise ConfigError(f"{where}.{key}: missing; a range needs low and high")
        self.low = _number(spec["low"], f"{where}.low")
        self.high = _number(spec["high"], f"{where}.high")
        self.log = spec.get("log", False)
        if not isinstance(self.log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {self.log!r}")
        self.step = None if spec.get("step") is None else _number(spec["step"], f"{where}.step")
        self.integer = all(isinstance(v, int) for v in (spec["low"], spec["high"])) and (
            self.step is None or isinstance(self.step, int)
        )
        if not self.low < self.high:
            raise ConfigError(f"{where}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}.log: a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ConfigError(f"{where}: give log or step, not both")
        if self.step is not None and self.step <= 0:
            raise ConfigError(f"{where}.step: expected a positive number, got {self.step}")

    @property
    def plain_choices(self) -> bool:
        return self.choices is not None and all(
            v is None or isinstance(v, bool | int | float | str) for v in self.choices
        )

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this field (categorical choices that are not plain values go by their text)."""
        if self.choices is not None:
            if self.plain_choices:
                return trial.suggest_categorical(self.field, self.choices)
            texts = [format_value(v) for v in self.choices]
            return self.choices[texts.index(trial.suggest_categorical(self.field, texts))]
        if self.integer:
            return trial.suggest_int(self.field, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.field, self.low, self.high, step=self.step, log=self.log)

    def examples(self) -> list[Any]:
        """Values that must all make valid configs (checked before any trial runs)."""
        if self.choices is not None:
            return self.choices
        return [self.low, self.high]


def check_search(select: dict[str, Any]) -> None:
    """Refuse grid keys in a search and search keys in a grid (one line naming the key)."""
    search = select.get("search", "grid")
    if search not in SEARCHES:
        raise ConfigError(f"select.search: expected one of {list(SEARCHES)}, got {search!r}")
    if search == "grid":
        extra = sorted(k for k in SEARCH_KEYS - {"search"} if k in select)
        if extra:
            raise ConfigError(f"select.{extra[0]}: only used with select.search: optuna")
        return
    if "grid" in select:
        raise ConfigError("select.grid: a grid is not searched by optuna; give select.space instead")
    trials = select.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"select.trials: expected a positive integer, got {trials!r}")
    for key in ("seed", "startup_trials"):
        value = select.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"select.{key}: expected a non-negative integer, got {value!r}")
    space = select.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError("select.space: give the searched fields (field: {low, high} or a list of values)")


def dimensions(select: dict[str, Any], method: str) -> list[Dimension]:
    """The searched fields of one method: ``select.space`` and ``select.methods.<method>``."""
    dims = [Dimension(str(k), v, f"select.space.{k}") for k, v in (select.get("space") or {}).items()]
    extra = (select.get("methods") or {}).get(method) or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"select.methods.{method}: expected a mapping of field -> range or list")
    dims += [Dimension(str(k), v, f"select.methods.{method}.{k}") for k, v in extra.items()]
    return dims


def _check_space(suite: Suite, overrides: dict[str, Any], dims: list[Dimension], out_dir: Path) -> None:
    """Every bound and choice must make a valid config: a misspelt field fails now, not at trial 7."""
    for dim in dims:
        for value in dim.examples():
            try:
                build_config(suite, merge(overrides, {dim.field: value}), {}, 0, "check", out_dir)
            except ConfigError as error:
                raise ConfigError(f"{dim.where}: {value!r} makes an invalid config: {error}") from None


def _trial_params(trial: Any) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in trial.params.items()}


def optuna_search(
    suite: Suite,
    method: str,
    overrides: dict[str, Any],
    seeds: list[int],
    metric: str,
    out_dir: Path,
    announce: Callable[[str], None] = print,
) -> list[tuple[dict, RunSpec]]:
    """Run (or resume) one method's trials; returns (candidate overrides, run spec) pairs, as the grid's."""
    select = suite.select or {}
    dims = dimensions(select, method)
    _check_space(suite, overrides, dims, out_dir)
    optuna = require("optuna", "select.search: optuna")
    trials = int(select["trials"])
    startup = int(select.get("startup_trials", min(10, trials // 2)))
    sampler = optuna.samplers.TPESampler(seed=int(select.get("seed", 0)), n_startup_trials=max(1, startup))
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name=f"{suite.name}-{method}")
    folder = out_dir / "_select" / method
    pairs: list[tuple[dict, RunSpec]] = []
    records = []
    for number in range(trials):
        trial = study.ask()
        candidate = {dim.field: dim.suggest(trial) for dim in dims}
        specs = []
        for seed in seeds:
            config = build_config(
                suite, merge(overrides, candidate), {}, seed, f"{suite.name}-select-{method}", out_dir
            )
            specs.append(
                RunSpec(
                    suite.method(method),
                    dict(candidate),
                    seed,
                    config,
                    folder / f"trial{number}" / f"seed{seed}",
                )
            )
        announce(f"{method}: trial {number + 1}/{trials} {_describe(candidate)}")
        run_grid(specs, out_dir / "timings.jsonl", announce)
        scores, iterations = [], []
        for spec in specs:
            metrics = read_metrics(spec.run_dir)
            if metrics.get("selected_on") != "validation" or metrics.get("best_metric") != metric:
                raise ValueError(f"{spec.run_dir}: metrics.json holds no validation score for {metric!r}")
            scores.append(float(metrics["best_score"]))
            iterations.append(int(metrics["best_iteration"]))
        score = float(np.mean(scores))
        if not math.isfinite(score):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, score)
        pairs += [(candidate, spec) for spec in specs]
        records.append(
            {
                "trial": number,
                "params": _trial_params(trial),
                "overrides": candidate,
                "validation_score": score,
                "best_iteration": iterations,
                "runs": [str(spec.run_dir) for spec in specs],
            }
        )
        folder.mkdir(parents=True, exist_ok=True)
        document = {"method": method, "metric": metric, "sampler": "TPE", "seed": select.get("seed", 0)}
        document["trials"] = records
        (folder / "trials.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return pairs


def _describe(candidate: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in candidate.items())
