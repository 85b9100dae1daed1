"""Slow, loop-based float64 reference implementations of the proxy-, classification- and set-based losses.

Each function is written from the paper's formula with plain Python loops over samples, classes and
pairs (no masks, no vectorisation, no deepmetric code), so autograd through it gives the reference
gradient. Class vectors (proxies, weights, centres) are passed in explicitly; labels are 1-D class ids
unless a function says it also takes multi-hot rows.
"""

from __future__ import annotations

import itertools
import math

import torch


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm() * b.norm())


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum()


def log_sum_exp(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.logsumexp(torch.stack(terms), 0)


def label_set(row: torch.Tensor) -> set[int]:
    """The classes of a sample: ``{id}`` for a class id, the hot columns of a multi-hot row."""
    if row.ndim == 0:
        return {int(row)}
    return {int(c) for c in torch.nonzero(row).flatten()}


def related(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(label_set(a) & label_set(b))


def proxy_nca(x, labels, proxies, temperature=1.0):
    """Movshovitz-Attias et al. 2017, softmax over all proxies: ``-log sum_{c in Y} p_c``."""
    losses = []
    for i in range(len(x)):
        logits = [-sq_dist(unit(x[i]), unit(p)) / temperature for p in proxies]
        pos = [logits[c] for c in label_set(labels[i])]
        if pos:
            losses.append(log_sum_exp(logits) - log_sum_exp(pos))
    return torch.stack(losses).mean()


def proxy_anchor(x, labels, proxies, alpha=32.0, margin=0.1):
    """Kim et al. 2020, eq. 4; labels may be multi-hot rows."""
    num_classes = len(proxies)
    pos_total, neg_total, with_positives = 0.0, 0.0, 0
    for c in range(num_classes):
        pos, neg = [], []
        for i in range(len(x)):
            s = cos_sim(x[i], proxies[c])
            if c in label_set(labels[i]):
                pos.append(torch.exp(-alpha * (s - margin)))
            else:
                neg.append(torch.exp(alpha * (s + margin)))
        if pos:
            with_positives += 1
            pos_total = pos_total + torch.log(1 + torch.stack(pos).sum())
        if neg:
            neg_total = neg_total + torch.log(1 + torch.stack(neg).sum())
    return pos_total / max(with_positives, 1) + neg_total / num_classes


def _softmax_ce(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    return log_sum_exp(logits) - logits[target]


def normalized_softmax(x, labels, weights, temperature=0.05):
    """Zhai & Wu 2018: cross-entropy over cosine(x, w_c) / T."""
    losses = []
    for i in range(len(x)):
        logits = [cos_sim(x[i], w) / temperature for w in weights]
        losses.append(_softmax_ce(logits, int(labels[i])))
    return torch.stack(losses).mean()


def cosface(x, labels, weights, margin=0.35, scale=64.0):
    """Wang et al. 2018: target logit s (cos - m)."""
    losses = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = [scale * (cos_sim(x[i], w) - (margin if c == y else 0.0)) for c, w in enumerate(weights)]
        losses.append(_softmax_ce(logits, y))
    return torch.stack(losses).mean()


def arcface(x, labels, weights, margin=0.5, scale=64.0):
    """Deng et al. 2019: target logit s cos(theta + m); past theta = pi - m the linear cos - m sin m."""
    losses = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = []
        for c, w in enumerate(weights):
            cosine = cos_sim(x[i], w)
            if c == y:
                theta = torch.acos(cosine)
                cosine = (
                    torch.cos(theta + margin)
                    if theta + margin <= math.pi
                    else cosine - margin * math.sin(margin)
                )
            logits.append(scale * cosine)
        losses.append(_softmax_ce(logits, y))
    return torch.stack(losses).mean()


def soft_triple(x, labels, centers, la=20.0, gamma=0.1, tau=0.2, margin=0.01):
    """Qian et al. 2019, eqs. 6-9; ``centers`` is ``C x K x D``."""
    num_classes, k = centers.shape[0], centers.shape[1]
    losses = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = []
        for c in range(num_classes):
            sims = torch.stack([cos_sim(x[i], centers[c, t]) for t in range(k)])
            relaxed = (torch.softmax(sims / gamma, 0) * sims).sum()
            logits.append(la * (relaxed - (margin if c == y else 0.0)))
        losses.append(_softmax_ce(logits, y))
    regulariser = 0.0
    if k > 1:
        for c in range(num_classes):
            for t, u in itertools.combinations(range(k), 2):
                regulariser = regulariser + (unit(centers[c, t]) - unit(centers[c, u])).norm()
        regulariser = regulariser / (num_classes * k * (k - 1))
    return torch.stack(losses).mean() + tau * regulariser


def prototypical(x, labels, support=None, support_labels=None):
    """Snell et al. 2017; without a support set, leave-one-out prototypes over the batch."""
    leave_one_out = support is None
    if leave_one_out:
        support, support_labels = x, labels
    classes = sorted({int(c) for c in support_labels})
    losses = []
    for i in range(len(x)):
        y = int(labels[i])
        if y not in classes:
            continue
        logits, target = [], None
        for k, c in enumerate(classes):
            members = [
                support[j]
                for j in range(len(support))
                if int(support_labels[j]) == c and not (leave_one_out and j == i)
            ]
            if not members:  # the query is its class's only sample
                break
            prototype = torch.stack(members).mean(0)
            logits.append(-sq_dist(x[i], prototype))
            if c == y:
                target = k
        else:
            losses.append(_softmax_ce(logits, target))
    return torch.stack(losses).mean()


def nca(x, labels, scale=1.0, ref=None, ref_labels=None):
    """Goldberger et al. 2005: ``-log sum_{j in P(i)} p_ij``, squared Euclidean distances."""
    same_set = ref is None
    ref, ref_labels = (x, labels) if same_set else (ref, ref_labels)
    losses = []
    for i in range(len(x)):
        others = [j for j in range(len(ref)) if not (same_set and j == i)]
        logits = {j: -scale * sq_dist(x[i], ref[j]) for j in others}
        pos = [logits[j] for j in others if related(labels[i], ref_labels[j])]
        if pos:
            losses.append(log_sum_exp(list(logits.values())) - log_sum_exp(pos))
    return torch.stack(losses).mean()


def supcon(x, labels, temperature=0.1, ref=None, ref_labels=None):
    """Khosla et al. 2020, L^sup_out (eq. 2), cosine similarity."""
    same_set = ref is None
    ref, ref_labels = (x, labels) if same_set else (ref, ref_labels)
    losses = []
    for i in range(len(x)):
        others = [j for j in range(len(ref)) if not (same_set and j == i)]
        logits = {j: cos_sim(x[i], ref[j]) / temperature for j in others}
        positives = [j for j in others if related(labels[i], ref_labels[j])]
        if not positives:
            continue
        denominator = log_sum_exp(list(logits.values()))
        losses.append(-torch.stack([logits[p] - denominator for p in positives]).mean())
    return torch.stack(losses).mean()


def ntxent(x, labels, temperature=0.1, ref=None, ref_labels=None, pairs=None):
    """Chen et al. 2020, one term per positive pair ``(i, p)``; ``pairs``: (positive, negative) pair lists."""
    same_set = ref is None
    ref, ref_labels = (x, labels) if same_set else (ref, ref_labels)
    if pairs is None:
        every = [(i, j) for i in range(len(x)) for j in range(len(ref)) if not (same_set and i == j)]
        pos_pairs = [(i, j) for i, j in every if related(labels[i], ref_labels[j])]
        neg_pairs = [(i, j) for i, j in every if not related(labels[i], ref_labels[j])]
    else:
        pos_pairs, neg_pairs = pairs
    losses = []
    for i, p in pos_pairs:
        pos = cos_sim(x[i], ref[p]) / temperature
        negs = [cos_sim(x[i], ref[n]) / temperature for a, n in neg_pairs if a == i]
        losses.append(log_sum_exp([pos, *negs]) - pos)
    return torch.stack(losses).mean()


# ----- facility location (Song et al. 2017) -----


def nmi(a: list[int], b: list[int]) -> float:
    """``2 I(a; b) / (H(a) + H(b))``, 1 when both are a single cluster."""
    n = len(a)
    count_a = {u: a.count(u) for u in set(a)}
    count_b = {v: b.count(v) for v in set(b)}
    joint = {}
    for u, v in zip(a, b):
        joint[(u, v)] = joint.get((u, v), 0) + 1
    mi = sum(c / n * math.log(n * c / (count_a[u] * count_b[v])) for (u, v), c in joint.items())
    h_a = -sum(c / n * math.log(c / n) for c in count_a.values())
    h_b = -sum(c / n * math.log(c / n) for c in count_b.values())
    return 1.0 if h_a + h_b == 0 else 2 * mi / (h_a + h_b)


def assign(distances: torch.Tensor, medoids: list[int]) -> list[int]:
    """Each point's nearest medoid (position in ``medoids``; ties to the earlier one)."""
    out = []
    for i in range(distances.shape[0]):
        best = 0
        for k in range(1, len(medoids)):
            if distances[i, medoids[k]] < distances[i, medoids[best]]:
                best = k
        out.append(best)
    return out


def facility(distances: torch.Tensor, medoids: list[int]) -> torch.Tensor:
    """``F(X, S) = -sum_i min_{j in S} d(x_i, x_j)``."""
    return -torch.stack(
        [torch.stack([distances[i, j] for j in medoids]).min() for i in range(len(distances))]
    ).sum()


def greedy_medoids(distances: torch.Tensor, labels: list[int], gamma: float) -> list[int]:
    """The paper's greedy loss-augmented inference, every candidate scored from scratch."""
    medoids: list[int] = []
    for _ in range(len(set(labels))):
        best, best_score = None, -math.inf
        for j in range(len(distances)):
            if j in medoids:
                continue
            candidate = [*medoids, j]
            score = float(facility(distances, candidate)) + gamma * (
                1 - nmi(assign(distances, candidate), labels)
            )
            if score > best_score:
                best, best_score = j, score
        medoids.append(best)
    return medoids


def facility_location(x, labels, gamma=1.0):
    """``[F(X, S^) + gamma (1 - NMI(g(S^), y)) - F~(X, y)]_+`` with Euclidean distances."""
    n = len(x)
    distances = torch.stack(
        [
            torch.stack([((x[i] - x[j]) ** 2).sum().clamp_min(1e-30).sqrt() for j in range(n)])
            for i in range(n)
        ]
    )
    distances = distances * (1 - torch.eye(n, dtype=x.dtype))  # exact zeros on the diagonal
    ids = [int(v) for v in labels]
    medoids = greedy_medoids(distances.detach(), ids, gamma)
    predicted = facility(distances, medoids) + gamma * (1 - nmi(assign(distances.detach(), medoids), ids))
    oracle = 0.0
    for c in set(ids):
        members = [i for i in range(n) if ids[i] == c]
        oracle = oracle + max(
            (-torch.stack([distances[i, j] for i in members]).sum() for j in members),
            key=lambda v: float(v.detach()),
        )
    return torch.relu(predicted - oracle), medoids
