"""Iteration-based training with P x K batches, periodic evaluation and exact resume.

Reproducibility: every random draw of an iteration (which samples, their augmentation, dropout, random
miners) is seeded from ``(config.seed, iteration)``, so a run killed and resumed from its last checkpoint
continues with exactly the batches and updates an uninterrupted run would have made.

The run folder (:class:`~deepmetric.training.run_folder.RunFolder`, ``docs/run-folder.md``) holds
``config.yaml``, ``status.json``, ``checkpoints/last.pt`` (and ``best.pt`` when checkpoints are selected on
validation classes), ``log.jsonl``, ``train.log``, ``metrics.json`` and ``embeddings/``. Logging and
progress are :mod:`~deepmetric.training.callbacks`; a run that raises is marked ``failed`` in
``status.json`` (``interrupted`` for Ctrl-C) before the error goes on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.evaluation import evaluate
from deepmetric.samplers import PKSampler
from deepmetric.training import distributed
from deepmetric.training.callbacks import Callback, build_callbacks
from deepmetric.training.checkpoint import rng_state, set_rng_state
from deepmetric.training.components import (
    accepts_progress,
    batch_indices,
    build_batch_sampler,
    build_loss,
    build_miner,
    build_model,
    build_optimizer,
    build_scheduler,
)
from deepmetric.training.config import ExperimentConfig
from deepmetric.training.data import ExperimentData, build_data
from deepmetric.training.embed import augment_database, embed_dataset, save_evaluation_embeddings
from deepmetric.training.run_folder import RunFolder
from deepmetric.training.statistics import batch_statistics

log = logging.getLogger("deepmetric")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (the run seed, the iteration, a position)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class _SeededSamples(torch.utils.data.Dataset):
    """Reads ``(index, seed)`` keys: each sample's augmentation is drawn from its own seed.

    Returns ``(input, index)``: the trainer takes labels from its own contiguous label array.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue CUDA seeding (slow per sample)
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            return self.dataset[index][0], index


class _Batches(torch.utils.data.Sampler):
    """P x K batches for iterations ``start .. stop-1``, keyed by (index, per-sample seed)."""

    def __init__(self, sampler: PKSampler, seed: int, start: int, stop: int) -> None:
        self.sampler, self.seed, self.start, self.stop = sampler, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = len(self.sampler)
        iteration = self.start
        while iteration < self.stop:
            epoch, offset = divmod(iteration, per_epoch)
            self.sampler.set_epoch(epoch)
            for position, batch in enumerate(self.sampler):
                if position < offset:
                    continue
                # seeded by the position in the global batch: ranks draw different augmentations
                first = self.sampler.rank * self.sampler.batch_size
                yield [(int(i), derive_seed(self.seed, iteration, first + j)) for j, i in enumerate(batch)]
                iteration += 1
                if iteration >= self.stop:
                    return


