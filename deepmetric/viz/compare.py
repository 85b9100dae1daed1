"""Comparing runs: mean ± std across seeds per method, as Markdown, CSV, bar charts and an HTML page.

A *result* is one run: a mapping ``{"group": name, "seed": int, "metrics": {metric: value}}`` (``method``
is accepted for ``group``) with optional ``"params": {config field: value}`` for plots against a varied
setting. :func:`results_from_runs` builds results from run folders.

    write_comparison(results, "out/")      # comparison.md, .csv, .png, .html
    plot_metric_vs_param(results, "model.embedding_size", "recall@1")
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deepmetric.training.run_folder import RunFolder
from deepmetric.viz.figures import figure_and_axes, figure_data_uri, new_figure, save_figure
from deepmetric.viz.report import render_page

Result = Mapping[str, Any]


@dataclass(frozen=True)
class GroupSummary:
    """One group's runs: seeds, and per metric the mean and the sample standard deviation (0 for one run)."""

    group: str
    seeds: tuple
    mean: dict[str, float]
    std: dict[str, float]

    @property
    def num_runs(self) -> int:
        return len(self.seeds)


def _group_of(result: Result) -> str:
    for key in ("group", "method"):
        if key in result:
            return str(result[key])
    raise ValueError(f"result {dict(result)} has no 'group' (or 'method') name")


