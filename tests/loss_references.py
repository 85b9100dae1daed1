"""Slow, loop-based reference implementations of the pair/triplet losses, written from the papers' formulas.

Each function takes float64 embeddings (and an optional reference set), explicit lists of positive and
negative pairs / triplets, and returns the scalar loss built from plain Python loops over those pairs, so
autograd through it gives the reference gradient. Pair structures come from :func:`pairs_from_labels`,
which is independent of ``deepmetric.masks``.
"""

from __future__ import annotations

import math

import torch

Pair = tuple[int, int]
Triplet = tuple[int, int, int]


def related(labels_i: torch.Tensor, labels_j: torch.Tensor) -> bool:
    """Same class (1-D ids) or at least one shared label (multi-hot rows)."""
    if labels_i.ndim == 0:
        return bool(labels_i == labels_j)
    return bool((labels_i * labels_j).sum() > 0)


def pairs_from_labels(labels, ref_labels=None) -> tuple[list[Pair], list[Pair]]:
    """All (row, column) positive and negative pairs; self-pairs are left out without a reference set."""
    same_set = ref_labels is None
    ref_labels = labels if same_set else ref_labels
    positives, negatives = [], []
    for i in range(len(labels)):
        for j in range(len(ref_labels)):
            if same_set and i == j:
                continue
            (positives if related(labels[i], ref_labels[j]) else negatives).append((i, j))
    return positives, negatives


def triplets_from_pairs(positives: list[Pair], negatives: list[Pair]) -> list[Triplet]:
    return [(a, p, n) for a, p in positives for a2, n in negatives if a == a2]


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((x - y) ** 2).sum())


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y) / (x.norm() * y.norm())


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x @ y


def _ref(x, ref):
    return x if ref is None else ref


