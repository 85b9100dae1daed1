"""Iteration-based training with P x K batches, periodic evaluation and exact resume.

Reproducibility: every random draw of an iteration (which samples, their augmentation, dropout, random
miners) is seeded from ``(config.seed, iteration)``, so a run killed and resumed from its last checkpoint
continues with exactly the batches and updates an uninterrupted run would have made.

The run folder (see ``docs/run-folder.md``) holds ``config.yaml``, ``checkpoints/{last,best}.pt``
(written atomically), ``log.jsonl``, ``train.log``, ``metrics.json`` and ``embeddings/``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric import hashing  # noqa: F401  (registers the hashing losses)
from deepmetric.evaluation import evaluate
from deepmetric.samplers import PKSampler
from deepmetric.training import distributed
from deepmetric.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
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
from deepmetric.training.config import ExperimentConfig, load_config, save_config
from deepmetric.training.data import ExperimentData, build_data
from deepmetric.training.embed import augment_database, embed_dataset

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
    """Trains the model of ``config`` in ``run_dir``; ``fit()`` returns the final metrics."""

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.device = distributed.setup(resolve_device(config.train.device))  # cuda:LOCAL_RANK under torchrun
        self.checkpoints = self.run_dir / "checkpoints"
        self._prepare_run_dir()
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
        self.writer = self._tensorboard() if config.train.tensorboard and distributed.is_main() else None

    # ------------------------------------------------------------ run folder and logs

    def _prepare_run_dir(self) -> None:
        last = self.checkpoints / "last.pt"
        if last.exists() and not self.resume:
            raise FileExistsError(
                f"run folder {self.run_dir} already holds a run; pass --resume to continue it, "
                "or choose another name or --out folder"
            )
        if self.resume and not last.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
        if not distributed.is_main():  # rank 0 alone writes the run folder
            self._log_handler: logging.Handler = logging.NullHandler()
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("train.tensorboard is on but tensorboard is not installed: pip install tensorboard")
            return None
        return SummaryWriter(self.run_dir / "tensorboard")

    def _log_json(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, dict):
                    for metric, number in value.items():
                        self.writer.add_scalar(f"{key}/{metric}", number, record["iteration"])
                elif key != "iteration":
                    self.writer.add_scalar(f"train/{key}", value, record["iteration"])

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (the killed run's lost work)."""
        path = self.run_dir / "log.jsonl"
        if path.exists() and distributed.is_main():
            kept = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line)["iteration"] <= self.iteration
            ]
            path.write_text("".join(line + "\n" for line in kept))

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
            save_checkpoint(self.checkpoints / name, self._state())
        distributed.barrier()  # no rank reads a checkpoint before it is complete

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
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
        options = {"metrics": config.metrics, "distance": config.distance, "device": self.device}
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

    def _evaluate_and_select(self) -> None:
        test = self.evaluate_split("test")
        record: dict[str, Any] = {"iteration": self.iteration, "eval": test}
        selection = test
        if self.data.validation is not None:
            selection = record["validation"] = self.evaluate_split("validation")
        self._log_json(record)
        metric = self.config.train.best_metric
        score = selection[metric]
        log.info("iteration %d: %s", self.iteration, _format(test))
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "iteration": self.iteration, "metric": metric}
            self._save("best.pt")

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
        return loss.item()

    def fit(self) -> dict[str, Any]:
        config = self.config.train
        if self.resume:
            self._load(self.checkpoints / "last.pt")
            self._truncate_log()
            log.info("resumed from iteration %d", self.iteration)
        else:
            if distributed.is_main():
                (self.run_dir / "log.jsonl").write_text("")
            self.untrained = self.evaluate_split("test")
            self._log_json({"iteration": 0, "eval": self.untrained})
            log.info("untrained: %s", _format(self.untrained))
        label_map = torch.as_tensor(self.data.train_labels)
        loader = self._loader(self.iteration, config.iterations)
        progress = tqdm(
            total=config.iterations,
            initial=self.iteration,
            desc="train",
            dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        started, running = time.time(), []
        for inputs, positions in loader:
            seed_everything(derive_seed(self.config.seed, self.iteration, 2**31))
            labels = label_map[positions].to(self.device)
            loss = self._step(inputs.to(self.device, non_blocking=True), labels)
            if accepts_progress(self.loss):
                self.loss.set_progress(self.iteration, config.iterations)
            self.iteration += 1
            running.append(loss)
            progress.update()
            if config.log_every and (
                self.iteration % config.log_every == 0 or self.iteration == config.iterations
            ):
                record = {
                    "iteration": self.iteration,
                    "loss": float(np.mean(running)),
                    "lr": self.optimizer.param_groups[-1]["lr"],
                    "elapsed": round(time.time() - started, 3),
                }
                self._log_json(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                running = []
            evaluating = (config.eval_every and self.iteration % config.eval_every == 0) or (
                self.iteration == config.iterations
            )
            if evaluating:
                self._evaluate_and_select()
            if evaluating or (config.checkpoint_every and self.iteration % config.checkpoint_every == 0):
                self._save("last.pt")
        progress.close()
        if self.iteration == 0 or (config.iterations == 0 and not (self.checkpoints / "last.pt").exists()):
            self._evaluate_and_select()
            self._save("last.pt")
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the selected checkpoint on the test split, save embeddings and metrics.json."""
        selected = "best" if self.data.validation is not None else "last"
        if selected == "best":
            state = load_checkpoint(self.checkpoints / "best.pt", map_location=self.device)
            self.model.load_state_dict(state["model"])
        trained = self.evaluate_split("test")
        metrics = {
            "untrained": self.untrained,
            "trained": trained,
            "trained_checkpoint": selected,
            "best_iteration": self.best["iteration"],
            "best_metric": self.config.train.best_metric,
            "best_score": self.best["score"],
            "selected_on": "validation" if self.data.validation is not None else "test",
            "iterations": self.iteration,
        }
        if distributed.is_main():
            write_json(self.run_dir / "metrics.json", metrics)
        if self.config.eval.save_embeddings:
            self.save_embeddings()
        log.info("trained (%s checkpoint): %s", selected, _format(trained))
        if self.writer is not None:
            self.writer.close()
        log.removeHandler(self._log_handler)
        self._log_handler.close()
        return metrics

    def save_embeddings(self) -> None:
        folder = self.run_dir / "embeddings"
        if distributed.is_main():
            folder.mkdir(exist_ok=True)
        for name, dataset in self.data.evaluation.items():
            split = self.config.data.test_split if name == "test" else name
            embeddings = self.embed(dataset).astype(np.float32)  # every rank embeds its shard
            if distributed.is_main():
                np.save(folder / f"{split}_embeddings.npy", embeddings)
                np.save(folder / f"{split}_labels.npy", np.asarray(dataset.labels))


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def train(
    config: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` (default ``output_dir/name``) and return its metrics."""
    run_dir = Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.name
    return Trainer(config, run_dir, resume=resume).fit()


def resume(run_dir: str | Path) -> dict[str, Any]:
    """Continue a killed run from its last checkpoint, with the config saved in the run folder."""
    run_dir = Path(run_dir)
    return Trainer(load_config(run_dir / "config.yaml"), run_dir, resume=True).fit()
