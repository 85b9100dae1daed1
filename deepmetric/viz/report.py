"""``RUN/report.html``: one self-contained page per training run.

The page shows the config, the metrics before and after training, the training curves, an embedding
map and retrieval examples (random queries and the worst ones). Every picture is an inline base64 PNG
and the CSS is inline, so the file opens offline and can be mailed or archived on its own.

Images come from ``deepmetric.data.get_dataset(data.name, data.root, split)``; when the dataset cannot
be loaded (moved, or its rows do not match the saved embeddings) the page is still written, without the
image grids, and says why. A figure that fails to draw is replaced by its error message rather than
losing the whole report at the end of a run.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from PIL import Image

from deepmetric.distances import get_distance
from deepmetric.training.run_folder import RunFolder
from deepmetric.viz.curves import (
    metric_at_k,
    plot_precision_recall,
    plot_recall_at_k,
    plot_training_curves,
    read_log,
)
from deepmetric.viz.embedding_map import UMAP_MISSING, plot_embedding_map, sample_indices, umap_available
from deepmetric.viz.figures import figure_data_uri
from deepmetric.viz.retrieval_grid import choose_queries, plot_retrieval_grid, plot_worst_queries

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingSet:
    """Saved embeddings of one split and, when the dataset could be opened, a way to see its images."""

    name: str
    split: str
    embeddings: np.ndarray
    labels: np.ndarray
    load_image: Callable[[int], Image.Image] | None = None
    class_names: list[str] | None = None
    images_missing_reason: str | None = None


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str, kind: str = "info") -> str:
    return f'<p class="note {kind}">{_esc(text)}</p>'


def _figure_html(make_figure: Callable[[], Figure], alt: str) -> str:
    """The figure as an inline PNG, or a visible error note when it cannot be drawn."""
    try:
        uri = figure_data_uri(make_figure())
    except Exception as error:  # a broken picture must not cost the rest of the report
        logger.warning("report: cannot draw %s: %s", alt, error)
        return _note(f"Could not draw the {alt}: {type(error).__name__}: {error}", "warn")
    return f'<figure><img src="{uri}" alt="{_esc(alt)}"><figcaption>{_esc(alt)}</figcaption></figure>'


def _read_optional_json(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return None, f"{path.name} is not valid JSON: {error}"
    if not isinstance(content, dict):
        return None, f"{path.name} must hold a JSON object, got {type(content).__name__}"
    return content, None


def _load_split(
    run: RunFolder, data_cfg: Mapping, file_names: list[str], split: str
) -> tuple[EmbeddingSet | None, str | None]:
    """The saved embeddings found under the first existing name in ``file_names``, with their dataset."""
    for name in file_names:
        embeddings_path, labels_path = run.embeddings_file(name), run.labels_file(name)
        if embeddings_path.is_file() and labels_path.is_file():
            break
    else:
        wanted = " or ".join(
            f"{run.embeddings_file(n).relative_to(run.path)} (+ _labels.npy)" for n in file_names
        )
        return None, f"no saved embeddings: {wanted} not found"
    embeddings, labels = np.load(embeddings_path), np.load(labels_path)
    if embeddings.ndim != 2 or labels.ndim != 1 or len(labels) != len(embeddings):
        return None, (
            f"{embeddings_path.name} has shape {embeddings.shape} and {labels_path.name} {labels.shape}: "
            "expected N x D embeddings with N labels"
        )
    item = EmbeddingSet(name=name, split=split, embeddings=embeddings, labels=labels)
    _attach_images(item, data_cfg)
    return item, None


def _attach_images(item: EmbeddingSet, data_cfg: Mapping) -> None:
    """Open the dataset split behind ``item``; only a dataset whose labels match row by row is used."""
    from deepmetric.data import get_dataset

    name, root = data_cfg.get("name"), data_cfg.get("root")
    try:
        dataset = get_dataset(name, root, split=item.split)
    except Exception as error:
        item.images_missing_reason = (
            f"cannot open dataset {name!r} (root {root!r}, split {item.split!r}): "
            f"{type(error).__name__}: {error}"
        )
        return
    dataset_labels = np.asarray(dataset.labels)
    if len(dataset_labels) != len(item.labels) or not np.array_equal(dataset_labels, item.labels):
        item.images_missing_reason = (
            f"dataset {name!r} split {item.split!r} has {len(dataset_labels)} items whose labels do not "
            f"match the {len(item.labels)} saved embeddings (data changed since the run?)"
        )
        return
    item.load_image = dataset.load
    item.class_names = list(getattr(dataset, "class_names", None) or []) or None


def _is_curve(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—" if value is None else _esc(value)
    return f"{value:.4f}"


def metrics_table_html(metrics: Mapping[str, Any]) -> str:
    """Untrained and trained metrics side by side with the difference (trained − untrained)."""
    untrained = metrics.get("untrained") or {}
    trained = metrics.get("trained") or {}
    # curves (e.g. hashing's pr_curve_* arrays) are drawn in the Curves section, not tabulated
    names = [
        n for n in dict.fromkeys([*trained, *untrained]) if not _is_curve(trained.get(n, untrained.get(n)))
    ]
    if not names:
        return _note("metrics.json holds no untrained or trained metrics.", "warn")
    rows = []
    for name in names:
        before, after = untrained.get(name), trained.get(name)
        numeric = all(isinstance(v, int | float) and math.isfinite(v) for v in (before, after))
        diff = after - before if numeric else None
        diff_class = "" if diff is None else ("up" if diff > 0 else "down" if diff < 0 else "")
        diff_text = "—" if diff is None else f"{diff:+.4f}"
        rows.append(
            f"<tr><th>{_esc(name)}</th><td>{_format_value(before)}</td><td>{_format_value(after)}</td>"
            f'<td class="{diff_class}">{diff_text}</td></tr>'
        )
    extra = []
    if metrics.get("best_iteration") is not None:  # null: no checkpoint was selected
        extra.append(
            f"Best checkpoint: iteration {_esc(metrics['best_iteration'])}"
            + (f" by {_esc(metrics['best_metric'])}" if metrics.get("best_metric") else "")
            + "."
        )
    return (
        '<table class="metrics"><thead><tr><th>metric</th><th>untrained</th><th>trained</th>'
        "<th>difference</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + "".join(f"<p>{line}</p>" for line in extra)
    )


def _curves_section(metrics: Mapping | None, log_path: Path) -> str:
    parts = []
    by_stage = {
        stage: metrics[stage]
        for stage in ("untrained", "trained")
        if metrics and isinstance(metrics.get(stage), Mapping) and metric_at_k(metrics[stage])[0]
    }
    if by_stage:
        parts.append(_figure_html(lambda: plot_recall_at_k(by_stage), "Recall@K against K"))
    else:
        parts.append(_note("No recall@K metrics to plot."))
    pr_curves = {
        stage: (metrics[stage]["pr_curve_precision"], metrics[stage]["pr_curve_recall"])
        for stage in ("untrained", "trained")
        if metrics
        and isinstance(metrics.get(stage), Mapping)
        and _is_curve(metrics[stage].get("pr_curve_precision"))
        and _is_curve(metrics[stage].get("pr_curve_recall"))
    }
    if pr_curves:
        parts.append(
            _figure_html(lambda: plot_precision_recall(pr_curves), "Precision-recall (Hamming radii)")
        )
    if not log_path.is_file():
        parts.append(_note(f"{log_path.name} is missing: no training curves."))
    else:
        try:
            records = read_log(log_path)
        except ValueError as error:
            parts.append(_note(str(error), "warn"))
        else:
            parts.append(
                _figure_html(
                    lambda: plot_training_curves(records), "Training loss, learning rate and evaluation"
                )
            )
    return "".join(parts)


def _embedding_map_section(item: EmbeddingSet, max_points: int, seed: int) -> str:
    parts = []
    if item.load_image is None:
        parts.append(_note(f"No thumbnails: {item.images_missing_reason}"))
    for method in ("tsne", "umap"):
        if method == "umap" and not umap_available():
            parts.append(_note(f"No UMAP map: {UMAP_MISSING}."))
            continue
        parts.append(
            _figure_html(
                lambda method=method: plot_embedding_map(
                    item.embeddings,
                    item.labels,
                    method=method,
                    max_points=max_points,
                    seed=seed,
                    class_names=item.class_names,
                    load_image=item.load_image,
                ),
                f"{'t-SNE' if method == 'tsne' else 'UMAP'} map of the {item.name} embeddings",
            )
        )
    return "".join(parts)


def _retrieval_section(
    query: EmbeddingSet,
    gallery: EmbeddingSet | None,
    distance: str,
    max_points: int,
    seed: int,
    num_queries: int,
    top_k: int,
) -> str:
    images_missing = [s for s in (query, gallery) if s is not None and s.load_image is None]
    if images_missing:
        return _note(f"No retrieval grids: {images_missing[0].images_missing_reason}", "warn")
    searchable = len(gallery.labels) if gallery is not None else len(query.labels) - 1
    k = min(top_k, searchable)
    if k < 1:
        return _note("No retrieval grids: the gallery is too small.", "warn")
    gallery_args = (
        (gallery.embeddings, gallery.labels, gallery.load_image)
        if gallery is not None
        else (None, None, None)
    )
    candidates = sample_indices(len(query.labels), max_points, seed)
    where = (
        f"among the {gallery.name} set" if gallery is not None else "among the other items (leave-one-out)"
    )
    try:
        is_similarity = get_distance(distance).is_similarity
    except ValueError as error:
        return _note(f"No retrieval grids: {error}", "warn")
    closer = "similarity, larger is closer" if is_similarity else "distance, smaller is closer"
    intro = (
        f"<p>Top-{k} results {where}. Green frame: same class as the query; red: another class. Under each "
        f"result: its {_esc(distance)} score ({closer}) and its class.</p>"
    )
    random_grid = _figure_html(
        lambda: plot_retrieval_grid(
            query.embeddings,
            query.labels,
            query.load_image,
            *gallery_args,
            queries=candidates[choose_queries(len(candidates), num_queries, seed)],
            k=k,
            distance=distance,
            class_names=query.class_names,
            title="Random queries",
        ),
        "Retrieval results for random queries",
    )
    worst_grid = _figure_html(
        lambda: plot_worst_queries(
            query.embeddings,
            query.labels,
            query.load_image,
            *gallery_args,
            num_queries=num_queries,
            k=k,
            distance=distance,
            class_names=query.class_names,
            candidates=candidates,
        ),
        f"Worst queries: lowest average precision among {len(candidates)} queries",
    )
    return intro + random_grid + "<h3>Worst queries</h3>" + worst_grid


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #e3e6ea; padding-bottom: 0.2em; margin-top: 1.6em; }
nav a { margin-right: 1em; color: #1f4e9e; }
.meta { color: #555; margin-top: 0; }
table.metrics { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.metrics th, table.metrics td { border: 1px solid #d0d4da; padding: 0.3em 0.8em; text-align: right; }
table.metrics thead th { background: #f0f2f5; } table.metrics tbody th { text-align: left; font-weight: 600; }
td.up { color: #137a13; font-weight: 600; } td.down { color: #c0262d; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 4px; font-size: 0.85em; }
.note { padding: 0.5em 0.8em; border-left: 4px solid #8aa4c8; background: #f3f6fa; }
.note.warn { border-left-color: #d08a1a; background: #fdf6ea; }
"""


