"""The run folder: file modes, status.json, failed runs, no test-set selection, a repeatable demo."""

import json
import os
import stat

import numpy as np
import pytest

from deepmetric.cli import demo_config_path, main
from deepmetric.training import Trainer, load_model, resume, train
from deepmetric.training.checkpoint import atomic_write
from deepmetric.training.run_folder import RunFolder
from tests.test_training import TINY, tiny_config

SHORT = ["train.iterations=4", "train.eval_every=0", "train.checkpoint_every=0"]


@pytest.fixture
def strict_umask():
    """A umask of 077, under which a plain temporary file would be 0600."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def modes(folder):
    return {
        str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode)
        for path in folder.rglob("*")
        if path.is_file()
    }


def fail_at(monkeypatch, iteration, error: BaseException | None = None):
    real_step = Trainer._step

    def step(self, inputs, labels):
        if self.iteration == iteration:
            raise error or RuntimeError("the loss exploded")
        return real_step(self, inputs, labels)

    monkeypatch.setattr(Trainer, "_step", step)
    return real_step


def test_atomic_write_gives_mode_0644(tmp_path, strict_umask):
    atomic_write(tmp_path / "a.bin", lambda handle: handle.write(b"x"))
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_run_files_are_readable_by_all_and_nothing_is_selected_on_test(tmp_path, strict_umask):
    run = tmp_path / "run"
    metrics = train(tiny_config(*SHORT), run)
    found = modes(run)
    for name in (
        "config.yaml",
        "status.json",
        "metrics.json",
        "log.jsonl",
        "train.log",
        "checkpoints/last.pt",
    ):
        assert name in found, name
    assert {name: mode for name, mode in found.items() if mode != 0o644} == {}
    assert "embeddings/test_embeddings.npy" in found
    # no validation classes: no best.pt, nothing reported as selected
    assert metrics["selected_on"] is None and metrics["best_iteration"] is None
    assert not (run / "checkpoints/best.pt").exists()
    assert RunFolder(run).selected_checkpoint() == "last"
    with pytest.raises(FileNotFoundError, match="validation"):
        load_model(run, "best")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == 4 and status["last_checkpoint"] == 4


def test_failed_run_without_checkpoint_is_marked_then_replaced(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # not the run's: must survive
    real_step = fail_at(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="exploded"):
        train(tiny_config(*SHORT), run)
    status = RunFolder(run).read_status()
    assert status["state"] == "failed" and status["iteration"] == 2
    assert status["error"] == "RuntimeError: the loss exploded"
    assert "the loss exploded" in (run / "train.log").read_text()
    assert not (run / "checkpoints/last.pt").exists()

    monkeypatch.setattr(Trainer, "_step", real_step)
    train(tiny_config(*SHORT), run)  # the same command again
    assert RunFolder(run).read_status()["state"] == "completed"
    assert (run / "notes.txt").read_text() == "mine"
    assert "exploded" not in (run / "train.log").read_text()  # the failed run's files were replaced
    iterations = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert iterations == sorted(iterations) and iterations[0] == 0


def test_failed_run_with_checkpoint_is_kept_for_resume(tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = ["train.iterations=4", "train.eval_every=0", "train.checkpoint_every=2"]
    real_step = fail_at(monkeypatch, 3)
    with pytest.raises(RuntimeError):
        train(tiny_config(*config), run)
    with pytest.raises(FileExistsError, match=r"failed at iteration 3 .*--resume.*iteration 2"):
        train(tiny_config(*config), run)
    monkeypatch.setattr(Trainer, "_step", real_step)
    metrics = resume(run)
    assert metrics["iterations"] == 4 and RunFolder(run).read_status()["state"] == "completed"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_config(*config), run)


def test_interrupted_run_is_marked_interrupted(tmp_path, monkeypatch):
    fail_at(monkeypatch, 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(*SHORT), tmp_path / "run")
    assert RunFolder(tmp_path / "run").read_status()["state"] == "interrupted"


def test_clear_removes_only_the_runs_files(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.save_embeddings("test", np.zeros((2, 3)), np.arange(2))
    run.write_json(run.metrics_file, {})
    run.save_checkpoint("last", {"iteration": 0})
    (run.embeddings_dir / "mine.npy").write_bytes(b"")
    (run.checkpoints_dir / "other.pt").write_bytes(b"")
    run.clear()
    assert sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*")) == [
        "checkpoints",
        "checkpoints/other.pt",
        "embeddings",
        "embeddings/mine.npy",
    ]


def test_train_command_prints_the_final_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(demo_config_path()), *TINY, *SHORT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "untrained" in printed and f"{metrics['trained']['recall@1']:9.4f}" in printed


def test_demo_is_repeatable_and_never_replaces_another_run(tmp_path, capsys):
    out = tmp_path / "demo"
    demo = ["demo", "--iterations", "2", "--out", str(out), *TINY]
    assert main(demo) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(demo) == 0  # replaces the earlier demo run
    assert "replacing the earlier demo run" in capsys.readouterr().out
    assert RunFolder(out).read_status()["origin"] == "demo" and RunFolder(out).completed()
    assert (out / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    train(tiny_config(*SHORT), other)
    capsys.readouterr()
    assert main(["demo", "--iterations", "2", "--out", str(other), *TINY]) == 2
    assert "did not write" in capsys.readouterr().err
    assert RunFolder(other).completed()
