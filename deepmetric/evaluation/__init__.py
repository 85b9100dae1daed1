"""Evaluation of embeddings: retrieval, clustering and verification metrics over one exact ranking.

``evaluate(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, metrics=...)``
returns ``{metric name: value}``; see :mod:`deepmetric.evaluation.metrics` for the definitions.
"""

from deepmetric.evaluation.clustering import cluster_scores, kmeans
from deepmetric.evaluation.evaluate import DEFAULT_METRICS, EvaluationResult, evaluate, evaluate_detailed
from deepmetric.evaluation.metrics import METRIC_NAMES, METRICS, Metric, MetricSpec, define, parse_metric
from deepmetric.evaluation.verification import Pairs, pair_distances, roc_curve
from deepmetric.retrieval.knn import knn

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "EvaluationResult",
    "Metric",
    "MetricSpec",
    "Pairs",
    "cluster_scores",
    "define",
    "evaluate",
    "evaluate_detailed",
    "kmeans",
    "knn",
    "pair_distances",
    "parse_metric",
    "roc_curve",
]
