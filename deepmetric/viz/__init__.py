"""Looking at embeddings: maps, retrieval grids, curves, the per-run HTML report and run comparisons.

All figures are built on Agg-backed :class:`matplotlib.figure.Figure` objects (no ``pyplot``, never
shown); functions return the figure, and most accept an ``ax`` to draw into an existing one.
"""

from deepmetric.viz.compare import (
    GroupSummary,
    plot_metric_bars,
    plot_metric_panels,
    plot_metric_vs_param,
    results_from_runs,
    summarize,
    write_comparison,
)
from deepmetric.viz.curves import plot_precision_recall, plot_recall_at_k, plot_training_curves, read_log
from deepmetric.viz.embedding_map import plot_embedding_map, project_2d, umap_available
from deepmetric.viz.figures import figure_to_png, save_figure
from deepmetric.viz.report import write_report
from deepmetric.viz.retrieval_grid import plot_retrieval_grid, plot_worst_queries, worst_queries

__all__ = [
    "GroupSummary",
    "figure_to_png",
    "plot_embedding_map",
    "plot_metric_bars",
    "plot_metric_panels",
    "plot_metric_vs_param",
    "plot_precision_recall",
    "plot_recall_at_k",
    "plot_retrieval_grid",
    "plot_training_curves",
    "plot_worst_queries",
    "project_2d",
    "read_log",
    "results_from_runs",
    "save_figure",
    "summarize",
    "umap_available",
    "worst_queries",
    "write_comparison",
    "write_report",
]
