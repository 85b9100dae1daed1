"""Curves: Recall@K against K, training loss / learning rate / evaluation metrics against iteration
(from a run's ``log.jsonl``), and precision-recall curves (hashing)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deepmetric.viz.figures import figure_and_axes, new_figure

_AT_K = re.compile(r"^(?P<name>[a-z_]+)@(?P<k>\d+)$")


def metric_at_k(metrics: Mapping[str, float], name: str = "recall") -> tuple[list[int], list[float]]:
    """``(Ks, values)`` of every ``name@K`` entry of ``metrics``, sorted by K."""
    points = []
    for key, value in metrics.items():
        match = _AT_K.match(key)
        if match and match["name"] == name and value is not None:
            points.append((int(match["k"]), float(value)))
    points.sort()
    return [k for k, _ in points], [v for _, v in points]


def plot_recall_at_k(
    metrics_by_name: Mapping[str, Mapping[str, float]], *, metric: str = "recall", ax: Axes | None = None
) -> Figure:
    """One line per entry of ``metrics_by_name`` (e.g. ``{"untrained": {...}, "trained": {...}}``):
    ``metric@K`` against K, on a log-2 K axis."""
    figure, ax = figure_and_axes(ax, 6, 4)
    drawn = 0
    all_ks: set[int] = set()
    for label, metrics in metrics_by_name.items():
        ks, values = metric_at_k(metrics, metric)
        if ks:
            ax.plot(ks, values, marker="o", label=label)
            all_ks.update(ks)
            drawn += 1
    if not drawn:
        raise ValueError(f"no {metric}@K entries in any of {list(metrics_by_name)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric.replace('_', ' ').title()}@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl``. A truncated last line (run killed mid-write) is dropped; a bad line
    elsewhere raises ValueError naming it."""
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from None
    return records


def _finite_or_nan(values: Sequence) -> np.ndarray:
    array = np.array([math.nan if v is None else float(v) for v in values])
    array[~np.isfinite(array)] = math.nan
    return array


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, ignoring NaN (a diverged step does not blank the curve)."""
    valid = ~np.isnan(values)
    sums = np.convolve(np.where(valid, values, 0), np.ones(window), mode="full")[: len(values)]
    counts = np.convolve(valid.astype(float), np.ones(window), mode="full")[: len(values)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def plot_training_curves(records: Sequence[Mapping], *, metrics: Sequence[str] | None = None) -> Figure:
    """Stacked panels sharing the iteration axis: training loss (raw and smoothed), learning rate (when
    logged) and evaluation metrics (``metrics``, default all) from the records of :func:`read_log`.

    Panels appear only for what the log holds; non-finite losses are drawn as gaps.
    """
    train = [r for r in records if "loss" in r and "iteration" in r]
    evals = [r for r in records if isinstance(r.get("eval"), Mapping) and "iteration" in r]
    with_lr = [r for r in train if r.get("lr") is not None]
    if metrics is None:
        metrics = list(dict.fromkeys(key for r in evals for key in r["eval"]))
    panels = [
        name for name, present in (("loss", train), ("lr", with_lr), ("eval", evals and metrics)) if present
    ]
    if not panels:
        raise ValueError(
            "the log has no training lines (iteration, loss) and no evaluation lines (iteration, eval)"
        )
    figure = new_figure(7, 2.6 * len(panels))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            iterations = np.array([r["iteration"] for r in train])
            loss = _finite_or_nan([r["loss"] for r in train])
            ax.plot(iterations, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
            window = max(1, len(loss) // 50)
            if window > 1:
                ax.plot(
                    iterations, _moving_average(loss, window), color="tab:blue", label=f"mean of {window}"
                )
            ax.set_ylabel("training loss")
            ax.legend(fontsize="small")
        elif panel == "lr":
            ax.plot([r["iteration"] for r in with_lr], [r["lr"] for r in with_lr], color="tab:orange")
            ax.set_ylabel("learning rate")
        else:
            iterations = [r["iteration"] for r in evals]
            for name in metrics:
                ax.plot(
                    iterations, _finite_or_nan([r["eval"].get(name) for r in evals]), marker="o", label=name
                )
            ax.set_ylabel("evaluation")
            ax.legend(fontsize="small", ncols=2)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    return figure


def plot_precision_recall(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, ax: Axes | None = None
) -> Figure:
    """Precision against recall, one line per entry ``name: (precision, recall)`` (e.g. per code length
    in hashing: ``(result["pr_curve_precision"], result["pr_curve_recall"])`` from
    :func:`deepmetric.hashing.metrics.evaluate_hashing`, one point per Hamming radius)."""
    figure, ax = figure_and_axes(ax, 5.5, 4.5)
    if not curves:
        raise ValueError("curves is empty")
    for name, (precision, recall) in curves.items():
        precision, recall = np.asarray(precision, dtype=float), np.asarray(recall, dtype=float)
        if precision.ndim != 1 or precision.shape != recall.shape or len(precision) == 0:
            raise ValueError(
                f"curve {name!r}: precision and recall must be 1-D of the same non-zero length, "
                f"got shapes {precision.shape} and {recall.shape}"
            )
        if not (np.isfinite(precision).all() and np.isfinite(recall).all()):
            raise ValueError(f"curve {name!r}: precision or recall holds NaN or infinite values")
        if precision.min() < 0 or precision.max() > 1 or recall.min() < 0 or recall.max() > 1:
            raise ValueError(f"curve {name!r}: precision and recall must lie in [0, 1]")
        ax.plot(recall, precision, marker=".", label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure
