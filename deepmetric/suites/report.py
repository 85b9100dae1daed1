"""A suite's results: mean ± std over seeds as a Markdown table, a CSV and plots.

Rows are (implementation, method, values of the varied fields); the statistics come from
:func:`deepmetric.viz.compare.summarize` (mean and sample standard deviation, ddof=1, over seeds) and
the plots from :mod:`deepmetric.viz.compare` (bars with ± std error bars; each metric against a varied
field). Metrics are shown in percent, as in the papers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmetric.suites.runner import read_metrics, training_seconds
from deepmetric.suites.suite import RunSpec, Suite, format_value
from deepmetric.training.run_folder import RunFolder
from deepmetric.viz.compare import GroupSummary, plot_metric_panels, plot_metric_vs_param, summarize
from deepmetric.viz.figures import save_figure

# table column -> metric name written by deepmetric.evaluation
TABLE_METRICS = {"NMI": "nmi", "R@1": "recall@1", "R@4": "recall@4", "MAP@R": "map@r"}


@dataclass
class Row:
    """One table row: a method (and implementation) at one point of the varied fields, over seeds."""

    specs: list[RunSpec]
    summary: GroupSummary

    @property
    def first(self) -> RunSpec:
        return self.specs[0]

    @property
    def label(self) -> str:
        return self.first.method.label + (" [PML]" if self.first.implementation == "pml" else "")


def result_of(spec: RunSpec) -> dict[str, Any]:
    """A :mod:`deepmetric.viz.compare` result for one finished run."""
    metrics = read_metrics(spec.run_dir)
    return {
        "group": row_key(spec),
        "seed": spec.seed,
        "metrics": dict(metrics["trained"]),
        "params": dict(spec.point),
        "run_dir": str(spec.run_dir),
    }


def row_key(spec: RunSpec) -> str:
    point = ", ".join(f"{k}={format_value(v)}" for k, v in spec.point.items())
    return f"{spec.implementation}:{spec.method.key}" + (f" ({point})" if point else "")


def build_rows(specs: Sequence[RunSpec], metrics: Sequence[str]) -> list[Row]:
    """Group finished runs into rows, in grid order; unfinished runs are left out."""
    finished = [spec for spec in specs if RunFolder(spec.run_dir).completed()]
    if not finished:
        return []
    results = [result_of(spec) for spec in finished]
    available = [m for m in metrics if all(m in r["metrics"] for r in results)]
    summaries = {s.group: s for s in summarize(results, available)}
    grouped: dict[str, list[RunSpec]] = {}
    for spec in finished:
        grouped.setdefault(row_key(spec), []).append(spec)
    rows = [Row(group, summaries[key]) for key, group in grouped.items()]
    # each PML row right under the deepmetric row of the same method and point
    order = {
        (r.first.method.key, tuple(r.first.point.items())): i
        for i, r in enumerate(rows)
        if r.first.implementation != "pml"
    }
    return sorted(
        rows,
        key=lambda r: (
            order.get((r.first.method.key, tuple(r.first.point.items())), len(rows)),
            r.first.implementation == "pml",
        ),
    )


def _cell(row: Row, metric: str) -> str:
    if metric not in row.summary.mean:
        return "—"
    return f"{100 * row.summary.mean[metric]:.1f} ± {100 * row.summary.std[metric]:.1f}"


def markdown_table(rows: Sequence[Row], vary: Sequence[str]) -> str:
    header = [
        "Method",
        *vary,
        "Normalized",
        "Margin",
        *TABLE_METRICS,
        "# classes",
        "# samples per class",
        "Seeds",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (1 + len(vary) + 2) + "---:|" * (len(header) - 3 - len(vary)),
    ]
    for row in rows:
        config = row.first.config
        cells = [
            row.label,
            *(format_value(row.first.point[f]) if f in row.first.point else "—" for f in vary),
            row.first.method.normalized or ("yes" if config.model.normalize else "no"),
            row.first.method.margin or "—",
            *(_cell(row, metric) for metric in TABLE_METRICS.values()),
            str(config.sampler.classes_per_batch),
            str(config.sampler.samples_per_class),
            str(row.summary.num_runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row], vary: Sequence[str], metrics: Sequence[str]) -> str:
    """Raw (fraction) means, stds and per-seed values, plus training seconds per run."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "label", "implementation", *vary, "normalized", "margin", "classes_per_batch"]
    header += ["samples_per_class", "seeds"]
    header += [f"{m}_{s}" for m in metrics for s in ("mean", "std", "values")] + ["train_seconds"]
    writer.writerow(header)
    for row in rows:
        first = row.first
        values = {m: [read_metrics(s.run_dir)["trained"].get(m) for s in row.specs] for m in metrics}
        seconds = [training_seconds(s.run_dir) for s in row.specs]
        writer.writerow(
            [first.method.key, row.label, first.implementation]
            + [format_value(first.point[f]) if f in first.point else "" for f in vary]
            + [first.method.normalized, first.method.margin, first.config.sampler.classes_per_batch]
            + [first.config.sampler.samples_per_class, " ".join(str(s.seed) for s in row.specs)]
            + [
                cell
                for m in metrics
                for cell in (
                    f"{row.summary.mean[m]:.6f}" if m in row.summary.mean else "",
                    f"{row.summary.std[m]:.6f}" if m in row.summary.std else "",
                    " ".join(f"{v:.6f}" for v in values[m] if v is not None),
                )
            ]
            + [" ".join(f"{s:.1f}" for s in seconds if s is not None)]
        )
    return buffer.getvalue()


