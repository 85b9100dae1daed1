"""Running a suite's grid: each grid point is a normal run folder trained with deepmetric.training.train.

Resumable: a completed run (``status.json``) is skipped, a run with ``checkpoints/last.pt`` that did not
complete (killed or failed) is resumed from that checkpoint, any other run is trained from scratch. A run folder
whose saved ``config.yaml`` differs from the grid point's config is refused (its results would belong to
another protocol): delete it or choose another output folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from deepmetric.suites.suite import RunSpec
from deepmetric.training import resume, train
from deepmetric.training.config import ConfigError, load_yaml, to_dict
from deepmetric.training.run_folder import RunFolder

log = logging.getLogger("deepmetric.bench")


def _plain(values: Any) -> Any:
    """Data as it reads back from YAML (tuples become lists, floats keep their value)."""
    return yaml.safe_load(yaml.safe_dump(values, sort_keys=False))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{prefix}: saved {a!r}, suite {b!r}"


def check_run_config(spec: RunSpec) -> None:
    """Refuse a run folder that holds a run of another config."""
    path = RunFolder(spec.run_dir).config_file
    if not path.is_file():
        return
    difference = _first_difference(load_yaml(path), _plain(to_dict(spec.config)))
    if difference:
        raise ConfigError(
            f"{spec.run_dir} holds a run with another config ({difference}); "
            "delete that folder or choose another --out folder"
        )


def run_state(spec: RunSpec) -> str:
    """``finished``, ``killed`` (a checkpoint to resume from) or ``new``."""
    run = RunFolder(spec.run_dir)
    if run.completed():
        return "finished"
    if run.checkpoint_file("last").is_file():
        return "killed"
    return "new"


def run_one(spec: RunSpec) -> str:
    """Train, resume or skip one grid point; returns what was done."""
    check_run_config(spec)
    state = run_state(spec)
    if state == "finished":
        return "skipped"
    if state == "killed":
        resume(spec.run_dir)
        return "resumed"
    train(spec.config, spec.run_dir)
    return "trained"


def run_grid(
    specs: Iterable[RunSpec],
    timings: Path | None = None,
    announce: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every grid point in order; ``timings`` (a JSON-lines file) records each run's wall time."""
    specs = list(specs)
    records = []
    for number, spec in enumerate(specs, 1):
        started = time.time()
        announce(f"[{number}/{len(specs)}] {spec.run_dir}")
        action = run_one(spec)
        record = {"run": str(spec.run_dir), "action": action, "seconds": round(time.time() - started, 2)}
        records.append(record)
        if action != "skipped":
            announce(f"    {action} in {record['seconds']:.1f} s")
            if timings is not None:
                timings.parent.mkdir(parents=True, exist_ok=True)
                with open(timings, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
    return records


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return RunFolder(run_dir).read_metrics()


def training_seconds(run_dir: Path) -> float | None:
    """The training loop's time from the run's log (None for a run without training iterations)."""
    path = RunFolder(run_dir).log_file
    if not path.is_file():
        return None
    elapsed = [json.loads(line).get("elapsed") for line in path.read_text().splitlines() if line.strip()]
    elapsed = [e for e in elapsed if e is not None]
    return float(elapsed[-1]) if elapsed else None
