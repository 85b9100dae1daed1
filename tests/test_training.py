import json

import numpy as np
import pytest
import torch

from deepmetric.training import Trainer, load_model, resume, train
from deepmetric.training.checkpoint import atomic_write
from tests.demo_configs import demo_config

TINY = [
    "model.backbone_options={in_channels: 1, image_size: 8, width: 8}",
    "model.embedding_size=16",
    "loss.name=contrastive",
    "sampler.classes_per_batch=4",
    "sampler.samples_per_class=4",
    "train.iterations=12",
    "train.eval_every=6",
    "train.checkpoint_every=4",
    "train.log_every=2",
    "eval.metrics=[recall@1, nmi]",
    "optimizer.lr=0.01",
]


def tiny_config(*extra: str):
    return demo_config(*TINY, *extra)


def log_without_times(run_dir):
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("elapsed", None)
    return lines


def test_run_folder_contents(tmp_path):
    metrics = train(tiny_config(), tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.json",
        "log.jsonl",
        "train.log",
        "checkpoints/last.pt",
        "status.json",
    ):
        assert (run / name).is_file(), name
    # no validation classes: nothing is selected (never on the test classes), so there is no best.pt
    assert not (run / "checkpoints/best.pt").exists()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["selected_on"] is None and saved["trained_checkpoint"] == "last"
    assert set(saved["untrained"]) == set(saved["trained"]) == {"recall@1", "nmi"}
    assert saved == json.loads(json.dumps(metrics))
    embeddings = np.load(run / "embeddings/test_embeddings.npy")
    labels = np.load(run / "embeddings/test_labels.npy")
    assert embeddings.shape == (len(labels), 16) and set(labels) == {5, 6, 7, 8, 9}
    evals = [line for line in log_without_times(run) if "eval" in line]
    assert [line["iteration"] for line in evals] == [0, 6, 12]


@pytest.mark.parametrize(
    "extra",
    [[], ["loss.name=triplet", "miner.name=random_negative"]],
    ids=["contrastive", "triplet+random_negative"],
)
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch, extra):
    train(tiny_config(*extra), tmp_path / "straight")

    real_step = Trainer._step

    def crashing_step(self, inputs, labels):
        if self.iteration == 10:  # between the checkpoints at 8 and 12
            raise RuntimeError("simulated kill")
        return real_step(self, inputs, labels)

    monkeypatch.setattr(Trainer, "_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(tiny_config(*extra), tmp_path / "crashed")
    assert torch.load(tmp_path / "crashed/checkpoints/last.pt", weights_only=False)["iteration"] == 8
    monkeypatch.setattr(Trainer, "_step", real_step)
    resume(tmp_path / "crashed")

    straight = json.loads((tmp_path / "straight/metrics.json").read_text())
    resumed = json.loads((tmp_path / "crashed/metrics.json").read_text())
    assert resumed["trained"] == straight["trained"]
    assert resumed["untrained"] == straight["untrained"]
    assert log_without_times(tmp_path / "crashed") == log_without_times(tmp_path / "straight")
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "crashed/checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    train(tiny_config("train.iterations=2", "train.eval_every=0"), tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Trainer(tiny_config(), tmp_path / "empty", resume=True)


def test_validation_classes_select_best_checkpoint(tmp_path):
    config = tiny_config(
        "data.validation_classes=0.4",
        "sampler.classes_per_batch=3",
        "train.iterations=4",
        "train.eval_every=2",
    )
    metrics = train(config, tmp_path / "run")
    assert metrics["selected_on"] == "validation" and metrics["trained_checkpoint"] == "best"
    evals = [line for line in log_without_times(tmp_path / "run") if "validation" in line]
    assert [line["iteration"] for line in evals] == [0, 2, 4]  # the untrained start competes too
    best = max(evals, key=lambda line: line["validation"]["recall@1"])  # the first of equals
    assert metrics["best_iteration"] == best["iteration"]


def test_load_model_reproduces_saved_embeddings(tmp_path):
    from deepmetric.data import get_dataset
    from deepmetric.data.transforms import build_transform
    from deepmetric.training import embed_dataset

    train(tiny_config("train.iterations=3"), tmp_path / "run")
    model = load_model(tmp_path / "run")
    dataset = get_dataset("digits", split="test", transform=build_transform(model.input_spec, train=False))
    embeddings = embed_dataset(model, dataset)
    saved = np.load(tmp_path / "run/embeddings/test_embeddings.npy")
    np.testing.assert_allclose(embeddings, saved, atol=1e-5)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "state.bin"
    atomic_write(path, lambda handle: handle.write(b"old"))

    def failing(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_frozen_features_without_a_head_evaluate_but_refuse_to_train(tmp_path):
    """The untrained baseline of a frozen backbone (no head, nothing to optimise) is an evaluation-only
    run; asking it to train is refused with a message naming the settings."""
    from deepmetric.training.config import ConfigError

    baseline = [
        "model.frozen=true",
        "model.embedding_size=0",
        "model.feature_cache=" + str(tmp_path / "cache"),
    ]
    metrics = train(tiny_config(*baseline, "train.iterations=0"), tmp_path / "untrained")
    assert metrics["trained"] == metrics["untrained"] and 0 < metrics["untrained"]["recall@1"] <= 1
    with pytest.raises(ConfigError, match=r"nothing to train.*model\.embedding_size"):
        train(tiny_config(*baseline), tmp_path / "refused")
