"""Curves: Recall@K, training log panels, precision-recall; reading log.jsonl."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deepmetric.viz.curves import (
    metric_at_k,
    plot_precision_recall,
    plot_recall_at_k,
    plot_training_curves,
    read_log,
)
from deepmetric.viz.figures import figure_to_png


def test_metric_at_k_sorts_by_k_and_ignores_other_metrics():
    metrics = {"recall@8": 0.9, "recall@1": 0.5, "precision@1": 0.4, "map@r": 0.3, "recall@2": 0.7}
    assert metric_at_k(metrics) == ([1, 2, 8], [0.5, 0.7, 0.9])
    assert metric_at_k(metrics, "precision") == ([1], [0.4])


def test_recall_at_k_draws_one_line_per_stage_with_the_values():
    figure = plot_recall_at_k(
        {
            "untrained": {"recall@1": 0.2, "recall@4": 0.5},
            "trained": {"recall@1": 0.6, "recall@4": 0.9, "nmi": 0.4},
        }
    )
    assert len(figure.axes) == 1
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["untrained", "trained"]
    np.testing.assert_allclose(lines[1].get_xydata(), [[1, 0.6], [4, 0.9]])
    assert len(figure_to_png(figure)) > 2000


def test_recall_at_k_without_any_recall_is_an_error():
    with pytest.raises(ValueError, match="no recall@K"):
        plot_recall_at_k({"trained": {"nmi": 0.5}})


def log_records(iterations: int = 40, eval_every: int = 10, lr: bool = True) -> list[dict]:
    records = []
    for it in range(1, iterations + 1):
        record = {"iteration": it, "loss": 1.0 / it, "elapsed": 0.1 * it}
        if lr:
            record["lr"] = 0.01
        records.append(record)
        if it % eval_every == 0:
            records.append({"iteration": it, "eval": {"recall@1": it / 100, "map@r": it / 200}})
    return records


def test_training_curves_have_a_panel_per_logged_quantity():
    figure = plot_training_curves(log_records())
    assert len(figure.axes) == 3
    assert [ax.get_ylabel() for ax in figure.axes] == ["training loss", "learning rate", "evaluation"]
    eval_lines = figure.axes[2].get_lines()
    assert [line.get_label() for line in eval_lines] == ["recall@1", "map@r"]
    np.testing.assert_allclose(eval_lines[0].get_xydata(), [[10, 0.1], [20, 0.2], [30, 0.3], [40, 0.4]])
    assert figure.axes[0].get_lines()[0].get_xydata().shape == (40, 2)
    figure_to_png(figure)


def test_training_curves_show_only_what_the_log_holds():
    assert len(plot_training_curves(log_records(lr=False)).axes) == 2
    evals_only = [r for r in log_records() if "eval" in r]
    figure = plot_training_curves(evals_only, metrics=["map@r"])
    assert len(figure.axes) == 1 and [line.get_label() for line in figure.axes[0].get_lines()] == ["map@r"]
    with pytest.raises(ValueError, match="no training lines"):
        plot_training_curves([{"note": "nothing"}])


def test_non_finite_losses_become_gaps_and_the_smoothed_curve_survives_them():
    records = log_records(iterations=200, lr=False)
    records[50]["loss"] = math.inf
    records[60]["loss"] = None
    figure = plot_training_curves(records)
    raw, smooth = figure.axes[0].get_lines()
    assert np.isnan(raw.get_ydata()).sum() == 2
    assert np.isfinite(smooth.get_ydata()).all()


def test_read_log_drops_a_truncated_last_line_but_not_a_broken_middle_one(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps(r) for r in log_records(5, 5)]
    path.write_text("\n".join(lines) + '\n{"iteration": 6, "lo')
    assert read_log(path) == log_records(5, 5)
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_log(path)


def test_precision_recall_curves():
    figure = plot_precision_recall(
        {
            "16 bits": ([1.0, 0.8, 0.5], [0.1, 0.4, 0.9]),
            "32 bits": (np.array([1.0, 0.9]), np.array([0.2, 0.6])),
        }
    )
    lines = figure.axes[0].get_lines()
    assert len(figure.axes) == 1 and len(lines) == 2
    np.testing.assert_allclose(lines[0].get_xydata(), [[0.1, 1.0], [0.4, 0.8], [0.9, 0.5]])  # x = recall
    figure_to_png(figure)


@pytest.mark.parametrize(
    ("curve", "message"),
    [
        (([0.5, 0.4], [0.1]), "same non-zero length"),
        (([0.5, np.nan], [0.1, 0.2]), "NaN"),
        (([1.5, 0.4], [0.1, 0.2]), r"\[0, 1\]"),
    ],
)
def test_precision_recall_rejects_bad_curves(curve, message):
    with pytest.raises(ValueError, match=message):
        plot_precision_recall({"bad": curve})
