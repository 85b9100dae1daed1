"""deepmetric bench's Optuna search (select.search: optuna): trials on validation classes, reproducible,
resumable, recorded and reported; a bad search space is refused with one line naming the key."""

import json

import pytest
import yaml

from deepmetric.suites import run_suite, suite_from_dict
from deepmetric.suites.selection import run_selection
from deepmetric.training.config import ConfigError

BASE = {
    "data": {"name": "digits", "augment": "none"},
    "model": {
        "backbone": "small_cnn",
        "backbone_options": {"in_channels": 1, "image_size": 8, "width": 8},
        "embedding_size": 16,
    },
    "loss": {"name": "contrastive", "neg_margin": 0.8},
    "sampler": {"classes_per_batch": 3, "samples_per_class": 4},
    "optimizer": {"lr": 0.01},
    "train": {"iterations": 4, "eval_every": 2, "log_every": 2},
    "eval": {"metrics": ["recall@1", "map@r"], "save_embeddings": False},
}
METHODS = {
    "untrained": {"overrides": {"train.iterations": 0, "model.embedding_size": 0}},
    "contrastive": {"label": "Contrastive"},
}
SPACE = {
    "optimizer.lr": {"low": "1e-4", "high": 0.05, "log": True},  # YAML's text 1e-4 is read as a number
    "loss.neg_margin": [0.5, 0.8, 1.0],
    "model.embedding_size": {"low": 8, "high": 16, "step": 8},
}


def search_suite(**select):
    values = {"validation_classes": 0.4, "search": "optuna", "trials": 3, "seed": 1, "space": SPACE, **select}
    return suite_from_dict({"name": "tiny", "base": BASE, "seeds": [0], "methods": METHODS, "select": values})


def quiet(_):
    pass


def test_optuna_search_scores_trials_on_validation_and_resumes(tmp_path):
    pytest.importorskip("optuna")
    selected = run_selection(search_suite(), tmp_path / "a", announce=quiet)
    assert list(selected) == ["contrastive"]  # the untrained baseline trains nothing
    choice = selected["contrastive"]
    record = yaml.safe_load((tmp_path / "a/_select/contrastive/trials.yaml").read_text())
    assert [t["trial"] for t in record["trials"]] == [0, 1, 2]
    for trial in record["trials"]:
        overrides = trial["overrides"]
        assert 1e-4 <= overrides["optimizer.lr"] <= 0.05 and overrides["loss.neg_margin"] in (0.5, 0.8, 1.0)
        assert overrides["model.embedding_size"] in (8, 16)
        metrics = json.loads((tmp_path / "a" / trial["runs"][0] / "metrics.json").read_text())
        assert metrics["selected_on"] == "validation"
        assert trial["validation_score"] == pytest.approx(metrics["best_score"])
        saved = yaml.safe_load((tmp_path / "a" / trial["runs"][0] / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == pytest.approx(overrides["optimizer.lr"])
    best = max(record["trials"], key=lambda t: t["validation_score"])
    assert {k: v for k, v in choice["overrides"].items() if k != "train.iterations"} == best["overrides"]
    assert choice["search"] == "optuna" and choice["validation_score"] == pytest.approx(
        best["validation_score"]
    )

    # the seeded sampler proposes the same trials in another folder
    run_selection(search_suite(), tmp_path / "b", announce=quiet)
    again = yaml.safe_load((tmp_path / "b/_select/contrastive/trials.yaml").read_text())
    assert [t["overrides"] for t in again["trials"]] == [t["overrides"] for t in record["trials"]]

    # started again, the search skips its finished trials; the final runs use the winner; the report shows them
    result = run_suite(search_suite(), tmp_path / "a", announce=quiet)
    timings = (tmp_path / "a/timings.jsonl").read_text().splitlines()
    assert sum("_select" in line for line in timings) == 3  # the three trials, each trained once
    final = next(s for s in result["specs"] if s.method.key == "contrastive")
    assert final.config.optimizer.lr == pytest.approx(choice["overrides"]["optimizer.lr"])
    report = (tmp_path / "a/results.md").read_text()
    assert "Every candidate tried" in report and report.count("| contrastive | optuna |") == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"space": {"optimizer.lr": {"lo": 0.1, "high": 1.0}}},
            r"select\.space\.optimizer\.lr\.lo: unknown key",
        ),
        ({"space": {"optimizer.lr": {"low": 0.1, "high": 0.01}}}, r"select\.space\.optimizer\.lr: low"),
        (
            {"space": {"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}},
            r"optimizer\.lr\.log: a log range",
        ),
        (
            {"space": {"optimizer.lr": {"low": "a lot", "high": 0.1}}},
            r"optimizer\.lr\.low: expected a number",
        ),
        ({"space": {"optimizer.lr": []}}, r"select\.space\.optimizer\.lr: the list of values is empty"),
        ({"space": {"optimizer.lrr": [0.1]}}, r"select\.space\.optimizer\.lrr: 0\.1 makes an invalid config"),
        ({"trials": 0}, r"select\.trials: expected a positive integer"),
        ({"grid": {"optimizer.lr": [0.1]}}, r"select\.grid: a grid is not searched by optuna"),
        ({"search": "random"}, r"select\.search: expected one of"),
        ({"space": None}, r"select\.space: give the searched fields"),
    ],
)
def test_a_bad_search_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        run_selection(search_suite(**change), tmp_path, announce=quiet)
    assert not (tmp_path / "_select").exists()  # refused before any trial ran


def test_search_keys_in_a_grid_are_refused(tmp_path):
    select = {"grid": {"optimizer.lr": [0.1]}, "trials": 4}
    suite = suite_from_dict({"name": "tiny", "base": BASE, "methods": METHODS, "select": select})
    with pytest.raises(ConfigError, match=r"select\.trials: only used with select\.search: optuna"):
        run_selection(suite, tmp_path, announce=quiet)