class Trainer:
    """Trains the model of ``config`` in ``run_dir``; ``fit()`` returns the final metrics.

    ``callbacks`` are called on rank 0 besides the built-ins the config asks for (see
    :mod:`deepmetric.training.callbacks`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | RunFolder,
        resume: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.config = config
        self.run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.run_dir = self.run.path
        self.resume = resume
        self.device = distributed.setup(resolve_device(config.train.device))  # cuda:LOCAL_RANK under torchrun
        self.run.check_start(resume)
        self.callbacks: list[Callback] = []
        if distributed.is_main():  # rank 0 alone writes the run folder
            self.callbacks = [*build_callbacks(self.run, config), *(callbacks or [])]
        self._prepare_run_dir()
        try:
            self._build()
        except BaseException as error:
            self._fail(error)
            raise

    def _build(self) -> None:
        config = self.config
        seed_everything(config.seed)
        self.model = build_model(config).to(self.device)
        with distributed.main_first():  # downloads and feature caches are written once
            self.data: ExperimentData = build_data(config, self.model.backbone, self.device)
        if self.data.features:
            self.model.freeze_cached_part()
        self.loss = build_loss(
            config, self.data.num_classes, self.model.embedding_size, len(self.data.train_labels)
        ).to(self.device)
        distributed.broadcast_state(self.loss)
        self.forward = distributed.parallel_forward(self.model, self.data.features, self.device)
        self.miner = build_miner(config)
        self.optimizer = build_optimizer(config, self.model, self.loss)
        self.scheduler = build_scheduler(config, self.optimizer)
        amp = config.train.amp
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.amp_dtype == torch.float16)
        self.iteration = 0
        self.best: dict[str, Any] = {"score": None, "iteration": None}
        self.untrained: dict[str, float] | None = None
        self._batch_stats: dict[str, float] = {}  # of the last step, for the iteration records

    # ------------------------------------------------------------ run folder and logs

    def _prepare_run_dir(self) -> None:
        if not distributed.is_main():  # rank 0 alone writes the run folder
            self._log_handler: logging.Handler = logging.NullHandler()
            return
        self.run.start(self.config, self.resume)
        if not self.resume:
            self.run.create_log(self.run.text_log_file)
        handler = logging.FileHandler(self.run.text_log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler

    def _call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback (there are none on ranks other than 0)."""
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def _close(self) -> None:
        for callback in self.callbacks:
            callback.close()
        log.removeHandler(self._log_handler)
        self._log_handler.close()

    def _fail(self, error: BaseException) -> None:
        """Mark the run failed (interrupted for Ctrl-C) with its error, and close the logs."""
        if distributed.is_main():
            state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            log.error("run %s at iteration %d: %s", state, getattr(self, "iteration", 0), message)
            self.run.write_status(state, iteration=getattr(self, "iteration", 0), error=message)
        self._close()

    # ------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "untrained": self.untrained,
            "rng": rng_state(),
            "generators": {name: g.get_state() for name, g in self._generators().items()},
            "config": self.config,
        }

    def _generators(self) -> dict[str, torch.Generator]:
        """Random generators owned by the miner or the loss (e.g. random-negative mining): checkpointed so
        that a resumed run draws what an uninterrupted one would."""
        owners = {"miner": self.miner, "loss": self.loss}
        return {
            f"{owner}.{attribute}": value
            for owner, module in owners.items()
            if module is not None
            for attribute, value in vars(module).items()
            if isinstance(value, torch.Generator)
        }

    def _save(self, name: str) -> None:
        if distributed.is_main():
            path = self.run.save_checkpoint(name, self._state())
            if name == "last":
                self.run.write_status("running", iteration=self.iteration, last_checkpoint=self.iteration)
            self._call("on_checkpoint", name, path)
        distributed.barrier()  # no rank reads a checkpoint before it is complete

    def _load(self, name: str) -> None:
        state = self.run.load_checkpoint(name, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best, self.untrained = state["iteration"], state["best"], state["untrained"]
        set_rng_state(state["rng"])
        for name, generator in self._generators().items():
            generator.set_state(state["generators"][name])

    # ------------------------------------------------------------ evaluation

    def evaluate_split(self, name: str) -> dict[str, float]:
        """Metrics of the current model on ``test`` (or query/gallery) or on ``validation``."""
        config = self.config.eval
        options = {
            "metrics": config.metrics,
            "distance": config.distance,
            "device": self.device,
            "memory_budget_mb": config.memory_budget_mb,
        }
        if name == "validation":
            embeddings = augment_database(config, self.embed(self.data.validation))
            return self._evaluate(embeddings, self.data.validation.labels, **options)
        sets = self.data.evaluation
        if "gallery" in sets:
            query, gallery = self.embed(sets["query"]), augment_database(config, self.embed(sets["gallery"]))
            return self._evaluate(query, sets["query"].labels, gallery, sets["gallery"].labels, **options)
        return self._evaluate(
            augment_database(config, self.embed(sets["test"])), sets["test"].labels, **options
        )

    @staticmethod
    def _evaluate(*arrays: Any, **options: Any) -> dict[str, float]:
        """Metrics computed by rank 0 and shared, so that all ranks agree on the best checkpoint."""
        return distributed.broadcast_object(evaluate(*arrays, **options) if distributed.is_main() else None)

    def embed(self, dataset: torch.utils.data.Dataset) -> np.ndarray:
        """Embeddings in dataset order; under torch.distributed each rank embeds a shard."""

        def run(part: torch.utils.data.Dataset) -> np.ndarray:
            return embed_dataset(
                self.model,
                part,
                self.device,
                batch_size=self.config.eval.batch_size,
                features=self.data.features,
                num_workers=self.config.data.num_workers,
                binarize=self.config.eval.binarize,
            )

        distributed.broadcast_state(self.model, parameters=False)  # rank 0's BatchNorm statistics
        return distributed.embed_in_shards(run, dataset, self.device)

    def _evaluate_and_select(self) -> dict[str, float]:
        """Evaluate on the test split and, with validation classes, select ``best.pt`` on them: never on
        the test classes, whose numbers are what the run reports. Returns the test metrics."""
        test = self.evaluate_split("test")
        record: dict[str, Any] = {"iteration": self.iteration, "eval": test}
        if self.data.validation is not None:
            record["validation"] = self.evaluate_split("validation")
        self._call("on_evaluation", record)
        log.info("iteration %d: %s", self.iteration, _format(test))
        if self.data.validation is None:
            return test
        metric = self.config.train.best_metric
        score = record["validation"][metric]
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "iteration": self.iteration, "metric": metric}
            self._save("best")
        return test

    # ------------------------------------------------------------ training

    def _loader(self, start: int, stop: int) -> torch.utils.data.DataLoader:
        sampler = build_batch_sampler(self.config, self.data.train_labels)  # P x K, or pairs/triplets
        return torch.utils.data.DataLoader(
            _SeededSamples(self.data.train),
            batch_sampler=_Batches(sampler, self.config.seed, start, stop),
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.config.train.amp else nullcontext()
        )
        with autocast:
            embeddings = self.forward(inputs)
        embeddings = embeddings.float()  # losses run in float32 for stable exponentials
        # the loss and the miner see the global batch; its loss is not rescaled (distributed.py says why)
        embeddings, labels = distributed.gather_batch(embeddings, labels)
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        if indices is None:  # tuple batches (sampler.mode pairs/triplets) carry their own pairs/triplets
            indices = batch_indices(self.config.sampler, labels)
        loss = self.loss(embeddings, labels, indices)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at iteration {self.iteration}; lower optimizer.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.loss.parameters())
        if self.config.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self._log_due(self.iteration + 1):  # about the cost of the loss again: the logged batch only
            self._batch_stats = batch_statistics(embeddings, labels, indices, self.loss)
        return loss.item()

    def _log_due(self, iteration: int) -> bool:
        """Whether an iteration record is written after ``iteration`` steps."""
        every = self.config.train.log_every
        return bool(every) and (iteration % every == 0 or iteration == self.config.train.iterations)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.iterations`` and return the final metrics; a failure marks the run failed."""
        try:
            metrics = self._fit()
        except BaseException as error:
            self._fail(error)
            raise
        self._close()
        return metrics

    def _fit(self) -> dict[str, Any]:
        config = self.config.train
        if self.resume:
            self._load("last")
            log.info("resumed from iteration %d", self.iteration)
        self._call("on_start", self)
        if not self.resume:  # the start competes in the selection: training never ends below it
            self.untrained = self._evaluate_and_select()
            log.info("untrained: %s", _format(self.untrained))
        label_map = torch.as_tensor(self.data.train_labels)
        loader = self._loader(self.iteration, config.iterations)
        started, running = time.time(), []
        for inputs, positions in loader:
            seed_everything(derive_seed(self.config.seed, self.iteration, 2**31))
            labels = label_map[positions].to(self.device)
            loss = self._step(inputs.to(self.device, non_blocking=True), labels)
            if accepts_progress(self.loss):
                self.loss.set_progress(self.iteration, config.iterations)
            self.iteration += 1
            running.append(loss)
            self._call("on_step", self.iteration, loss)
            if self._log_due(self.iteration):
                record = {
                    "iteration": self.iteration,
                    "loss": float(np.mean(running)),
                    "lr": self.optimizer.param_groups[-1]["lr"],
                    "elapsed": round(time.time() - started, 3),
                    **self._batch_stats,
                }
                self._call("on_iteration", record)
                running = []
            evaluating = (config.eval_every and self.iteration % config.eval_every == 0) or (
                self.iteration == config.iterations
            )
            if evaluating:
                self._evaluate_and_select()
            if evaluating or (config.checkpoint_every and self.iteration % config.checkpoint_every == 0):
                self._save("last")
        if self.iteration == 0 or (config.iterations == 0 and not self.run.checkpoint_file("last").exists()):
            if self.resume:  # a fresh run evaluated the start above
                self._evaluate_and_select()
            self._save("last")
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the selected checkpoint on the test split, save embeddings and metrics.json.

        Without validation classes nothing is selected: the final model (``last.pt``) is reported and
        ``selected_on`` is null, so that no choice is ever made on the test classes.
        """
        validated = self.data.validation is not None
        if validated:
            self.model.load_state_dict(self.run.load_checkpoint("best", map_location=self.device)["model"])
        trained = self.evaluate_split("test")
        metrics = {
            "untrained": self.untrained,
            "trained": trained,
            "trained_checkpoint": "best" if validated else "last",
            "best_iteration": self.best["iteration"] if validated else None,
            "best_metric": self.config.train.best_metric if validated else None,
            "best_score": self.best["score"] if validated else None,
            "selected_on": "validation" if validated else None,
            "iterations": self.iteration,
        }
        if distributed.is_main():
            self.run.save_metrics(metrics)
        if self.config.eval.save_embeddings:
            self.save_embeddings()
        log.info("trained (%s checkpoint): %s", metrics["trained_checkpoint"], _format(trained))
        if distributed.is_main():
            self.run.write_status("completed", iteration=self.iteration)
            self._call("on_end", metrics)
        return metrics

    def save_embeddings(self) -> None:
        """The evaluation splits' embeddings in ``embeddings/``; every rank embeds its shard."""
        save_evaluation_embeddings(
            self.run if distributed.is_main() else None, self.config, self.data.evaluation, self.embed
        )


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def train(
    config: ExperimentConfig,
    run_dir: str | Path | RunFolder | None = None,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` (default ``output_dir/name``) and return its metrics."""
    if run_dir is None:
        run_dir = Path(config.output_dir) / config.name
    return Trainer(config, run_dir, resume=resume, callbacks=callbacks).fit()


def resume(run_dir: str | Path | RunFolder, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Continue a killed run from its last checkpoint, with the config saved in the run folder."""
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    return Trainer(run.load_config(), run, resume=True, callbacks=callbacks).fit()
