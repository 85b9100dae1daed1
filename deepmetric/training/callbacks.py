"""Trainer callbacks: logging and progress, called by the trainer at fixed points of a run.

The trainer calls, on rank 0 only (the rank that writes the run folder):

- ``on_start(trainer)`` once the model is built and, when resuming, the checkpoint loaded;
- ``on_step(iteration, loss)`` after every optimisation step;
- ``on_iteration(record)`` every ``train.log_every`` iterations: ``iteration``, ``loss`` (the mean over
  those iterations), ``lr``, ``elapsed`` and the batch statistics of :mod:`deepmetric.training.statistics`
  (of the last batch);
- ``on_evaluation(record)`` at each evaluation: ``iteration``, ``eval`` and, with validation classes,
  ``validation`` metrics (iteration 0 is the untrained model);
- ``on_checkpoint(name, path)`` after ``last`` or ``best`` was written;
- ``on_end(metrics)`` with the final metrics (those of ``metrics.json``);
- ``close()`` always, after the end or a failure.

Built-ins, by name in :data:`CALLBACKS`: ``jsonl`` (``log.jsonl``) and ``progress`` (a tqdm bar) on
every run, ``tensorboard`` with ``train.tensorboard: true`` and ``mlflow`` with ``train.mlflow: true``.
Pass more with ``Trainer(..., callbacks=[...])``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from deepmetric.registry import Registry
from deepmetric.training.config import ConfigError, ExperimentConfig, to_dict
from deepmetric.training.run_folder import RunFolder

if TYPE_CHECKING:
    from deepmetric.training.trainer import Trainer

CALLBACKS = Registry("callback")

LOGGERS_HINT = "pip install 'deepmetric[loggers]'"


class Callback:
    """Base class: every hook does nothing; override those you need."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, iteration: int, loss: float) -> None:
        pass

    def on_iteration(self, record: dict[str, Any]) -> None:
        pass

    def on_evaluation(self, record: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, name: str, path: Path) -> None:
        pass

    def on_end(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@CALLBACKS.register("jsonl")
class JsonlLogger(Callback):
    """``log.jsonl``: one JSON object per iteration record and per evaluation record."""

    def __init__(self, run: RunFolder, config: ExperimentConfig) -> None:
        self.run = run

    def on_start(self, trainer: Trainer) -> None:
        if trainer.resume:  # lines after the checkpoint are the killed run's lost work
            self.run.truncate_log(trainer.iteration)
        else:
            self.run.create_log(self.run.log_file)

    def on_iteration(self, record: dict[str, Any]) -> None:
        self.run.append_log(record)

    def on_evaluation(self, record: dict[str, Any]) -> None:
        self.run.append_log(record)


@CALLBACKS.register("progress")
class ProgressBar(Callback):
    """A tqdm bar over the iterations, showing the loss of the last logged window."""

    def __init__(self, run: RunFolder, config: ExperimentConfig) -> None:
        self.total = config.train.iterations
        self.bar: Any = None

    def on_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=self.total, initial=trainer.iteration, desc="train", dynamic_ncols=True)

    def on_step(self, iteration: int, loss: float) -> None:
        self.bar.update()

    def on_iteration(self, record: dict[str, Any]) -> None:
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """``train/loss``, ``eval/recall@1``...: the numbers of a record (curves and the iteration left out)."""
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars |= {f"{key}/{k}": v for k, v in value.items() if isinstance(v, int | float)}
        elif key != "iteration" and isinstance(value, int | float):
            scalars[f"train/{key}"] = value
    return scalars


@CALLBACKS.register("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``)."""

    def __init__(self, run: RunFolder, config: ExperimentConfig) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                f"train.tensorboard is on but tensorboard is not installed: {LOGGERS_HINT}"
            ) from None
        self.make_writer = SummaryWriter
        self.run = run
        self.writer: Any = None

    def on_start(self, trainer: Trainer) -> None:
        # a resumed run drops the events after its checkpoint, as log.jsonl drops its lines
        purge = trainer.iteration if trainer.resume else None
        self.writer = self.make_writer(str(self.run.tensorboard_dir), purge_step=purge)

    def _write(self, record: dict[str, Any]) -> None:
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, record["iteration"])

    def on_iteration(self, record: dict[str, Any]) -> None:
        self._write(record)

    def on_evaluation(self, record: dict[str, Any]) -> None:
        self._write(record)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@CALLBACKS.register("mlflow")
class MLflowLogger(Callback):
    """An MLflow run in the file store ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``):
    the config as parameters, the records as metrics, the final metrics as ``trained/...``.

    A resumed run continues the same MLflow run; MLflow keeps every logged point, so the iterations
    between the checkpoint and the kill appear twice.
    """

    def __init__(self, run: RunFolder, config: ExperimentConfig) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError(f"train.mlflow is on but mlflow is not installed: {LOGGERS_HINT}") from None
        # MLflow 3 refuses file stores unless allowed; the store is the run folder's own, not shared
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = mlflow
        self.run, self.config = run, config
        self.client: Any = None
        self.run_id: str | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.client = self.mlflow.MlflowClient(tracking_uri=self.run.mlflow_dir.resolve().as_uri())
        experiment = self.client.get_experiment_by_name(self.config.name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(self.config.name)
        )
        previous = self.client.search_runs([experiment_id], max_results=1) if trainer.resume else []
        if previous:
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=self.run.path.name).info.run_id
        for key, value in _flatten(to_dict(self.config)).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def _write(self, record: dict[str, Any]) -> None:
        for tag, value in _scalars(record).items():
            # MLflow metric names allow no "@": recall@1 is logged as recall_at_1
            self.client.log_metric(self.run_id, tag.replace("@", "_at_"), value, step=record["iteration"])

    def on_iteration(self, record: dict[str, Any]) -> None:
        self._write(record)

    def on_evaluation(self, record: dict[str, Any]) -> None:
        self._write(record)

    def on_end(self, metrics: dict[str, Any]) -> None:
        self._write({"iteration": metrics["iterations"], "trained": metrics["trained"]})
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.run_id = None

    def close(self) -> None:
        if self.run_id is not None:  # ended by a failure
            self.client.set_terminated(self.run_id, status="FAILED")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_callbacks(run: RunFolder, config: ExperimentConfig) -> list[Callback]:
    """The built-in callbacks ``config`` asks for (raises ConfigError when a logger is not installed)."""
    names = ["jsonl", "progress"]
    names += [name for name in ("tensorboard", "mlflow") if getattr(config.train, name)]
    return [CALLBACKS.lookup(name)(run, config) for name in names]
