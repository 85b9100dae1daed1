"""Comparison reports across runs: mean ± std per group, Markdown/CSV/PNG/HTML, plots."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml

from deepmetric.viz.compare import (
    markdown_table,
    plot_metric_bars,
    plot_metric_panels,
    plot_metric_vs_param,
    results_from_runs,
    summarize,
    write_comparison,
)


def rows() -> list[dict]:
    return [
        {"group": "contrastive", "seed": 0, "metrics": {"recall@1": 0.50, "map@r": 0.20}},
        {"group": "contrastive", "seed": 1, "metrics": {"recall@1": 0.54, "map@r": 0.22}},
        {"group": "contrastive", "seed": 2, "metrics": {"recall@1": 0.58, "map@r": 0.27}},
        {"method": "triplet", "seed": 0, "metrics": {"recall@1": 0.60, "map@r": 0.30, "nmi": 0.7}},
    ]


def test_summary_gives_mean_and_sample_std_per_group():
    contrastive, triplet = summarize(rows())
    assert contrastive.group == "contrastive" and contrastive.seeds == (0, 1, 2)
    assert contrastive.mean["recall@1"] == pytest.approx(0.54)
    assert contrastive.std["recall@1"] == pytest.approx(np.std([0.50, 0.54, 0.58], ddof=1))
    assert triplet.num_runs == 1 and triplet.std["map@r"] == 0.0
    assert set(triplet.mean) == {"recall@1", "map@r"}  # nmi is not shared by every run


def test_summary_refuses_a_repeated_seed_and_a_missing_metric():
    with pytest.raises(ValueError, match="several results for seed"):
        summarize([*rows(), {"group": "triplet", "seed": 0, "metrics": {"recall@1": 0.1, "map@r": 0.1}}])
    with pytest.raises(ValueError, match="'nmi' is missing"):
        summarize(rows(), metrics=["nmi"])
    with pytest.raises(ValueError, match="no 'group'"):
        summarize([{"seed": 0, "metrics": {"a": 1.0}}])


def test_markdown_table_cells():
    table = markdown_table(summarize(rows()), ["recall@1"])
    lines = table.strip().splitlines()
    assert lines[0] == "| group | runs | recall@1 |"
    assert lines[2] == "| contrastive | 3 | 0.5400 ± 0.0400 |"
    assert lines[3] == "| triplet | 1 | 0.6000 ± 0.0000 |"


def test_bar_chart_has_one_bar_per_group_and_metric_with_error_bars():
    figure = plot_metric_bars(summarize(rows()), ["recall@1", "map@r"])
    ax = figure.axes[0]
    assert len(figure.axes) == 1
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    assert heights == sorted([0.54, 0.23, 0.6, 0.3])
    assert len(ax.containers) == 4  # two bar containers + two error-bar containers


def test_write_comparison_writes_markdown_csv_png_and_self_contained_html(tmp_path):
    paths = write_comparison(rows(), tmp_path / "cmp", title="Loss comparison")
    assert set(paths) == {"markdown", "csv", "bars", "html"}
    assert "| contrastive | 3 | 0.5400 ± 0.0400 | 0.2300 ± 0.0361 |" in paths["markdown"].read_text()
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert table[0]["group"] == "contrastive" and table[0]["seeds"] == "0 1 2"
    assert float(table[1]["recall@1_mean"]) == pytest.approx(0.6)
    assert paths["bars"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 1 and "Loss comparison" in page
    assert "0.5400 ± 0.0400" in page
    assert "http://" not in page and "https://" not in page


def make_run(folder, name: str, seed: int, embedding_size: int, recall: float):
    folder.mkdir(parents=True)
    config = {"name": name, "seed": seed, "model": {"embedding_size": embedding_size}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"untrained": {"recall@1": 0.1}, "trained": {"recall@1": recall, "map@r": recall / 2}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_run_folders_become_results_and_a_line_plot_against_a_config_field(tmp_path):
    runs = [
        make_run(tmp_path / f"r{i}", "arcface", seed, size, recall)
        for i, (seed, size, recall) in enumerate([(0, 64, 0.5), (1, 64, 0.6), (0, 128, 0.7), (1, 128, 0.7)])
    ]
    results = results_from_runs(runs, params=["model.embedding_size"])
    assert results[2] == {
        "group": "arcface",
        "seed": 0,
        "metrics": {"recall@1": 0.7, "map@r": 0.35},
        "params": {"model.embedding_size": 128},
        "run_dir": str(runs[2]),
    }
    figure = plot_metric_vs_param(results, "model.embedding_size", "recall@1")
    (errorbars,) = figure.axes[0].containers
    np.testing.assert_allclose(errorbars.lines[0].get_xydata(), [[64, 0.55], [128, 0.7]])
    paths = write_comparison([str(r) for r in runs], tmp_path / "out", vary="model.embedding_size")
    assert "line:recall@1" in paths and paths["line:map@r"].is_file()
    assert paths["html"].read_text().count("data:image/png;base64,") == 3
    # the table splits a group by the varied field, so each row holds one run per seed
    assert "| arcface · model.embedding_size=64 | 2 | 0.5500 ± 0.0707 |" in paths["markdown"].read_text()


def test_results_from_runs_names_what_is_missing(tmp_path):
    run = make_run(tmp_path / "r", "x", 0, 8, 0.5)
    with pytest.raises(KeyError, match=r"model\.depth"):
        results_from_runs([run], params=["model.depth"])
    (run / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        results_from_runs([run])


def test_line_plot_needs_numeric_params():
    bad = [{"group": "a", "seed": 0, "metrics": {"m": 1.0}, "params": {"p": "large"}}]
    with pytest.raises(ValueError, match="numeric"):
        plot_metric_vs_param(bad, "p", "m")


def test_metric_panels_have_one_panel_per_metric_and_one_bar_per_group():
    summaries = summarize(rows())
    figure = plot_metric_panels(summaries, ["recall@1", "map@r"])
    assert len(figure.axes) == 2
    for ax, metric in zip(figure.axes, ["recall@1", "map@r"]):
        widths = [round(p.get_width(), 4) for p in ax.patches]
        assert widths == [round(s.mean[metric], 4) for s in summaries]  # first group drawn on top
        assert ax.get_title() == metric
    with pytest.raises(ValueError, match="at least one group"):
        plot_metric_panels([], ["recall@1"])