def pml_table(rows: Sequence[Row]) -> str:
    """deepmetric and PML side by side for the methods run with both (same protocol and seeds)."""
    ours = {
        (r.first.method.key, tuple(r.first.point.items())): r for r in rows if r.first.implementation != "pml"
    }
    pairs = [
        (ours[key], r)
        for r in rows
        if r.first.implementation == "pml"
        and (key := (r.first.method.key, tuple(r.first.point.items()))) in ours
    ]
    if not pairs:
        return ""
    lines = [
        "| Method | R@1 deepmetric | R@1 PML | MAP@R deepmetric | MAP@R PML "
        "| train s deepmetric | train s PML | time deepmetric / PML |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in pairs:
        times = [_mean_seconds(a), _mean_seconds(b)]
        ratio = f"{times[0] / times[1]:.2f}" if all(times) else "—"
        point = ", ".join(f"{k}={format_value(v)}" for k, v in a.first.point.items())
        name = a.first.method.label + (f" ({point})" if point else "")
        lines.append(
            f"| {name} | {_cell(a, 'recall@1')} | {_cell(b, 'recall@1')} | {_cell(a, 'map@r')} | "
            f"{_cell(b, 'map@r')} | {_fmt(times[0])} | {_fmt(times[1])} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def _mean_seconds(row: Row) -> float | None:
    seconds = [training_seconds(s.run_dir) for s in row.specs]
    seconds = [s for s in seconds if s is not None]
    return sum(seconds) / len(seconds) if seconds else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def write_plots(rows: Sequence[Row], vary: Sequence[str], out_dir: Path) -> list[Path]:
    """Bars (mean ± std per row, a panel per metric) and, per varied field and metric, the metric against the field."""
    paths = []
    metrics = [m for m in TABLE_METRICS.values() if rows and all(m in r.summary.mean for r in rows)]
    if not rows or not metrics:
        return paths
    relabelled = [
        GroupSummary(_plot_label(r, vary), r.summary.seeds, r.summary.mean, r.summary.std) for r in rows
    ]
    paths.append(save_figure(plot_metric_panels(relabelled, metrics), out_dir / "bars.png"))
    for field_name in vary:
        results = []
        for row in rows:
            if field_name not in row.first.point:
                continue  # a method that fixes this field itself (e.g. the untrained baseline)
            others = {k: v for k, v in row.first.point.items() if k != field_name}
            group = row.label + "".join(f", {k}={format_value(v)}" for k, v in others.items())
            for spec in row.specs:
                results.append(
                    {
                        "group": group,
                        "seed": spec.seed,
                        "metrics": read_metrics(spec.run_dir)["trained"],
                        "params": {field_name: spec.point[field_name]},
                    }
                )
        if not results:
            continue
        numeric = all(isinstance(r["params"][field_name], int | float) for r in results)
        if not numeric:
            continue
        for metric in metrics:
            figure = plot_metric_vs_param(results, field_name, metric)
            safe = "".join(ch if ch.isalnum() else "_" for ch in f"{metric}_vs_{field_name}")
            paths.append(save_figure(figure, out_dir / f"{safe}.png"))
    return paths


def _plot_label(row: Row, vary: Sequence[str]) -> str:
    point = ", ".join(f"{format_value(row.first.point[f])}" for f in vary if f in row.first.point)
    return row.label + (f" ({point})" if point else "")


def candidates_table(selected: dict[str, dict[str, Any]]) -> str:
    """Each method's candidates (grid points or Optuna trials, in the order tried) and their scores."""
    lines = [
        "| Method | search | # | candidate | validation score | best iteration |",
        "|---|---|---:|---|---:|---|",
    ]
    for key, choice in selected.items():
        for number, candidate in enumerate(choice.get("candidates", [])):
            text = ", ".join(f"{k}={format_value(v)}" for k, v in candidate["overrides"].items())
            iterations = " ".join(str(i) for i in candidate.get("best_iteration", []))
            score = f"{choice['metric']} {100 * candidate['validation_score']:.1f}"
            lines.append(
                f"| {key} | {choice.get('search', 'grid')} | {number} | {text} | {score} | {iterations} |"
            )
    return "\n".join(lines) + "\n"


def write_results(
    suite: Suite,
    specs: Sequence[RunSpec],
    out_dir: str | Path,
    selected: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` and the plots into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = list(dict.fromkeys(m for spec in specs for m in spec.config.eval.metrics))
    rows = build_rows(specs, metrics)
    vary = list(suite.vary)
    missing = len(specs) - sum(len(r.specs) for r in rows)
    parts = [f"# {suite.name}\n"]
    if suite.description:
        parts.append(suite.description.strip() + "\n")
    parts.append(
        "Mean ± std (sample standard deviation) over seeds, in percent; each row's runs are run folders "
        f"under `{out_dir}`.\n"
    )
    if missing:
        parts.append(f"**{missing} of {len(specs)} runs are not finished and are left out.**\n")
    parts.append(markdown_table(rows, vary))
    comparison = pml_table(rows)
    if comparison:
        parts.append("\n## deepmetric and pytorch-metric-learning side by side\n")
        parts.append(comparison)
    if selected:
        parts.append("\n## Settings chosen on the validation classes\n")
        lines = ["| Method | chosen | validation score |", "|---|---|---:|"]
        for key, choice in selected.items():
            chosen = ", ".join(f"{k}={format_value(v)}" for k, v in choice["overrides"].items())
            lines.append(f"| {key} | {chosen} | {choice['metric']} {100 * choice['validation_score']:.1f} |")
        parts.append("\n".join(lines) + "\n")
        parts.append("\n## Every candidate tried on the validation classes\n")
        parts.append(candidates_table(selected))
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv"}
    paths["markdown"].write_text("\n".join(parts))
    paths["csv"].write_text(csv_table(rows, vary, metrics))
    for path in write_plots(rows, vary, out_dir):
        paths[path.stem] = path
    return paths
