"""Evaluation of embeddings: exact chunked k-NN, retrieval metrics and clustering scores.

``evaluate(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, metrics=...)``
returns ``{metric name: value}``; see :mod:`deepmetric.evaluation.metrics` for the definitions.
"""

from deepmetric.evaluation.clustering import cluster_scores, kmeans
from deepmetric.evaluation.evaluate import DEFAULT_METRICS, EvaluationResult, evaluate, evaluate_detailed
from deepmetric.evaluation.knn import knn
from deepmetric.evaluation.metrics import METRIC_NAMES, MetricSpec, parse_metric

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "EvaluationResult",
    "MetricSpec",
    "cluster_scores",
    "evaluate",
    "evaluate_detailed",
    "kmeans",
    "knn",
    "parse_metric",
]