def config_value(config: Mapping, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``, with an error naming the missing part."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"config has no field {dotted!r} (missing {part!r})")
        value = value[part]
    return value


def results_from_runs(
    run_dirs: Iterable[str | Path],
    *,
    group_by: str = "name",
    params: Sequence[str] = (),
    stage: str = "trained",
) -> list[dict]:
    """Results from run folders: group = config field ``group_by``, seed = ``config.seed``, metrics =
    ``metrics.json[stage]``, params = the config fields named in ``params``."""
    results = []
    for run in map(RunFolder, run_dirs):
        run_dir = run.path
        config = yaml.safe_load(run.config_file.read_text()) or {}
        metrics = run.read_metrics()
        if stage not in metrics:
            raise ValueError(f"{run.metrics_file} has no {stage!r} metrics (keys: {sorted(metrics)})")
        results.append(
            {
                "group": str(config_value(config, group_by)),
                "seed": config.get("seed"),
                "metrics": dict(metrics[stage]),
                "params": {name: config_value(config, name) for name in params},
                "run_dir": str(run_dir),
            }
        )
    return results


def common_metrics(results: Sequence[Result]) -> list[str]:
    """Metrics present in every result, in the order of the first one."""
    if not results:
        return []
    shared = set.intersection(*(set(r["metrics"]) for r in results))
    return [name for name in results[0]["metrics"] if name in shared]


def summarize(results: Sequence[Result], metrics: Sequence[str] | None = None) -> list[GroupSummary]:
    """Mean and standard deviation (ddof=1) per group and metric, groups in order of first appearance.

    Raises ValueError for a (group, seed) seen twice (a run counted twice) or a metric missing from a run.
    """
    if not results:
        raise ValueError("no results to summarize")
    metrics = common_metrics(results) if metrics is None else list(metrics)
    by_group: dict[str, list[Result]] = {}
    for result in results:
        by_group.setdefault(_group_of(result), []).append(result)
    summaries = []
    for group, rows in by_group.items():
        seeds = [row.get("seed") for row in rows]
        repeated = {s for s in seeds if s is not None and seeds.count(s) > 1}
        if repeated:
            raise ValueError(f"group {group!r} has several results for seed(s) {sorted(repeated)}")
        mean, std = {}, {}
        for name in metrics:
            values = []
            for row in rows:
                if name not in row["metrics"]:
                    raise ValueError(f"group {group!r} seed {row.get('seed')}: metric {name!r} is missing")
                values.append(float(row["metrics"][name]))
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summaries.append(GroupSummary(group=group, seeds=tuple(seeds), mean=mean, std=std))
    return summaries


def markdown_table(summaries: Sequence[GroupSummary], metrics: Sequence[str]) -> str:
    """``| group | runs | metric ... |`` with ``mean ± std`` cells."""
    header = "| group | runs | " + " | ".join(metrics) + " |"
    rule = "|---|---:|" + "---:|" * len(metrics)
    lines = [header, rule]
    for summary in summaries:
        cells = [f"{summary.mean[m]:.4f} ± {summary.std[m]:.4f}" for m in metrics]
        group = summary.group.replace("|", "\\|")  # a bar would split the cell
        lines.append(f"| {group} | {summary.num_runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summaries: Sequence[GroupSummary], metrics: Sequence[str]) -> str:
    """CSV with columns group, runs, seeds, then ``<metric>_mean`` and ``<metric>_std`` per metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "runs", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    for summary in summaries:
        seeds = " ".join(str(s) for s in summary.seeds)
        writer.writerow(
            [summary.group, summary.num_runs, seeds]
            + [f"{v:.6f}" for m in metrics for v in (summary.mean[m], summary.std[m])]
        )
    return buffer.getvalue()


def plot_metric_bars(
    summaries: Sequence[GroupSummary], metrics: Sequence[str], *, ax: Axes | None = None
) -> Figure:
    """Grouped bars: one cluster per metric, one bar per group at its mean, error bars ± std."""
    if not summaries or not metrics:
        raise ValueError("need at least one group and one metric to plot")
    figure, ax = figure_and_axes(ax, max(6.0, 1.2 + 0.45 * len(metrics) * len(summaries)), 4.5)
    width = 0.8 / len(summaries)
    positions = np.arange(len(metrics))
    for g, summary in enumerate(summaries):
        ax.bar(
            positions + (g - (len(summaries) - 1) / 2) * width,
            [summary.mean[m] for m in metrics],
            width,
            yerr=[summary.std[m] for m in metrics],
            capsize=3,
            label=f"{summary.group} (n={summary.num_runs})",
        )
    ax.set_xticks(
        positions,
        metrics,
        rotation=30 if len(metrics) > 4 else 0,
        ha="right" if len(metrics) > 4 else "center",
    )
    ax.set_ylabel("mean ± std across seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def plot_metric_panels(summaries: Sequence[GroupSummary], metrics: Sequence[str]) -> Figure:
    """One panel per metric, one horizontal bar per group (first group on top) at its mean ± std.

    Reads well with many groups, where grouped bars do not. Each panel's axis is zoomed to the groups'
    range, since methods often differ by a point or two, and a dashed line marks the first group (the
    baseline) so that every other row reads as better or worse than it.
    """
    if not summaries or not metrics:
        raise ValueError("need at least one group and one metric to plot")
    figure = new_figure(2.2 + 2.6 * len(metrics), 0.9 + 0.28 * len(summaries))
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    positions = np.arange(len(summaries))[::-1]
    labels = [f"{s.group} (n={s.num_runs})" for s in summaries]
    colours = ["tab:grey"] + ["tab:blue"] * (len(summaries) - 1)
    for ax, metric in zip(axes, metrics):
        means = np.array([s.mean[metric] for s in summaries])
        stds = np.array([s.std[metric] for s in summaries])
        ax.barh(positions, means, xerr=stds, color=colours, capsize=2, height=0.7)
        low, high = float((means - stds).min()), float((means + stds).max())
        pad = max(0.1 * (high - low), 0.005)
        ax.set_xlim(max(0.0, low - pad), min(1.0, high + pad) if high <= 1 else high + pad)
        ax.axvline(means[0], color="tab:grey", linestyle="--", linewidth=1)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, labels, fontsize="small")
    return figure


def plot_metric_vs_param(
    results: Sequence[Result], param: str, metric: str, *, ax: Axes | None = None, log_x: bool = False
) -> Figure:
    """``metric`` against the numeric setting ``param`` (e.g. ``model.embedding_size``): one line per
    group, each point the mean over seeds with a ± std error bar."""
    figure, ax = figure_and_axes(ax, 6, 4)
    points: dict[str, dict[float, list[float]]] = {}
    for result in results:
        params = result.get("params") or {}
        if param not in params:
            raise ValueError(
                f"result of group {_group_of(result)!r} seed {result.get('seed')} has no param {param!r}"
            )
        x = params[param]
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise ValueError(f"param {param!r} must be numeric to plot against, got {x!r}")
        if metric not in result["metrics"]:
            raise ValueError(
                f"result of group {_group_of(result)!r} seed {result.get('seed')} has no {metric!r}"
            )
        points.setdefault(_group_of(result), {}).setdefault(float(x), []).append(
            float(result["metrics"][metric])
        )
    if not points:
        raise ValueError("no results to plot")
    for group, by_x in points.items():
        xs = sorted(by_x)
        means = [float(np.mean(by_x[x])) for x in xs]
        stds = [float(np.std(by_x[x], ddof=1)) if len(by_x[x]) > 1 else 0.0 for x in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=group)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(param)
    ax.set_ylabel(f"{metric} (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def _as_results(items: Iterable[Result | str | Path], vary: str | None) -> list[Result]:
    rows: list[Result] = []
    run_dirs = []
    for item in items:
        (run_dirs if isinstance(item, str | Path) else rows).append(item)
    if run_dirs:
        rows += results_from_runs(run_dirs, params=[vary] if vary else ())
    return rows


def write_comparison(
    results: Iterable[Result | str | Path],
    out_dir: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    title: str = "Comparison",
    vary: str | None = None,
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``comparison.png`` (bars) and ``comparison.html``.

    ``results``: result mappings and/or run folders (grouped by config ``name``). ``metrics`` defaults to
    those every result has. With ``vary`` (a param such as ``model.embedding_size``), the page also plots
    each metric against it (``comparison_<metric>_vs_<vary>.png``) and the table has one row per group and
    value of ``vary``. Returns the written paths by kind.
    """
    rows = _as_results(results, vary)
    metrics = common_metrics(rows) if metrics is None else list(metrics)
    if not metrics:
        raise ValueError("the results share no metric to compare")
    table_rows = rows
    if vary:  # one table row per group and value of the varied field, so seeds do not repeat within a row
        table_rows = [
            {**r, "group": f"{_group_of(r)} · {vary}={(r.get('params') or {}).get(vary)}"} for r in rows
        ]
    summaries = summarize(table_rows, metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(summaries, metrics)
    paths = {"markdown": out_dir / "comparison.md", "csv": out_dir / "comparison.csv"}
    paths["markdown"].write_text(f"# {title}\n\nMean ± std across seeds.\n\n{markdown}")
    paths["csv"].write_text(csv_table(summaries, metrics))
    bars = plot_metric_bars(summaries, metrics)
    paths["bars"] = save_figure(bars, out_dir / "comparison.png")
    figures = [(bars, "Mean ± std across seeds")]
    if vary:
        for metric in metrics:
            line = plot_metric_vs_param(rows, vary, metric)
            safe = "".join(ch if ch.isalnum() else "_" for ch in f"{metric}_vs_{vary}")
            paths[f"line:{metric}"] = save_figure(line, out_dir / f"comparison_{safe}.png")
            figures.append((line, f"{metric} against {vary}"))
    table_html = _html_table(summaries, metrics)
    images = "".join(
        f'<figure><img src="{figure_data_uri(fig)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for fig, caption in figures
    )
    sections = [("table", "Mean ± std across seeds", table_html), ("charts", "Charts", images)]
    paths["html"] = out_dir / "comparison.html"
    paths["html"].write_text(render_page(title, f"{len(rows)} runs in {len(summaries)} groups", sections))
    return paths


def _html_table(summaries: Sequence[GroupSummary], metrics: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><th>{escape(s.group)}</th><td>{s.num_runs}</td>"
        + "".join(f"<td>{s.mean[m]:.4f} ± {s.std[m]:.4f}</td>" for m in metrics)
        + "</tr>"
        for s in summaries
    )
    return (
        f'<table class="metrics"><thead><tr><th>group</th><th>runs</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
