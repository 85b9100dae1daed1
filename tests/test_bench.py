"""deepmetric bench: grid expansion, run folders, skip and resume, selection, aggregation, tables."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from deepmetric.extras import available
from deepmetric.suites import expand_grid, run_suite, suite_from_dict
from deepmetric.suites.report import build_rows, csv_table, markdown_table
from deepmetric.suites.runner import run_one
from deepmetric.suites.selection import run_selection
from deepmetric.suites.suite import merge, point_dirname
from deepmetric.training import Trainer
from deepmetric.training.config import ConfigError

BASE = {
    "data": {"name": "digits", "augment": "none"},
    "model": {
        "backbone": "small_cnn",
        "backbone_options": {"in_channels": 1, "image_size": 8, "width": 8},
        "embedding_size": 16,
    },
    "loss": {"name": "contrastive", "neg_margin": 0.8},
    "sampler": {"classes_per_batch": 4, "samples_per_class": 4},
    "optimizer": {"lr": 0.01},
    "train": {"iterations": 4, "eval_every": 0, "checkpoint_every": 2, "log_every": 2},
    "eval": {"metrics": ["recall@1", "recall@4", "map@r"], "save_embeddings": False},
}

METHODS = {
    "untrained": {"label": "Untrained", "overrides": {"train.iterations": 0, "model.embedding_size": 0}},
    "contrastive": {"label": "Contrastive", "normalized": True, "margin": "0.8"},
    "semihard": {
        "label": "Triplet (semi-hard)",
        "margin": "0.2",
        "overrides": {"loss": {"name": "triplet", "margin": 0.2}, "miner": {"name": "semi_hard"}},
    },
}


def tiny_suite(**extra):
    return suite_from_dict({"name": "tiny", "base": BASE, "seeds": [0, 1], "methods": METHODS, **extra})


def test_merge_replaces_named_components_and_expands_dotted_keys():
    merged = merge(BASE, {"loss": {"name": "triplet", "margin": 0.1}, "train.iterations": 7, "miner": None})
    assert merged["loss"] == {"name": "triplet", "margin": 0.1}  # contrastive's neg_margin does not leak
    assert merged["train"]["iterations"] == 7 and merged["train"]["checkpoint_every"] == 2
    assert merged["miner"] is None
    assert merge(BASE, {"loss.neg_margin": 0.3})["loss"] == {"name": "contrastive", "neg_margin": 0.3}
    assert BASE["loss"] == {"name": "contrastive", "neg_margin": 0.8}  # the base is not modified


def test_grid_expansion_and_run_folders(tmp_path):
    suite = tiny_suite(vary={"model.embedding_size": [8, 16]})
    specs = expand_grid(suite, tmp_path)
    folders = sorted(str(s.run_dir.relative_to(tmp_path)) for s in specs)
    assert folders == sorted(
        ["untrained/seed0", "untrained/seed1"]  # sets embedding_size itself: not varied
        + [
            f"{m}/model.embedding_size={e}/seed{s}"
            for m in ("contrastive", "semihard")
            for e in (8, 16)
            for s in (0, 1)
        ]
    )
    by_folder = {str(s.run_dir.relative_to(tmp_path)): s.config for s in specs}
    config = by_folder["semihard/model.embedding_size=8/seed1"]
    assert (config.seed, config.model.embedding_size, config.loss.name) == (1, 8, "triplet")
    assert config.loss.params == {"margin": 0.2} and config.miner.name == "semi_hard"
    assert by_folder["untrained/seed0"].model.embedding_size == 0
    only = expand_grid(suite, tmp_path, only=["contrastive"], seeds=[3])
    assert [str(s.run_dir.relative_to(tmp_path)) for s in only] == [
        "contrastive/model.embedding_size=8/seed3",
        "contrastive/model.embedding_size=16/seed3",
    ]
    with pytest.raises(ConfigError, match="no method 'nope'"):
        expand_grid(suite, tmp_path, only=["nope"])
    with pytest.raises(ConfigError, match="loss"):
        expand_grid(
            suite_from_dict({"base": BASE, "methods": {"bad": {"overrides": {"loss.name": "tripletx"}}}}),
            tmp_path,
        )
    with pytest.raises(ConfigError, match="seeds"):
        suite_from_dict({"base": BASE, "methods": METHODS, "seeds": [0, 0]})


def fake_run(spec, metrics):
    """A finished run folder with known metrics (no training)."""
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "metrics.json").write_text(json.dumps({"untrained": metrics, "trained": metrics}))


def test_aggregation_mean_and_std_from_known_values(tmp_path):
    suite = tiny_suite(seeds=[0, 1, 2])
    specs = expand_grid(suite, tmp_path, only=["contrastive", "semihard"])
    recall = {"contrastive": [0.5, 0.6, 0.7], "semihard": [0.2, 0.2, 0.5]}
    for spec in specs:
        value = recall[spec.method.key][spec.seed]
        fake_run(spec, {"recall@1": value, "recall@4": 0.9, "map@r": value / 2, "nmi": 0.4})
    rows = build_rows(specs, ["recall@1", "recall@4", "map@r", "nmi"])
    assert [row.label for row in rows] == ["Contrastive", "Triplet (semi-hard)"]
    for row in rows:
        values = recall[row.first.method.key]
        assert row.summary.mean["recall@1"] == pytest.approx(np.mean(values))
        assert row.summary.std["recall@1"] == pytest.approx(np.std(values, ddof=1))
        assert row.summary.std["recall@4"] == pytest.approx(0.0)
    table = markdown_table(rows, [])
    assert (
        "| Contrastive | yes | 0.8 | 40.0 ± 0.0 | 60.0 ± 10.0 | 90.0 ± 0.0 | 30.0 ± 5.0 | 4 | 4 | 3 |"
        in table
    )
    assert "| Triplet (semi-hard) | yes | 0.2 | 40.0 ± 0.0 | 30.0 ± 17.3 |" in table
    parsed = list(csv.DictReader(io.StringIO(csv_table(rows, [], ["recall@1"]))))
    assert parsed[1]["method"] == "semihard" and parsed[1]["seeds"] == "0 1 2"
    assert float(parsed[1]["recall@1_mean"]) == pytest.approx(0.3)
    assert float(parsed[1]["recall@1_std"]) == pytest.approx(np.std([0.2, 0.2, 0.5], ddof=1), abs=1e-6)
    assert parsed[1]["recall@1_values"] == "0.200000 0.200000 0.500000"


def test_suite_end_to_end_skip_and_resume(tmp_path, monkeypatch):
    suite = tiny_suite(seeds=[0, 1])
    out = tmp_path / "out"
    first = run_suite(suite, out, only=["untrained", "contrastive"], announce=lambda _: None)
    assert [r["action"] for r in first["records"]] == ["trained"] * 4
    for spec in first["specs"]:
        assert (spec.run_dir / "metrics.json").is_file() and (spec.run_dir / "config.yaml").is_file()
    markdown = (out / "results.md").read_text()
    assert "| Untrained |" in markdown and "| Contrastive |" in markdown
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    seed_values = [
        json.loads((out / f"contrastive/seed{s}/metrics.json").read_text())["trained"]["recall@1"]
        for s in (0, 1)
    ]
    assert float(rows[1]["recall@1_mean"]) == pytest.approx(np.mean(seed_values), abs=1e-6)
    assert (out / "bars.png").stat().st_size > 1000

    # finished runs are skipped: nothing is retrained
    stamp = (out / "contrastive/seed0/metrics.json").stat().st_mtime_ns
    again = run_suite(suite, out, only=["untrained", "contrastive"], announce=lambda _: None)
    assert [r["action"] for r in again["records"]] == ["skipped"] * 4
    assert (out / "contrastive/seed0/metrics.json").stat().st_mtime_ns == stamp

    # a killed run is resumed from its last checkpoint and ends as the uninterrupted run would
    real_step = Trainer._step

    def crashing_step(self, inputs, labels, *args, **kwargs):
        if self.iteration == 3:
            raise RuntimeError("simulated kill")
        return real_step(self, inputs, labels, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_step", crashing_step)
    (killed,) = expand_grid(suite, tmp_path / "killed", only=["contrastive"], seeds=[0])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_one(killed)
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert run_one(killed) == "resumed"
    resumed = json.loads((killed.run_dir / "metrics.json").read_text())["trained"]
    straight = json.loads((out / "contrastive/seed0/metrics.json").read_text())["trained"]
    assert resumed == straight

    # a run folder of another config is refused
    changed = tiny_suite(seeds=[0], base={**BASE, "optimizer": {"lr": 0.02}})
    with pytest.raises(ConfigError, match="another config"):
        run_suite(changed, out, only=["contrastive"], announce=lambda _: None)


def test_selection_uses_validation_scores_and_applies_the_winner(tmp_path):
    select = {
        "validation_classes": 0.4,
        "seeds": [0],
        "grid": {"optimizer.lr": [1e-9, 0.01]},
        "eval_every": 2,
    }
    base = merge(BASE, {"sampler.classes_per_batch": 3})  # 3 of the 5 training digits remain
    suite = tiny_suite(seeds=[0], select=select, base=base)
    selected = run_selection(suite, tmp_path, only=["untrained", "contrastive"], announce=lambda _: None)
    assert list(selected) == ["contrastive"]  # the untrained baseline trains nothing: nothing to select
    choice = selected["contrastive"]
    candidates = {c["overrides"]["optimizer.lr"]: c for c in choice["candidates"]}
    for lr, candidate in candidates.items():
        folder = tmp_path / "_select/contrastive" / point_dirname("optimizer.lr", lr) / "seed0"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["selected_on"] == "validation"
        assert candidate["validation_score"] == pytest.approx(metrics["best_score"])
    best_lr = max(candidates, key=lambda lr: candidates[lr]["validation_score"])
    assert choice["overrides"]["optimizer.lr"] == best_lr
    assert choice["overrides"]["train.iterations"] in (2, 4)
    saved = yaml.safe_load((tmp_path / "selected.yaml").read_text())
    assert saved["contrastive"]["overrides"] == choice["overrides"]
    (final,) = expand_grid(suite, tmp_path, only=["contrastive"], chosen={"contrastive": choice["overrides"]})
    assert final.config.optimizer.lr == best_lr
    assert final.config.data.validation_classes == 0.0  # the final runs train on every training class


def test_pml_adapter_matches_pml_and_trains():
    pytest.importorskip("pytorch_metric_learning")
    import torch
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners

    from deepmetric import losses, miners
    from deepmetric.suites.pml import register_pml

    names = register_pml()
    assert "pml:ContrastiveLoss" in names and "pml:TripletMarginMiner" in names
    assert register_pml() == names  # idempotent
    assert {"pos_margin", "neg_margin", "distance"} <= set(losses.LOSSES.parameters("pml:ContrastiveLoss"))
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1)
    labels = torch.arange(4).repeat_interleave(4)
    miner = miners.get("pml:TripletMarginMiner", margin=0.2, type_of_triplets="semihard")
    loss = losses.get("pml:TripletMarginLoss", margin=0.2)
    reference_indices = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(
        embeddings, labels
    )
    indices = miner(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(indices, reference_indices))
    expected = pml_losses.TripletMarginLoss(margin=0.2)(embeddings, labels, reference_indices)
    assert loss(embeddings, labels, indices).item() == pytest.approx(expected.item())
    ours = losses.get("contrastive", neg_margin=0.5)(embeddings, labels)
    theirs = losses.get("pml:ContrastiveLoss", neg_margin=0.5)(embeddings, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    with pytest.raises(ValueError, match="distance"):
        losses.get("pml:ContrastiveLoss", distance="manhattan")


SHIPPED_SUITES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SUITES, ids=lambda path: path.stem)
def test_shipped_suites_build_valid_runs(path):
    """Every shipped suite's runs are valid configs, ours and (where installed) PML's: PML writes float
    settings with integer defaults (alpha=2), so ``alpha: 2.0`` in a suite is accepted."""
    from deepmetric.suites import load_suite

    suite = load_suite(path)
    assert expand_grid(suite, Path("unused"))
    if any(method.pml for method in suite.methods) and available("pytorch_metric_learning"):
        from deepmetric.suites.pml import register_pml

        register_pml()
        specs = expand_grid(suite, Path("unused"), implementation="pml")
        assert specs and all(spec.implementation == "pml" for spec in specs)
