"""Clustering loss via facility location — Song et al., "Deep Metric Learning via Facility Location",
CVPR 2017.

With ``d`` the pairwise distance, a set ``S`` of medoids scores the batch ``X`` by the facility location
function, and the ground-truth clustering ``y*`` by the best medoid inside each class::

    F(X, S)      = -sum_i min_{j in S} d(x_i, x_j)
    F~(X, y*)    = sum_k max_{j : y*_j = k} F({i : y*_i = k}, {j})
    L(X, y*)     = [ max_{|S| = |Y|} { F(X, S) + gamma (1 - NMI(g(S), y*)) } - F~(X, y*) ]_+

``g(S)`` assigns every point to its nearest medoid (ties to the earlier chosen one) and
``NMI(a, b) = 2 I(a; b) / (H(a) + H(b))`` (1 when both are a single cluster). The structured margin
``gamma (1 - NMI)`` makes the loss demand that the ground-truth clustering beat every other clustering
by a margin that grows with its disagreement with the labels.

Loss-augmented inference (the max over ``S``) is the paper's greedy algorithm: start from ``S = {}`` and
``|Y|`` times add the point that maximises ``F(X, S + {j}) + gamma (1 - NMI(g(S + {j}), y*))``. Every
step scores all ``N`` candidates at once: a candidate ``j`` takes over the points with
``d(x_i, x_j) < min_{s in S} d(x_i, x_s)``, so its facility score is a row sum of
``min(d(., j), current)``, and its contingency table is the current one minus the points it takes
(sums over the at most ``N`` non-empty (cluster, class) cells) plus one new cluster. The paper's
optional PAM refinement of the medoids (its section 3.4) is not run.

Complexity: ``O(N^2 D)`` for the distances, ``O(|Y| N^2)`` time and ``O(N^2)`` memory for the greedy
inference (``|Y|`` = classes in the batch), ``O(N^2)`` for the oracle ``F~``. The inference runs without
gradients; the loss is differentiated through ``d`` with the chosen medoids fixed. The loss is defined on
the whole batch, so :meth:`compute` returns a scalar. Default distance: Euclidean (the paper's, on
L2-normalised embeddings); ``gamma = 1`` (the paper's code default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES, MetricLoss
from deepmetric.losses.logits import mined_samples, similarities, working_dtype
from deepmetric.masks import PairIndices, TripletIndices


def _entropy(counts: torch.Tensor, total: float) -> torch.Tensor:
    """Entropy (nats) of the distributions given by ``counts`` along the last dimension."""
    p = counts / total
    return -torch.special.xlogy(p, p).sum(-1)


def _mutual_information_terms(
    joint: torch.Tensor, row_sizes: torch.Tensor, col_sizes: torch.Tensor, total: float
) -> torch.Tensor:
    """``n/N log(N n / (a b))`` for contingency counts ``n`` with marginals ``a``, ``b`` (0 at ``n = 0``)."""
    ratio = total * joint / (row_sizes * col_sizes).clamp_min(1)
    return torch.special.xlogy(joint, torch.where(joint > 0, ratio, torch.ones_like(ratio))) / total


def normalized_mutual_information(
    mutual_information: torch.Tensor, entropy_a: torch.Tensor, entropy_b: torch.Tensor
) -> torch.Tensor:
    """``2 I / (H_a + H_b)``; 1 where both clusterings are a single cluster (both entropies zero)."""
    denominator = entropy_a + entropy_b
    nmi = 2 * mutual_information.clamp_min(0) / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    return torch.where(denominator > 0, nmi.clamp_max(1), torch.ones_like(nmi))


def clustering_nmi(predicted: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """NMI between two labelings given as dense ids ``0..K-1``."""
    total = float(predicted.shape[0])
    num_pred, num_classes = int(predicted.max()) + 1, int(classes.max()) + 1
    ones = torch.ones(predicted.shape[0], dtype=torch.float64, device=predicted.device)
    joint = torch.zeros(num_pred * num_classes, dtype=torch.float64, device=predicted.device)
    joint = joint.index_add(0, predicted * num_classes + classes, ones)
    joint = joint.reshape(num_pred, num_classes)
    pred_sizes, class_sizes = joint.sum(1), joint.sum(0)
    mi = _mutual_information_terms(joint, pred_sizes[:, None], class_sizes[None, :], total).sum()
    return normalized_mutual_information(mi, _entropy(pred_sizes, total), _entropy(class_sizes, total))


def _xlogx(counts: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(counts, counts)


@torch.no_grad()
def greedy_loss_augmented_medoids(cost: torch.Tensor, classes: torch.Tensor, gamma: float) -> torch.Tensor:
    """The medoids chosen greedily for ``max_S F(X, S) + gamma (1 - NMI(g(S), classes))``, in order.

    ``cost``: ``N x N`` distances; ``classes``: dense class ids ``0..C-1``. Returns ``C`` point indices.
    The mutual information of a clustering with contingency counts ``n`` (clusters ``a``, classes ``b``)
    is ``(sum n log n - sum a log a - sum b log b) / N + log N``, so a candidate only needs the counts it
    changes: what it takes from each current (cluster, class) cell and each cluster, and its own
    cluster's cells. Points are rows and candidates columns, so that these counts are row sums
    (``index_add`` of whole rows: ``O(N)`` per candidate, however many cells).
    """
    num_points = cost.shape[0]
    total = float(num_points)
    num_classes = int(classes.max()) + 1
    work = torch.float64  # entropies: exact comparisons between candidates
    cost = cost.to(work)  # row i: the distances of point i to every candidate
    class_sizes = torch.bincount(classes, minlength=num_classes).to(work)
    class_entropy = _entropy(class_sizes, total)
    class_terms = _xlogx(class_sizes).sum()
    # n log n of every count 0..N, looked up: several times cheaper than computing it for each cell
    xlogx = _xlogx(torch.arange(num_points + 1, dtype=work, device=cost.device))

    def summed(counts: torch.Tensor) -> torch.Tensor:  # sum of n log n over each column of counts
        return xlogx.index_select(0, counts.to(torch.int32).flatten()).view(counts.shape).sum(0)

    nearest = torch.full((num_points, 1), float("inf"), dtype=work, device=cost.device)
    assignment = torch.zeros(num_points, dtype=torch.long, device=cost.device)
    available = torch.ones(num_points, dtype=torch.bool, device=cost.device)
    chosen = []
    for step in range(num_classes):
        takes = cost < nearest  # N x J: the points each candidate would take over
        taken = takes.float()  # counts in float32 are exact
        facility = -torch.minimum(cost, nearest).sum(0)
        new_cells = taken.new_zeros(num_classes, num_points).index_add_(0, classes, taken)
        new_size = new_cells.sum(0, keepdim=True)
        cell_terms = summed(new_cells)
        cluster_sizes = new_size
        if step:  # the current clusters, less what the candidate takes
            cells, cell_of_point, cell_counts = torch.unique(
                assignment * num_classes + classes, return_inverse=True, return_counts=True
            )
            removed = taken.new_zeros(len(cells), num_points).index_add_(0, cell_of_point, taken)
            cell_terms = cell_terms + summed(cell_counts[:, None] - removed)
            cluster_counts = torch.bincount(assignment, minlength=step)
            removed = taken.new_zeros(step, num_points).index_add_(0, assignment, taken)
            cluster_sizes = torch.cat([cluster_counts[:, None] - removed, new_size])
        cluster_terms = summed(cluster_sizes)
        mi = (cell_terms - cluster_terms - class_terms) / total + math.log(total)
        nmi = normalized_mutual_information(mi, _entropy(cluster_sizes.T.to(work), total), class_entropy)
        score = torch.where(available, facility + gamma * (1 - nmi), torch.full_like(facility, float("-inf")))
        best = int(score.argmax())
        chosen.append(best)
        available[best] = False
        assignment = torch.where(takes[:, best], step, assignment)
        nearest = torch.minimum(nearest, cost[:, best : best + 1])
    return torch.tensor(chosen, dtype=torch.long, device=cost.device)


@LOSSES.register("facility_location")
class FacilityLocationLoss(MetricLoss):
    supports_multilabel = False

    def __init__(
        self, gamma: float = 1.0, distance: str | Distance | None = None, reduction: str = "mean"
    ) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        super().__init__(distance=distance, reduction=reduction)
        self.gamma = gamma

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if ref_embeddings is not None:
            raise ValueError("FacilityLocationLoss clusters the batch itself; it takes no ref_embeddings")
        x = embeddings.to(working_dtype(embeddings))
        if indices is not None:
            mined = mined_samples(indices, x.shape[0], x.device)
            x, labels = x[mined], labels[mined]
            if x.shape[0] == 0:
                return embeddings.sum() * 0
        _, classes = torch.unique(labels, return_inverse=True)
        cost = -similarities(self.distance, x, None)  # distances; negated similarities for a similarity
        medoids = greedy_loss_augmented_medoids(cost.detach(), classes, self.gamma)
        cost_to_medoids = cost[:, medoids]
        predicted = cost_to_medoids.detach().argmin(1)  # first minimum = earliest chosen medoid on ties
        augmented_score = -cost_to_medoids.min(1).values.sum() + self.gamma * (
            1 - clustering_nmi(predicted, classes).to(cost.dtype)
        )
        return F.relu(augmented_score - self.oracle_score(cost, classes))

    @staticmethod
    def oracle_score(cost: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``F~``: each class served by the member minimising the summed distance to its class."""
        same_class = classes[:, None] == classes[None, :]
        within = torch.where(same_class, cost, torch.zeros_like(cost)).sum(0)  # column j: cost of j as medoid
        num_classes = int(classes.max()) + 1
        member = F.one_hot(classes, num_classes).T.bool()  # C x N
        best = torch.where(
            member, within.detach()[None, :], torch.full_like(member, float("inf"), dtype=cost.dtype)
        )
        medoids = best.argmin(1)
        return -within[medoids].sum()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
