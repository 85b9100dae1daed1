"""Issue 19, a newcomer's first hour: overrides anywhere on the line, data.root relative to the config
file, per-file class halves of .npz files, readers' accepted inputs, small_cnn's input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deepmetric.training
from deepmetric.cli import main
from deepmetric.data import get_dataset
from deepmetric.models import build_backbone
from deepmetric.models.weights import download_failed
from deepmetric.training.config import load_config, save_config


@pytest.fixture
def captured_train(monkeypatch):
    """``deepmetric train`` without training: the config and run folder it would train are recorded."""
    calls = []
    monkeypatch.setattr(
        deepmetric.training,
        "train",
        lambda config, run_dir: calls.append((config, run_dir)) or {"untrained": {}, "trained": {}},
    )
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "cfg.yaml", "--out", "r", "loss.margin=0.3", "train.iterations=7"],
        ["train", "cfg.yaml", "loss.margin=0.3", "--out", "r", "train.iterations=7"],
        ["train", "--out", "r", "cfg.yaml", "loss.margin=0.3", "train.iterations=7"],
        ["--debug", "train", "cfg.yaml", "loss.margin=0.3", "--out", "r", "train.iterations=7"],
    ],
)
def test_overrides_anywhere_on_the_line(argv, captured_train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("name: x\n")
    assert main(argv) == 0
    ((config, run_dir),) = captured_train
    assert config.loss.params == {"margin": 0.3} and config.train.iterations == 7 and str(run_dir) == "r"


def test_demo_overrides_after_out(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(deepmetric.training, "train", lambda config, run_dir: seen.append(config) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stop right after the config was built
        main(["demo", "--out", str(tmp_path / "d"), "train.iterations=3", "--iterations", "5"])
    assert seen[0].train.iterations == 5  # --iterations is applied after the overrides


def test_relative_data_root_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "project" / "configs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    config_file = tmp_path / "project" / "configs" / "c.yaml"
    config_file.write_text("data: {name: folder, root: ../images}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config(config_file)
    assert config.data.root == str((tmp_path / "project" / "images").resolve())
    # an override is relative to where the user typed it
    assert load_config(config_file, ["data.root=mine"]).data.root == str(
        (tmp_path / "elsewhere" / "mine").resolve()
    )
    # the config saved in a run folder reads the same data from any directory
    save_config(config, tmp_path / "run.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "run.yaml").data.root == config.data.root


def test_shipped_configs_point_at_the_shared_data_from_any_directory(tmp_path, monkeypatch):
    from pathlib import Path

    repository = Path(__file__).resolve().parents[1]
    shared = (repository.parent / "shared" / "data").resolve()  # beside the repository (links followed)
    monkeypatch.chdir(tmp_path)
    for name in (
        "cub_frozen_triplet.yaml",
        "cub_subset_best.yaml",
        "hashing_cub.yaml",
        "hashing_cifar10.yaml",
    ):
        root = Path(load_config(repository / "configs" / name).data.root)
        assert root in (shared, shared / "CUB_100_subset")


def test_npz_class_halves_from_separate_files(tmp_path):
    """MNIST-style: train and test files hold the same 10 classes; train takes 0-4 of one, test 5-9 of the other."""
    for name, count in (("train.npz", 40), ("test.npz", 20)):
        labels = np.arange(count) % 10
        np.savez(
            tmp_path / name, images=np.full((count, 4, 4), labels[:, None, None], np.uint8), labels=labels
        )
    splits = {
        "train": {"file": "train.npz", "classes": "train"},
        "test": {"file": "test.npz", "classes": "test"},
    }
    train = get_dataset("npz", tmp_path, "train", splits=splits)
    test = get_dataset("npz", tmp_path, "test", splits=splits)
    assert train.class_ids.tolist() == [0, 1, 2, 3, 4] and len(train) == 20
    assert test.class_ids.tolist() == [5, 6, 7, 8, 9] and len(test) == 10
    assert np.asarray(test[0][0]).max() == 5  # the images of class 5 of the test file
    whole = get_dataset("npz", tmp_path, "test", splits={"test": "test.npz"})
    assert whole.class_ids.tolist() == list(range(10))


def test_npz_float_labels_that_are_whole_numbers_are_read(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 4, 4), np.uint8), labels=np.array([0.0, 1.0, 2.0, 3.0]))
    assert get_dataset("npz", tmp_path / "d.npz", "all").class_ids.tolist() == [0, 1, 2, 3]


def test_folder_min_images_and_csv_byte_order_mark(tmp_path):
    for name, count in (("a", 1), ("b", 2), ("c", 2), ("d", 3)):
        for k in range(count):
            (tmp_path / "img" / name).mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4)).save(tmp_path / "img" / name / f"{k}.png")
    with pytest.raises(ValueError, match=r"'a' \(1\)"):
        get_dataset("folder", tmp_path / "img", "train")
    assert get_dataset("folder", tmp_path / "img", "train", min_images=1).class_names == ["a", "b"]
    (tmp_path / "list.csv").write_text("\ufeffpath,label\nimg/b/0.png,b\nimg/b/1.png,b\n", encoding="utf-8")
    assert len(get_dataset("csv", tmp_path / "list.csv", "all")) == 2  # the header is read as a header


def test_small_cnn_takes_28_pixel_inputs_unchanged():
    backbone = build_backbone("small_cnn", width=8)
    assert backbone.input_spec.image_size == 28 and backbone.feature_dim == 16  # width doubles
    assert backbone(torch.zeros(2, 1, 28, 28)).shape == (2, 16, 14, 14)
    with pytest.raises(ValueError, match="image_size"):
        build_backbone("small_cnn", image_size=0)


def test_failed_download_is_an_os_error():
    error = download_failed("vgg19", ConnectionError("offline"))
    assert isinstance(error, OSError) and isinstance(error, RuntimeError) and "weights=PATH" in str(error)
