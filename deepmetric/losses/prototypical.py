"""Prototypical networks — Snell et al., "Prototypical Networks for Few-shot Learning", NIPS 2017.

Each class is represented by the mean of its support embeddings; a query is classified by a softmax over
negative squared Euclidean distances to the prototypes::

    c_k = 1/|S_k| sum_{x in S_k} x
    L_i = -log( exp(-d(x_i, c_{y_i})) / sum_k exp(-d(x_i, c_k)) ),   d = ||.||^2

With ``ref_embeddings`` / ``ref_labels`` those are the support set and the batch is the query set; a
query whose class has no support sample does not enter the loss. Without them the batch is both, and a
query's own class prototype leaves the query out (leave-one-out, ``c_{y_i}^{(-i)} = (|S_k| c_k - x_i) /
(|S_k| - 1)``) so that no sample is classified by a prototype it helped to build; a sample that is the
only one of its class is then not scored (it still acts as its class's prototype for the others).
Per-element losses are per scored query; with mined ``indices`` only the mined samples are scored.
With a similarity distance the logits are the similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import mined_samples, similarities, working_dtype
from deepmetric.masks import PairIndices, TripletIndices


@LOSSES.register("prototypical")
class PrototypicalLoss(MetricLoss):
    default_distance = "squared_euclidean"
    supports_multilabel = False

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = working_dtype(embeddings)
        queries = embeddings.to(dtype)
        leave_one_out = ref_embeddings is None
        support, support_labels = (
            (queries, labels) if leave_one_out else (ref_embeddings.to(dtype), ref_labels)
        )
        classes, support_class = torch.unique(support_labels, return_inverse=True)
        num_classes = classes.shape[0]
        sums = torch.zeros(num_classes, support.shape[1], dtype=dtype, device=support.device)
        sums = sums.index_add(0, support_class, support)
        counts = torch.bincount(support_class, minlength=num_classes)
        logits = similarities(self.distance, queries, sums / counts[:, None].to(dtype))
        if leave_one_out:
            query_class = support_class
            own_count = counts[query_class] - 1
            scored = own_count > 0
            own_prototype = (sums[query_class] - queries) / own_count.clamp_min(1)[:, None].to(dtype)
            own = self.distance.paired(queries, own_prototype)
            own = own if self.distance.is_similarity else -own
            logits = logits.scatter(1, query_class[:, None], own[:, None])
        else:
            labels = labels.to(classes.dtype)
            position = torch.searchsorted(classes, labels).clamp_max(num_classes - 1)
            scored = classes[position] == labels
            query_class = position
        if indices is not None:
            # Mined positives/negatives index the support set, so only anchors select queries.
            scored = scored & mined_samples(
                indices, queries.shape[0], queries.device, anchors_only=not leave_one_out
            )
        return F.cross_entropy(logits[scored], query_class[scored], reduction="none")
