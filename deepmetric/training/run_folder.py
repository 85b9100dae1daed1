"""One run folder: every file name of a training run, every write into it and every read from it.

The trainer, the command line, the benchmark runner and the report all go through :class:`RunFolder`, so
the layout documented in ``docs/run-folder.md`` lives here alone. Every file is written atomically
(a temporary file beside it, then a rename) with mode 0644, so that a crash never leaves a half-written
file and another user or a web server can read the results.

``status.json`` says what became of the run: ``running``, ``completed``, ``failed`` (with the error) or
``interrupted`` (Ctrl-C), the iteration reached, the iteration of the last checkpoint and which command
started it (``origin``). A failed run that never wrote a checkpoint is replaced when the same command
runs again; one with a checkpoint is resumed with ``--resume``; a completed run is never replaced by
``train``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from deepmetric.io import FILE_MODE, atomic_write, write_json, write_text
from deepmetric.training.checkpoint import load_checkpoint, save_checkpoint
from deepmetric.training.config import ExperimentConfig, load_config, to_dict

log = logging.getLogger("deepmetric")

CHECKPOINT_NAMES = ("last", "best")
STATES = ("running", "completed", "failed", "interrupted")


class RunFolder:
    """The folder ``path`` of one training run; ``origin`` names the command that writes it."""

    CONFIG = "config.yaml"
    STATUS = "status.json"
    METRICS = "metrics.json"
    LOG = "log.jsonl"
    TEXT_LOG = "train.log"
    REPORT = "report.html"
    CALIBRATION = "calibration.json"  # the match threshold, written by ``deepmetric calibrate``
    CHECKPOINTS = "checkpoints"
    EMBEDDINGS = "embeddings"
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlruns"

    def __init__(self, path: str | Path, origin: str = "train") -> None:
        self.path = Path(path)
        self.origin = origin

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------ paths

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status_file(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def text_log_file(self) -> Path:
        return self.path / self.TEXT_LOG

    @property
    def report_file(self) -> Path:
        return self.path / self.REPORT

    @property
    def calibration_file(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def embeddings_dir(self) -> Path:
        return self.path / self.EMBEDDINGS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def mlflow_dir(self) -> Path:
        return self.path / self.MLFLOW

    def checkpoint_file(self, name: str) -> Path:
        if name not in CHECKPOINT_NAMES:
            raise ValueError(f"unknown checkpoint {name!r}; choose one of {list(CHECKPOINT_NAMES)}")
        return self.checkpoints_dir / f"{name}.pt"

    def embeddings_file(self, split: str) -> Path:
        return self.embeddings_dir / f"{split}_embeddings.npy"

    def labels_file(self, split: str) -> Path:
        return self.embeddings_dir / f"{split}_labels.npy"

    # ------------------------------------------------------------ writes

    def write_json(self, path: Path, data: Any) -> None:
        write_json(path, data)

    def write_text(self, path: Path, text: str) -> Path:
        write_text(path, text)
        return path

    def save_config(self, config: ExperimentConfig) -> None:
        self.write_text(self.config_file, yaml.safe_dump(to_dict(config), sort_keys=False))

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        self.write_json(self.metrics_file, metrics)

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.checkpoint_file(name)
        save_checkpoint(path, state)
        return path

    def save_embeddings(self, split: str, embeddings: np.ndarray, labels: np.ndarray) -> Path:
        path = self.embeddings_file(split)
        atomic_write(path, lambda handle: np.save(handle, np.asarray(embeddings, dtype=np.float32)))
        atomic_write(self.labels_file(split), lambda handle: np.save(handle, np.asarray(labels)))
        return path

    def create_log(self, path: Path) -> Path:
        """An empty file for appending (``log.jsonl``, ``train.log``), readable by all like every write."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.chmod(path, FILE_MODE)
        return path

    def append_log(self, record: dict[str, Any]) -> None:
        """One JSON line in ``log.jsonl`` (appended: a killed run loses at most its last line)."""
        if not self.log_file.exists():
            self.create_log(self.log_file)
        with open(self.log_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_log(self, iteration: int) -> None:
        """Drop the log lines after ``iteration`` (written by a killed run after its last checkpoint)."""
        if not self.log_file.exists():
            return
        kept = [line for line in self.log_file.read_text().splitlines() if _line_iteration(line) <= iteration]
        self.write_text(self.log_file, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------ status

    def read_status(self) -> dict[str, Any] | None:
        """The content of ``status.json`` (None for a folder without one, e.g. one written before it existed)."""
        if not self.status_file.is_file():
            return None
        try:
            status = json.loads(self.status_file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.status_file} is not valid JSON: {error}") from None
        if not isinstance(status, dict) or status.get("state") not in STATES:
            raise ValueError(f"{self.status_file} holds no run state (one of {list(STATES)})")
        return status

    def write_status(self, state: str, fresh: bool = False, **fields: Any) -> None:
        """Set the run's state, keeping the fields written before (``started``, ``last_checkpoint``...)
        unless ``fresh``."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; choose one of {list(STATES)}")
        previous = {} if fresh else self.read_status() or {}
        status = {**previous, "state": state, "origin": previous.get("origin", self.origin), **fields}
        status["updated"] = _now()
        self.write_json(self.status_file, status)

    def holds_run(self) -> bool:
        """Whether a run (any state) was started here."""
        return (
            self.status_file.is_file()
            or self.checkpoint_file("last").is_file()
            or self.metrics_file.is_file()
        )

    def completed(self) -> bool:
        status = self.read_status()
        if status is not None:
            return status["state"] == "completed"
        return self.metrics_file.is_file()  # a folder written before status.json existed

    # ------------------------------------------------------------ start, replace

    def start(self, config: ExperimentConfig, resume: bool) -> None:
        """Check that training may start here, replace a failed run without checkpoint, write the config
        and mark the run ``running``. Raises FileExistsError for a run that must not be replaced."""
        self.check_start(resume)
        status = self.read_status()
        if not resume and self.holds_run():
            log.info(
                "replacing the %s run in %s (it wrote no checkpoint)", status and status["state"], self.path
            )
            self.clear()
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        self.save_config(config)
        fields: dict[str, Any] = {"started": _now()} if not resume else {"resumed": _now()}
        self.write_status("running", fresh=not resume, error=None, **fields)

    def check_start(self, resume: bool) -> None:
        """Read-only: refuse to start over a run with a checkpoint, or to resume one without."""
        last = self.checkpoint_file("last")
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
            return
        if not (last.is_file() or self.metrics_file.is_file()):
            return  # nothing here, or a failed run that never wrote a checkpoint: replaced by start()
        status = self.read_status()
        if status is not None and status["state"] in ("failed", "interrupted"):
            error = f" ({status['error']})" if status.get("error") else ""
            raise FileExistsError(
                f"run folder {self.path} holds a run {status['state']} at iteration {status.get('iteration')}"
                f"{error}; pass --resume to continue it from its checkpoint at iteration "
                f"{status.get('last_checkpoint')}, or choose another name or --out folder"
            )
        raise FileExistsError(
            f"run folder {self.path} already holds a run; pass --resume to continue it, "
            "or choose another name or --out folder"
        )

    def owned_files(self) -> list[Path]:
        """The files and folders of this run that exist: what :meth:`clear` removes (nothing else)."""
        names = [self.CONFIG, self.STATUS, self.METRICS, self.LOG, self.TEXT_LOG, self.REPORT]
        found = [self.path / name for name in names if (self.path / name).is_file()]
        found += [path for path in (self.tensorboard_dir, self.mlflow_dir) if path.is_dir()]
        found += [
            self.checkpoint_file(name) for name in CHECKPOINT_NAMES if self.checkpoint_file(name).is_file()
        ]
        found += list(self.checkpoints_dir.glob(".*.pt.*.tmp"))  # a save cut short
        if self.embeddings_dir.is_dir():
            found += sorted(self.embeddings_dir.glob("*_embeddings.npy"))
            found += sorted(self.embeddings_dir.glob("*_labels.npy"))
        return found

    def clear(self) -> None:
        """Remove this run's files, keeping anything else a user put in the folder."""
        for path in self.owned_files():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        for folder in (self.checkpoints_dir, self.embeddings_dir):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    # ------------------------------------------------------------ reads

    def load_config(self) -> ExperimentConfig:
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder: {self.CONFIG} not found")
        return load_config(self.config_file)

    def read_metrics(self) -> dict[str, Any]:
        if not self.metrics_file.is_file():
            raise FileNotFoundError(f"{self.path}: {self.METRICS} not found (run not finished)")
        return json.loads(self.metrics_file.read_text())

    def selected_checkpoint(self) -> str:
        """The checkpoint whose test metrics ``metrics.json`` reports: ``best`` when the run selected on
        validation classes, else ``last``."""
        if self.metrics_file.is_file():
            return self.read_metrics().get("trained_checkpoint") or "last"
        return "last"

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.checkpoint_file(name)
        if name == "best" and not path.is_file() and self.checkpoint_file("last").is_file():
            raise FileNotFoundError(
                f"{path} not found: a run without validation classes (data.validation_classes) selects "
                "no checkpoint; use the last one"
            )
        return load_checkpoint(path, map_location=map_location)

    def load_embeddings(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The saved ``(embeddings, labels)`` of ``split``."""
        path, labels = self.embeddings_file(split), self.labels_file(split)
        if not (path.is_file() and labels.is_file()):
            raise FileNotFoundError(f"no saved embeddings {path}; run `deepmetric embed {self.path}` first")
        return np.load(path), np.load(labels)


def _line_iteration(line: str) -> float:
    """The iteration of a log line; a line cut short by a kill counts as past every checkpoint."""
    try:
        return json.loads(line)["iteration"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