def _lse(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.logsumexp(torch.stack(terms), 0)


def contrastive(x, positives, negatives, ref=None, pos_margin=0.0, neg_margin=1.0, squared=False):
    """Hadsell 2006, averaged over the non-zero pair losses."""
    r = _ref(x, ref)
    power = 2 if squared else 1
    losses = [torch.clamp(euclidean(x[i], r[j]) - pos_margin, min=0) ** power for i, j in positives]
    losses += [torch.clamp(neg_margin - euclidean(x[i], r[k]), min=0) ** power for i, k in negatives]
    return mean_nonzero(losses)


def mean_nonzero(losses: list[torch.Tensor]) -> torch.Tensor:
    nonzero = [v for v in losses if v > 0]
    return torch.stack(nonzero).sum() / len(nonzero) if nonzero else torch.zeros((), dtype=torch.float64)


def triplet(x, triplets, ref=None, margin=0.2, soft=False, reduction="mean_nonzero", distance=euclidean):
    """FaceNet hinge / Hermans soft-margin triplet loss."""
    r = _ref(x, ref)
    sign = -1.0 if distance in (cosine, dot) else 1.0
    losses = []
    for a, p, n in triplets:
        violation = sign * (distance(x[a], r[p]) - distance(x[a], r[n])) + margin
        losses.append(torch.log1p(torch.exp(violation)) if soft else torch.clamp(violation, min=0))
    if reduction == "mean":
        return torch.stack(losses).mean()
    if reduction == "sum":
        return torch.stack(losses).sum()
    return mean_nonzero(losses)


def lifted_structure(x, positives, negatives, ref=None, neg_margin=1.0, pos_margin=0.0):
    """Song 2016 eq. 4: 1/(2|P|) Σ_P [log(Σ_{N(i)} e^{α-D_ik} + Σ_{N(j)} e^{α-D_lj}) + D_ij]_+²."""
    r = _ref(x, ref)
    losses = []
    for i, j in positives:
        terms = [neg_margin - euclidean(x[i], r[k]) for a, k in negatives if a == i]
        terms += [neg_margin - euclidean(x[l], r[j]) for l, k in negatives if k == j]
        value = _lse(terms) + euclidean(x[i], r[j]) - pos_margin
        losses.append(torch.clamp(value, min=0) ** 2)
    return torch.stack(losses).sum() / (2 * len(positives))


def generalized_lifted_structure(x, positives, negatives, ref=None, neg_margin=1.0, pos_margin=0.0):
    """Hermans 2017: mean over anchors of [log Σ_P e^{D_ap - m_pos} + log Σ_N e^{α - D_an}]_+."""
    r = _ref(x, ref)
    losses = []
    for a in range(len(x)):
        pos = [euclidean(x[a], r[p]) - pos_margin for i, p in positives if i == a]
        neg = [neg_margin - euclidean(x[a], r[n]) for i, n in negatives if i == a]
        if pos and neg:
            losses.append(torch.clamp(_lse(pos) + _lse(neg), min=0))
    return torch.stack(losses).mean()


def npair(x, pairs: list[Pair], ref=None, l2_reg_weight=0.0):
    """Sohn 2016 eq. 6 over the given (anchor, positive) pairs, one per class."""
    r = _ref(x, ref)
    total = torch.zeros((), dtype=torch.float64)
    for i, (a, p) in enumerate(pairs):
        inner = [torch.exp(dot(x[a], r[pj]) - dot(x[a], r[p])) for j, (_, pj) in enumerate(pairs) if j != i]
        total = total + torch.log(1 + torch.stack(inner).sum())
        total = total + l2_reg_weight / 4 * (dot(x[a], x[a]) + dot(r[p], r[p]))
    return total / len(pairs)


def multi_similarity(x, positives, negatives, ref=None, alpha=2.0, beta=50.0, base=0.5):
    """Wang 2019 eq. 12 with cosine similarity, mean over all anchors."""
    r = _ref(x, ref)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(len(x)):
        pos = [torch.exp(-alpha * (cosine(x[a], r[k]) - base)) for i, k in positives if i == a]
        neg = [torch.exp(beta * (cosine(x[a], r[k]) - base)) for i, k in negatives if i == a]
        if pos:
            total = total + torch.log(1 + torch.stack(pos).sum()) / alpha
        if neg:
            total = total + torch.log(1 + torch.stack(neg).sum()) / beta
    return total / len(x)


def angular(x, positives, negatives, ref=None, alpha_degrees=40.0):
    """Wang 2017 (N-pair form): mean over (a, p) of log(1 + Σ_n exp(4tan²α (a+p)ᵀn - 2(1+tan²α) aᵀp))."""
    r = _ref(x, ref)
    xn = x / x.norm(dim=1, keepdim=True)
    rn = r / r.norm(dim=1, keepdim=True)
    t2 = math.tan(math.radians(alpha_degrees)) ** 2
    losses = []
    for a, p in positives:
        terms = [
            torch.exp(4 * t2 * ((xn[a] + rn[p]) @ rn[n]) - 2 * (1 + t2) * (xn[a] @ rn[p]))
            for i, n in negatives
            if i == a
        ]
        losses.append(torch.log(1 + torch.stack(terms).sum()) if terms else torch.zeros((), dtype=x.dtype))
    return torch.stack(losses).mean()


def margin(x, positives, negatives, beta, ref=None, margin_=0.2, nu=0.0, labels=None):
    """Wu 2017: Σ [α + y_ij (D_ij - β_i)]_+ over the non-zero pairs, plus ν · mean pair β_i."""
    r = _ref(x, ref)

    def beta_of(i):
        return beta[0] if beta.numel() == 1 else beta[labels[i]]

    losses = [torch.clamp(margin_ + euclidean(x[i], r[j]) - beta_of(i), min=0) for i, j in positives]
    losses += [torch.clamp(margin_ - euclidean(x[i], r[k]) + beta_of(i), min=0) for i, k in negatives]
    reg = torch.stack([beta_of(i) for i, _ in positives + negatives]).mean()
    return mean_nonzero(losses) + nu * reg


def binomial_deviance(x, positives, negatives, ref=None, alpha=2.0, beta=0.5, cost=25.0):
    """Yi 2014: Σ_pos 1/n_pos log(1+e^{-α(S-β)}) + Σ_neg 1/n_neg log(1+e^{αC(S-β)})."""
    r = _ref(x, ref)
    pos = [torch.log1p(torch.exp(-alpha * (cosine(x[i], r[j]) - beta))) for i, j in positives]
    neg = [torch.log1p(torch.exp(alpha * cost * (cosine(x[i], r[k]) - beta))) for i, k in negatives]
    return torch.stack(pos).sum() / len(pos) + torch.stack(neg).sum() / len(neg)


def circle(x, positives, negatives, ref=None, m=0.25, gamma=256.0):
    """Sun 2020 eq. 4 (pair form), mean over anchors with both positives and negatives."""
    r = _ref(x, ref)
    losses = []
    for a in range(len(x)):
        sp = [cosine(x[a], r[k]) for i, k in positives if i == a]
        sn = [cosine(x[a], r[k]) for i, k in negatives if i == a]
        if not sp or not sn:
            continue
        pos = [-gamma * torch.clamp(1 + m - s.detach(), min=0) * (s - (1 - m)) for s in sp]
        neg = [gamma * torch.clamp(s.detach() + m, min=0) * (s - m) for s in sn]
        # log(1 + e^z) written stably: γ = 256 overflows exp in float64.
        losses.append(torch.nn.functional.softplus(_lse(pos) + _lse(neg)))
    return torch.stack(losses).mean()


def ranked_list(x, positives, negatives, margin_=0.4, alpha=1.2, temperature=10.0, imbalance=0.5):
    """Wang 2019 RLL on L2-normalised embeddings, mean over anchors; weights are constants."""
    xn = x / x.norm(dim=1, keepdim=True)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(len(x)):
        pos = [euclidean(xn[a], xn[k]) for i, k in positives if i == a]
        neg = [euclidean(xn[a], xn[k]) for i, k in negatives if i == a]
        pos = [d for d in pos if d > alpha - margin_]
        neg = [d for d in neg if d < alpha]
        if pos:
            total = total + (1 - imbalance) * torch.stack([d - (alpha - margin_) for d in pos]).mean()
        if neg:
            weights = torch.stack([torch.exp(temperature * (alpha - d.detach())) for d in neg])
            values = torch.stack([alpha - d for d in neg])
            total = total + imbalance * (weights * values).sum() / weights.sum()
    return total / len(x)


def discriminative(x, labels, centroids):
    """Do 2019: mean over samples of ||x - c_y||² - 1/(2(C-1)) Σ_{m≠y} ||x - c_m||²."""
    num_classes = len(centroids)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(x)):
        own = ((x[i] - centroids[labels[i]]) ** 2).sum()
        others = sum(((x[i] - centroids[m]) ** 2).sum() for m in range(num_classes) if m != labels[i])
        total = total + own - others / (2 * (num_classes - 1))
    return total / len(x)