def plot_calibration_roc(calibration: Mapping) -> Figure:
    """ROC of the match threshold's calibration pairs, with the chosen operating point."""
    from deepmetric.viz.figures import new_figure

    roc = calibration["roc"]
    figure = new_figure(5.5, 4)
    ax = figure.add_subplot()
    ax.plot(roc["false_match_rate"], roc["true_match_rate"], color="#1f4e9e")
    ax.plot([calibration["false_match_rate"]], [calibration["recall"]], "o", color="#d62728")
    ax.annotate(
        f"threshold {calibration['threshold']:.4g}",
        (calibration["false_match_rate"], calibration["recall"]),
        textcoords="offset points",
        xytext=(8, 8),
    )
    ax.set(xlabel="false-match rate", ylabel="true-match rate (recall)", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return figure


def _calibration_section(calibration: Mapping) -> str:
    rows = {
        key: calibration.get(key)
        for key in ("threshold", "target", "precision", "recall", "false_match_rate", "num_pairs", "data")
    }
    table = "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows.items())
    table += "</table>"
    if not isinstance(calibration.get("roc"), Mapping):
        return table
    return table + _figure_html(lambda: plot_calibration_roc(calibration), "Match threshold ROC")


def render_page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """A complete HTML page: ``sections`` are ``(anchor id, heading, inner html)``."""
    nav = "".join(f'<a href="#{anchor}">{_esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{anchor}"><h2>{_esc(heading)}</h2>{inner}</section>'
        for anchor, heading, inner in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="meta">{_esc(subtitle)}</p><nav>{nav}</nav>{body}</body></html>\n'
    )


def write_report(
    run_dir: str | Path, *, max_points: int = 2000, seed: int = 0, num_queries: int = 6, top_k: int = 5
) -> Path:
    """Write ``run_dir/report.html`` from the run folder and return its path.

    ``max_points`` caps the embeddings drawn on the map and searched for worst queries (a seeded sample,
    ``seed``); retrieval always searches the full gallery. The grids show ``num_queries`` random queries and
    as many worst queries, each with its ``top_k`` results.
    """
    run = RunFolder(run_dir)
    run_dir, config_path = run.path, run.config_file
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {config_path.name} not found")
    config = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(config, Mapping):
        raise ValueError(f"{config_path} must hold a YAML mapping, got {type(config).__name__}")
    data_cfg = config.get("data") or {}
    distance = (config.get("eval") or {}).get("distance") or "cosine"  # evaluation's default

    metrics, metrics_problem = _read_optional_json(run.metrics_file)
    sections = [
        (
            "metrics",
            "Metrics",
            metrics_table_html(metrics)
            if metrics is not None
            else _note(f"No metrics: {metrics_problem}.", "warn"),
        ),
        ("curves", "Curves", _curves_section(metrics, run.log_file)),
    ]

    test_split = data_cfg.get("test_split") or "test"
    gallery_split = data_cfg.get("gallery_split")
    # the trainer saves "<test_split>" embeddings, or "query" and "gallery" ones in that protocol
    query_names = [test_split] if gallery_split is None else list(dict.fromkeys(["query", test_split]))
    query, query_problem = _load_split(run, data_cfg, query_names, test_split)
    gallery, gallery_problem = None, None
    if gallery_split is not None:
        gallery, gallery_problem = _load_split(
            run, data_cfg, list(dict.fromkeys(["gallery", gallery_split])), gallery_split
        )
    if query is None:
        embedding_html = _note(f"No embedding map: {query_problem}.", "warn")
        retrieval_html = _note(f"No retrieval grids: {query_problem}.", "warn")
    else:
        embedding_html = _embedding_map_section(query, max_points, seed)
        if gallery_split is not None and gallery is None:
            retrieval_html = _note(f"No retrieval grids: {gallery_problem}.", "warn")
        else:
            retrieval_html = _retrieval_section(
                query, gallery, distance, max_points, seed, num_queries, top_k
            )
    sections += [
        ("embeddings", "Embedding map", embedding_html),
        ("retrieval", "Retrieval examples", retrieval_html),
    ]
    if run.calibration_file.exists():  # written by deepmetric calibrate
        calibration, problem = _read_optional_json(run.calibration_file)
        inner = _note(problem, "warn") if calibration is None else _calibration_section(calibration)
        sections.append(("calibration", "Match threshold", inner))
    sections += [
        (
            "config",
            "Config",
            f"<pre>{_esc(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))}</pre>",
        ),
    ]
    name = config.get("name") or run_dir.name
    subtitle = f"Run folder {run_dir.resolve()} · dataset {data_cfg.get('name')} · distance {distance}"
    return run.write_text(run.report_file, render_page(f"deepmetric report: {name}", subtitle, sections))
