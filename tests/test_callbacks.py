"""Trainer callbacks and the batch statistics they log; TensorBoard and MLflow loggers when installed."""

import importlib.util
import itertools
import json
import sys

import pytest
import torch

from deepmetric.losses import ContrastiveLoss, TripletLoss
from deepmetric.miners import MINERS
from deepmetric.training import train
from deepmetric.training.callbacks import Callback
from deepmetric.training.config import ConfigError
from deepmetric.training.statistics import active_fraction, batch_statistics
from tests.test_training import tiny_config

FAST = ["train.iterations=4", "train.eval_every=2", "train.log_every=2", "train.checkpoint_every=0"]


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- statistics against the definitions


def batch(seed=0, n=12, classes=3, dim=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator), torch.arange(n) % classes


def reference_triplet_active(loss, embeddings, labels, triplets):
    matrix = loss.distance(embeddings)
    sign = -1 if loss.distance.is_similarity else 1
    active = [sign * (matrix[a, p] - matrix[a, n]) + loss.margin > 0 for a, p, n in triplets]
    return sum(bool(x) for x in active) / len(active)


def all_triplets(labels):
    n = len(labels)
    return [
        (a, p, q)
        for a, p, q in itertools.product(range(n), repeat=3)
        if a != p and labels[a] == labels[p] and labels[a] != labels[q]
    ]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("margin", [0.0, 0.3, 5.0])
def test_triplet_active_fraction_matches_the_definition(distance, margin):
    embeddings, labels = batch()
    loss = TripletLoss(margin=margin, distance=distance)
    expected = reference_triplet_active(loss, embeddings, labels, all_triplets(labels))
    assert active_fraction(loss, embeddings, labels, None) == pytest.approx(expected)
    mined = MINERS.lookup("batch_hard")()(embeddings, labels)
    triplets = list(zip(*(t.tolist() for t in mined), strict=True))
    expected = reference_triplet_active(loss, embeddings, labels, triplets)
    assert active_fraction(loss, embeddings, labels, mined) == pytest.approx(expected)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_contrastive_active_fraction_matches_the_definition(distance):
    embeddings, labels = batch(1)
    loss = ContrastiveLoss(pos_margin=0.5, neg_margin=1.5, distance=distance)
    if distance == "cosine":
        loss = ContrastiveLoss(pos_margin=0.8, neg_margin=0.1, distance=distance)
    matrix, n = loss.distance(embeddings), len(labels)
    flags = []
    for i, j in itertools.product(range(n), repeat=2):
        if i == j:
            continue
        d = matrix[i, j].item()
        if labels[i] == labels[j]:
            flags.append(d < loss.pos_margin if distance == "cosine" else d > loss.pos_margin)
        else:
            flags.append(d > loss.neg_margin if distance == "cosine" else d < loss.neg_margin)
    assert active_fraction(loss, embeddings, labels, None) == pytest.approx(sum(flags) / len(flags))
    pairs = MINERS.lookup("all_pairs")()(embeddings, labels)
    assert active_fraction(loss, embeddings, labels, pairs) == pytest.approx(sum(flags) / len(flags))


def test_batch_statistics_count_the_mined_tuples_and_norms():
    embeddings, labels = batch(2)
    pairs = MINERS.lookup("all_pairs")()(embeddings, labels)
    stats = batch_statistics(embeddings, labels, pairs, ContrastiveLoss())
    norms = embeddings.norm(dim=1)
    assert stats["positive_pairs"] == 12 * 3 and stats["negative_pairs"] == 12 * 8
    assert stats["embedding_norm_mean"] == pytest.approx(norms.mean().item())
    assert stats["embedding_norm_std"] == pytest.approx(norms.std().item())
    triplets = MINERS.lookup("batch_hard")()(embeddings, labels)
    stats = batch_statistics(embeddings, labels, triplets, TripletLoss())
    assert stats["triplets"] == len(triplets[0]) and 0 <= stats["active_fraction"] <= 1
    from deepmetric.losses import LOSSES

    assert "active_fraction" not in batch_statistics(
        embeddings, labels, None, LOSSES.lookup("multi_similarity")()
    )


# ---------------------------------------------------------------- callbacks in a run


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, trainer):
        self.calls.append(("start", trainer.iteration))

    def on_step(self, iteration, loss):
        self.calls.append(("step", iteration))

    def on_iteration(self, record):
        self.calls.append(("iteration", record["iteration"]))

    def on_evaluation(self, record):
        self.calls.append(("evaluation", record["iteration"]))

    def on_checkpoint(self, name, path):
        assert path.is_file()
        self.calls.append(("checkpoint", name))

    def on_end(self, metrics):
        self.calls.append(("end", metrics["iterations"]))

    def close(self):
        self.calls.append(("close",))


def test_hooks_and_logged_statistics(tmp_path):
    recorder = Recorder()
    config = tiny_config(*FAST, "loss.name=triplet", "miner.name=batch_hard")
    train(config, tmp_path / "run", callbacks=[recorder])
    assert recorder.calls == [
        ("start", 0),
        ("evaluation", 0),
        ("step", 1),
        ("step", 2),
        ("iteration", 2),
        ("evaluation", 2),
        ("checkpoint", "last"),
        ("step", 3),
        ("step", 4),
        ("iteration", 4),
        ("evaluation", 4),
        ("checkpoint", "last"),
        ("end", 4),
        ("close",),
    ]
    records = [r for r in log_records(tmp_path / "run") if "loss" in r]
    assert [r["iteration"] for r in records] == [2, 4]
    for record in records:
        # batch-hard mining: one triplet per anchor of the 16-sample batch
        assert record["triplets"] == 16 and 0 <= record["active_fraction"] <= 1
        assert record["embedding_norm_mean"] == pytest.approx(1.0, abs=1e-5)  # normalized embeddings
        assert {"lr", "elapsed", "embedding_norm_std"} <= set(record)


def test_callbacks_are_closed_when_a_run_fails(tmp_path, monkeypatch):
    from deepmetric.training import Trainer

    def broken(self, inputs, labels):
        raise RuntimeError("broken step")

    monkeypatch.setattr(Trainer, "_step", broken)
    recorder = Recorder()
    with pytest.raises(RuntimeError):
        train(tiny_config(*FAST), tmp_path / "run", callbacks=[recorder])
    assert recorder.calls[-1] == ("close",) and ("end", 4) not in recorder.calls


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_missing_logger_is_a_config_error_before_anything_is_written(tmp_path, monkeypatch, logger):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=rf"train\.{logger}.*deepmetric\[loggers\]"):
        train(tiny_config(*FAST, f"train.{logger}=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_logger_writes_the_records(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(*FAST, "train.tensorboard=true"), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    records = log_records(tmp_path / "run")
    losses = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == losses
    evals = [(r["iteration"], r["eval"]["recall@1"]) for r in records if "eval" in r]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("eval/recall@1")] == evals


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed")
def test_mlflow_logger_writes_params_and_metrics(tmp_path):
    import mlflow

    metrics = train(tiny_config(*FAST, "train.mlflow=true", "name=tiny"), tmp_path / "run")
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "run/mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["loss.name"] == "contrastive"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    records = [r for r in log_records(tmp_path / "run") if "loss" in r]
    assert [(m.step, pytest.approx(m.value)) for m in history] == [
        (r["iteration"], r["loss"]) for r in records
    ]
    assert run.data.metrics["trained/recall_at_1"] == pytest.approx(metrics["trained"]["recall@1"])
