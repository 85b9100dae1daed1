"""Miners against slow, obvious references (loops over the definitions, float64) and against PML."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

import deepmetric.miners as miners
from deepmetric.masks import to_pairs, to_triplets

DISTANCES = ["euclidean", "squared_euclidean", "cosine", "dot"]
SETUPS = ["ids", "ids_ref", "multi_hot", "multi_hot_ref"]


# ----------------------------------------------------------------------------------------------- data
def make_batch(setup: str, seed: int = 0, dtype: torch.dtype = torch.float64):
    """(embeddings, labels, ref_embeddings, ref_labels) for a setup; refs are None without a reference set."""
    gen = torch.Generator().manual_seed(seed)
    n, m, dim, classes = 14, 11, 5, 4
    embeddings = torch.randn(n, dim, generator=gen, dtype=dtype)
    ref_embeddings = torch.randn(m, dim, generator=gen, dtype=dtype)
    if setup.startswith("ids"):
        labels = torch.randint(0, classes, (n,), generator=gen)
        ref_labels = torch.randint(0, classes, (m,), generator=gen)
    else:
        labels = (torch.rand(n, classes, generator=gen) < 0.3).long()
        ref_labels = (torch.rand(m, classes, generator=gen) < 0.3).long()
    if setup.endswith("ref"):
        return embeddings, labels, ref_embeddings, ref_labels
    return embeddings, labels, None, None


# ------------------------------------------------------------------------------------------ references
def related(labels: torch.Tensor, i: int, ref_labels: torch.Tensor, j: int) -> bool:
    if labels.ndim == 1:
        return bool(labels[i] == ref_labels[j])
    return any(bool(labels[i, c]) and bool(ref_labels[j, c]) for c in range(labels.shape[1]))


def reference_pairs(labels, ref_labels):
    """Lists of (anchor, other) positive and negative pairs, straight from the definition."""
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    positives, negatives = [], []
    for i in range(len(labels)):
        for j in range(len(ref)):
            if same_set and i == j:
                continue
            (positives if related(labels, i, ref, j) else negatives).append((i, j))
    return positives, negatives


def reference_value(x: np.ndarray, y: np.ndarray, distance: str) -> float:
    """The pair's distance or similarity, written out from its formula."""
    if distance == "euclidean":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y)))
    if distance == "squared_euclidean":
        return sum((a - b) ** 2 for a, b in zip(x, y))
    if distance == "dot":
        return sum(a * b for a, b in zip(x, y))
    if distance == "cosine":
        return sum(a * b for a, b in zip(x, y)) / (
            math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y))
        )
    raise ValueError(distance)


def reference_farness(embeddings, ref_embeddings, distance: str):
    """far(i, j): the distance, or minus the similarity, so that larger is always farther."""
    x = embeddings.double().numpy()
    y = x if ref_embeddings is None else ref_embeddings.double().numpy()
    sign = -1.0 if distance in ("cosine", "dot") else 1.0
    return lambda i, j: sign * reference_value(x[i], y[j], distance)


def as_set(indices) -> set[tuple[int, ...]]:
    rows = list(zip(*(t.tolist() for t in indices)))
    assert len(rows) == len(set(rows)), "duplicate pairs or triplets"
    return set(rows)


def pair_sets(indices):
    anchor_p, positive, anchor_n, negative = indices
    return as_set((anchor_p, positive)), as_set((anchor_n, negative))


def check_index_tensors(indices) -> None:
    assert all(t.dtype == torch.long and t.ndim == 1 for t in indices)


# ---------------------------------------------------------------------------------- exhaustive miners
@pytest.mark.parametrize("setup", SETUPS)
def test_all_pairs_matches_reference(setup: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup)
    indices = miners.get("all_pairs")(embeddings, labels, ref_embeddings, ref_labels)
    check_index_tensors(indices)
    positives, negatives = reference_pairs(labels, ref_labels)
    assert pair_sets(indices) == (set(positives), set(negatives))


@pytest.mark.parametrize("setup", SETUPS)
def test_all_triplets_matches_reference(setup: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup)
    indices = miners.get("all_triplets")(embeddings, labels, ref_embeddings, ref_labels)
    check_index_tensors(indices)
    positives, negatives = reference_pairs(labels, ref_labels)
    expected = [(a, p, n) for a, p in positives for a2, n in negatives if a2 == a]
    assert len(expected) > 50
    assert as_set(indices) == set(expected)
    # Ordered by anchor, then positive, then negative.
    assert list(zip(*(t.tolist() for t in indices))) == sorted(expected)


# ------------------------------------------------------------------------------------ hardness miners
def reference_hardest_negative(labels, ref_labels, far):
    positives, negatives = reference_pairs(labels, ref_labels)
    triplets = set()
    for a, p in positives:
        candidates = [n for a2, n in negatives if a2 == a]
        if candidates:
            triplets.add((a, p, min(candidates, key=lambda n: far(a, n))))
    return triplets


def reference_batch_hard(labels, ref_labels, far):
    positives, negatives = reference_pairs(labels, ref_labels)
    triplets = set()
    for a in range(len(labels)):
        pos = [p for a2, p in positives if a2 == a]
        neg = [n for a2, n in negatives if a2 == a]
        if pos and neg:
            triplets.add((a, max(pos, key=lambda p: far(a, p)), min(neg, key=lambda n: far(a, n))))
    return triplets


def reference_semi_hard(labels, ref_labels, far, margin):
    positives, negatives = reference_pairs(labels, ref_labels)
    triplets = set()
    for a, p in positives:
        semi_hard = [n for a2, n in negatives if a2 == a and 0 < far(a, n) - far(a, p) <= margin]
        if semi_hard:
            triplets.add((a, p, min(semi_hard, key=lambda n: far(a, n))))
    return triplets


def reference_multi_similarity(labels, ref_labels, far, epsilon):
    positives, negatives = reference_pairs(labels, ref_labels)
    kept_pos, kept_neg = set(), set()
    for a in range(len(labels)):
        pos = [p for a2, p in positives if a2 == a]
        neg = [n for a2, n in negatives if a2 == a]
        if not pos or not neg:
            continue
        hardest_pos = max(far(a, p) for p in pos)
        hardest_neg = min(far(a, n) for n in neg)
        kept_pos |= {(a, p) for p in pos if far(a, p) + epsilon > hardest_neg}
        kept_neg |= {(a, n) for n in neg if far(a, n) - epsilon < hardest_pos}
    return kept_pos, kept_neg


def reference_pair_margin(labels, ref_labels, far, distance, pos_margin, neg_margin):
    positives, negatives = reference_pairs(labels, ref_labels)
    sign = -1.0 if distance in ("cosine", "dot") else 1.0
    # In "farness" units a similarity margin m becomes -m.
    return (
        {(a, p) for a, p in positives if far(a, p) > sign * pos_margin},
        {(a, n) for a, n in negatives if far(a, n) < sign * neg_margin},
    )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("setup", SETUPS)
def test_hardest_negative_matches_reference(setup: str, distance: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=1)
    indices = miners.get("hardest_negative", distance=distance)(
        embeddings, labels, ref_embeddings, ref_labels
    )
    check_index_tensors(indices)
    far = reference_farness(embeddings, ref_embeddings, distance)
    expected = reference_hardest_negative(labels, ref_labels, far)
    assert len(expected) > 5
    assert as_set(indices) == expected


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("setup", SETUPS)
def test_batch_hard_matches_reference(setup: str, distance: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=2)
    indices = miners.get("batch_hard", distance=distance)(embeddings, labels, ref_embeddings, ref_labels)
    check_index_tensors(indices)
    far = reference_farness(embeddings, ref_embeddings, distance)
    expected = reference_batch_hard(labels, ref_labels, far)
    assert len(expected) > 3
    assert as_set(indices) == expected


@pytest.mark.parametrize("search", ["scan", "sorted"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("setup", SETUPS)
def test_semi_hard_matches_reference(setup: str, distance: str, search: str, monkeypatch) -> None:
    # The miner scans rows for few positives per anchor and sorts them for many: check both searches.
    monkeypatch.setattr(miners.SemiHardMiner, "scan_limit_per_anchor", 10**9 if search == "scan" else 0)
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=3)
    far = reference_farness(embeddings, ref_embeddings, distance)
    # A margin of about a third of the typical gap, so some pairs have semi-hard negatives and some don't.
    margin = {"euclidean": 1.0, "squared_euclidean": 4.0, "cosine": 0.3, "dot": 1.5}[distance]
    indices = miners.get("semi_hard", margin=margin, distance=distance)(
        embeddings, labels, ref_embeddings, ref_labels
    )
    check_index_tensors(indices)
    expected = reference_semi_hard(labels, ref_labels, far, margin)
    positives, _ = reference_pairs(labels, ref_labels)
    assert 3 < len(expected) < len(positives)
    assert as_set(indices) == expected


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("setup", SETUPS)
def test_multi_similarity_matches_reference(setup: str, distance: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=4)
    epsilon = {"euclidean": 0.3, "squared_euclidean": 1.0, "cosine": 0.1, "dot": 0.5}[distance]
    indices = miners.get("multi_similarity", epsilon=epsilon, distance=distance)(
        embeddings, labels, ref_embeddings, ref_labels
    )
    check_index_tensors(indices)
    far = reference_farness(embeddings, ref_embeddings, distance)
    expected = reference_multi_similarity(labels, ref_labels, far, epsilon)
    positives, negatives = reference_pairs(labels, ref_labels)
    assert 0 < len(expected[0]) < len(positives) and 0 < len(expected[1]) < len(negatives)
    assert pair_sets(indices) == expected


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("setup", SETUPS)
def test_pair_margin_matches_reference(setup: str, distance: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=5)
    pos_margin, neg_margin = {
        "euclidean": (2.5, 3.5),
        "squared_euclidean": (6.0, 12.0),
        "cosine": (0.2, 0.0),
        "dot": (0.5, -0.5),
    }[distance]
    miner = miners.get("pair_margin", pos_margin=pos_margin, neg_margin=neg_margin, distance=distance)
    indices = miner(embeddings, labels, ref_embeddings, ref_labels)
    check_index_tensors(indices)
    far = reference_farness(embeddings, ref_embeddings, distance)
    expected = reference_pair_margin(labels, ref_labels, far, distance, pos_margin, neg_margin)
    positives, negatives = reference_pairs(labels, ref_labels)
    assert 0 < len(expected[0]) < len(positives) and 0 < len(expected[1]) < len(negatives)
    assert pair_sets(indices) == expected


# ------------------------------------------------------------------------------------- random miners
def negatives_of(labels, ref_labels) -> dict[int, list[int]]:
    _, negatives = reference_pairs(labels, ref_labels)
    grouped: dict[int, list[int]] = {}
    for a, n in negatives:
        grouped.setdefault(a, []).append(n)
    return grouped


@pytest.mark.parametrize("setup", SETUPS)
def test_random_negative_gives_one_valid_negative_per_positive_pair(setup: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=6)
    anchor, positive, negative = miners.get("random_negative", seed=3)(
        embeddings, labels, ref_embeddings, ref_labels
    )
    check_index_tensors((anchor, positive, negative))
    positives, _ = reference_pairs(labels, ref_labels)
    negs = negatives_of(labels, ref_labels)
    expected_pairs = {(a, p) for a, p in positives if negs.get(a)}
    assert as_set((anchor, positive)) == expected_pairs
    assert all(n in negs[a] for a, n in zip(anchor.tolist(), negative.tolist()))


def test_random_negative_is_uniform_and_seeded() -> None:
    labels = torch.tensor([0] * 20 + [1, 2, 3, 4, 5, 6])  # class 0: 20 x 19 positive pairs, six negatives
    embeddings = torch.randn(26, 3, generator=torch.Generator().manual_seed(0))
    miner = miners.get("random_negative", seed=11)
    counts: Counter[int] = Counter()
    for _ in range(20):
        anchor, _, negative = miner(embeddings, labels)
        counts.update(negative[anchor < 20].tolist())
    draws = sum(counts.values())
    assert draws == 20 * 20 * 19
    assert set(counts) == set(range(20, 26))
    assert max(abs(c / draws - 1 / 6) for c in counts.values()) < 0.01
    first = miners.get("random_negative", seed=5)(embeddings, labels)
    again = miners.get("random_negative", seed=5)(embeddings, labels)
    other = miners.get("random_negative", seed=6)(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], other[2])


def reference_distance_weights(embeddings, labels, ref_embeddings, ref_labels, cutoff, nonzero_loss_cutoff):
    """Per anchor, the normalised probabilities of drawing each negative, from the paper's q(d)^-1."""
    x = torch.nn.functional.normalize(embeddings.double(), dim=1).numpy()
    y = x if ref_embeddings is None else torch.nn.functional.normalize(ref_embeddings.double(), dim=1).numpy()
    dim = x.shape[1]
    probabilities = {}
    for a, negs in negatives_of(labels, ref_labels).items():
        weights = {}
        for n in negs:
            d = reference_value(x[a], y[n], "euclidean")
            if d < nonzero_loss_cutoff:
                d = max(d, cutoff)
                q = d ** (dim - 2) * (1 - d * d / 4) ** ((dim - 3) / 2)
                weights[n] = 1 / q
        total = sum(weights.values())
        if total > 0:
            probabilities[a] = {n: w / total for n, w in weights.items()}
    return probabilities


@pytest.mark.parametrize("setup", SETUPS)
def test_distance_weighted_weights_match_the_paper(setup: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=7)
    miner = miners.get("distance_weighted", cutoff=0.5, nonzero_loss_cutoff=1.4)
    weights = miner.negative_weights(embeddings, labels, ref_embeddings, ref_labels)
    expected = reference_distance_weights(embeddings, labels, ref_embeddings, ref_labels, 0.5, 1.4)
    assert len(expected) > 3
    for a in range(len(labels)):
        row = weights[a]
        if a not in expected:
            assert torch.all(row == 0)
            continue
        assert set(row.nonzero().flatten().tolist()) == set(expected[a])
        assert row.max() == 1
        for n, probability in expected[a].items():
            assert math.isclose(float(row[n] / row.sum()), probability, rel_tol=1e-9)


def test_distance_weighted_weights_stay_finite_in_high_dimensions() -> None:
    # q(d)^-1 spans ~10^300 at D=2048: PML's single global shift underflows whole anchors, ours does not.
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(16, 2048, generator=gen), dim=1)
    embeddings[:8] = embeddings[:8] * 0.2 + embeddings[0] * 0.8  # anchors 0-7 close to each other
    labels = torch.arange(16) % 4
    weights = miners.get("distance_weighted", nonzero_loss_cutoff=2.0).negative_weights(embeddings, labels)
    assert torch.isfinite(weights).all()
    assert torch.all(weights.amax(dim=1) == 1)  # every anchor keeps a usable distribution


@pytest.mark.parametrize("setup", ["ids", "multi_hot_ref"])
def test_distance_weighted_samples_follow_the_weights(setup: str) -> None:
    embeddings, labels, ref_embeddings, ref_labels = make_batch(setup, seed=8)
    embeddings, ref_embeddings = embeddings[:, :3], None if ref_embeddings is None else ref_embeddings[:, :3]
    miner = miners.get("distance_weighted", seed=1, nonzero_loss_cutoff=1.9)
    expected = reference_distance_weights(embeddings, labels, ref_embeddings, ref_labels, 0.5, 1.9)
    positives, _ = reference_pairs(labels, ref_labels)
    counts: dict[int, Counter[int]] = {a: Counter() for a in expected}
    for _ in range(400):
        anchor, positive, negative = miner(embeddings, labels, ref_embeddings, ref_labels)
        assert as_set((anchor, positive)) == {(a, p) for a, p in positives if a in expected}
        for a, n in zip(anchor.tolist(), negative.tolist()):
            counts[a][n] += 1
    anchors_with_positives = {a for a, _ in positives} & set(expected)
    assert len(anchors_with_positives) > 3
    for a in anchors_with_positives:
        probabilities = expected[a]
        total = sum(counts[a].values())
        assert set(counts[a]) <= set(probabilities)
        for n, probability in probabilities.items():
            assert abs(counts[a][n] / total - probability) < 4 * math.sqrt(probability / total) + 1e-3


def test_distance_weighted_is_seeded() -> None:
    embeddings, labels, _, _ = make_batch("ids", seed=9)
    first = miners.get("distance_weighted", seed=4, nonzero_loss_cutoff=2.0)(embeddings, labels)
    again = miners.get("distance_weighted", seed=4, nonzero_loss_cutoff=2.0)(embeddings, labels)
    other = miners.get("distance_weighted", seed=5, nonzero_loss_cutoff=2.0)(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], other[2])


# ---------------------------------------------------------------------------------- degenerate input
DEGENERATE = {
    "one_class": (
        torch.randn(6, 4, generator=torch.Generator().manual_seed(0)),
        torch.zeros(6, dtype=torch.long),
    ),
    "all_singletons": (torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.arange(5)),
    "single_sample": (torch.randn(1, 4), torch.tensor([3])),
    "no_shared_multi_hot": (torch.randn(3, 4), torch.eye(3, dtype=torch.long)),
}
TRIPLET_MINERS = [
    "all_triplets",
    "hardest_negative",
    "random_negative",
    "semi_hard",
    "batch_hard",
    "distance_weighted",
]


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", miners.names())
def test_batches_without_triplets_give_empty_indices(name: str, case: str) -> None:
    embeddings, labels = DEGENERATE[case]
    indices = miners.get(name)(embeddings, labels)
    check_index_tensors(indices)
    if name in TRIPLET_MINERS or name == "multi_similarity":
        assert all(t.numel() == 0 for t in indices)


@pytest.mark.parametrize("name", miners.names())
def test_identical_embeddings_do_not_crash(name: str) -> None:
    embeddings = torch.ones(8, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    indices = miners.get(name)(embeddings, labels)
    check_index_tensors(indices)
    anchor_p, positive, anchor_n, negative = to_pairs(indices)
    assert torch.all(labels[anchor_p] == labels[positive]) and torch.all(anchor_p != positive)
    assert torch.all(labels[anchor_n] != labels[negative])
    if name == "semi_hard":  # no negative is farther than a positive
        assert anchor_p.numel() == 0


@pytest.mark.parametrize("name", miners.names())
def test_embeddings_with_gradients_are_mined_without_a_graph(name: str) -> None:
    embeddings, labels, _, _ = make_batch("ids", dtype=torch.float32)
    embeddings.requires_grad_(True)
    indices = miners.get(name)(embeddings, labels)
    assert all(not t.requires_grad for t in indices)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="margin must be positive"):
        miners.get("semi_hard", margin=0.0)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        miners.get("multi_similarity", epsilon=-0.1)
    with pytest.raises(ValueError, match="normalised embeddings"):
        miners.get("distance_weighted", distance="cosine")
    with pytest.raises(ValueError, match="cutoff"):
        miners.get("distance_weighted", cutoff=1.5, nonzero_loss_cutoff=1.4)
    with pytest.raises(ValueError, match="has no parameter"):
        miners.get("batch_hard", margin=0.1)
    with pytest.raises(ValueError, match="labels has 3 rows"):
        miners.get("batch_hard")(torch.randn(4, 2), torch.tensor([0, 1, 0]))


# ----------------------------------------------------------------------------------------------- PML
@pytest.fixture(scope="module")
def pml():
    return pytest.importorskip("pytorch_metric_learning")


def pml_batch(seed: int, ref: bool):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(32, 8, generator=gen)
    labels = torch.randint(0, 6, (32,), generator=gen)
    if not ref:
        return embeddings, labels, None, None
    return embeddings, labels, torch.randn(20, 8, generator=gen), torch.randint(0, 6, (20,), generator=gen)


def pml_args(embeddings, labels, ref_embeddings, ref_labels):
    return (
        (embeddings, labels) if ref_embeddings is None else (embeddings, labels, ref_embeddings, ref_labels)
    )


def pml_distance(pml, name: str):
    from pytorch_metric_learning import distances

    return {
        "euclidean": distances.LpDistance(normalize_embeddings=False),
        "cosine": distances.CosineSimilarity(),
    }[name]


@pytest.mark.parametrize("ref", [False, True])
def test_all_pairs_and_triplets_match_pml(pml, ref: bool) -> None:
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    embeddings, labels, ref_embeddings, ref_labels = pml_batch(0, ref)
    ours_pairs = miners.get("all_pairs")(embeddings, labels, ref_embeddings, ref_labels)
    ours_triplets = miners.get("all_triplets")(embeddings, labels, ref_embeddings, ref_labels)
    theirs_pairs = lmu.get_all_pairs_indices(labels, ref_labels)
    theirs_triplets = lmu.get_all_triplets_indices(labels, ref_labels)
    assert all(torch.equal(a, b) for a, b in zip(ours_pairs, theirs_pairs))
    assert all(torch.equal(a, b) for a, b in zip(ours_triplets, theirs_triplets))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("ref", [False, True])
def test_batch_hard_and_hardest_negative_match_pml(pml, distance: str, ref: bool) -> None:
    from pytorch_metric_learning.miners import BatchEasyHardMiner, BatchHardMiner

    batch = pml_batch(1, ref)
    theirs = BatchHardMiner(distance=pml_distance(pml, distance))(*pml_args(*batch))
    assert as_set(miners.get("batch_hard", distance=distance)(*batch)) == as_set(theirs)
    all_pos_hard_neg = BatchEasyHardMiner(
        pos_strategy="all", neg_strategy="hard", distance=pml_distance(pml, distance)
    )
    theirs = to_triplets(all_pos_hard_neg(*pml_args(*batch)))
    ours = miners.get("hardest_negative", distance=distance)(*batch)
    assert len(ours[0]) > 20
    assert as_set(ours) == as_set(theirs)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("ref", [False, True])
def test_semi_hard_is_the_hardest_of_pmls_semihard_triplets(pml, distance: str, ref: bool) -> None:
    from pytorch_metric_learning.miners import TripletMarginMiner

    margin = 0.8 if distance == "euclidean" else 0.2
    batch = pml_batch(2, ref)
    far = reference_farness(batch[0], batch[2], distance)
    theirs = TripletMarginMiner(
        margin=margin, type_of_triplets="semihard", distance=pml_distance(pml, distance)
    )(*pml_args(*batch))
    hardest: dict[tuple[int, int], int] = {}
    for a, p, n in as_set(theirs):
        if (a, p) not in hardest or far(a, n) < far(a, hardest[(a, p)]):
            hardest[(a, p)] = n
    ours = miners.get("semi_hard", margin=margin, distance=distance)(*batch)
    assert len(hardest) > 10
    assert as_set(ours) == {(a, p, n) for (a, p), n in hardest.items()}


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("ref", [False, True])
def test_multi_similarity_matches_pml(pml, distance: str, ref: bool) -> None:
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    epsilon = 0.3 if distance == "euclidean" else 0.1
    batch = pml_batch(3, ref)
    theirs = MultiSimilarityMiner(epsilon=epsilon, distance=pml_distance(pml, distance))(*pml_args(*batch))
    ours = miners.get("multi_similarity", epsilon=epsilon, distance=distance)(*batch)
    assert len(ours[0]) > 5 and len(ours[2]) > 5
    assert pair_sets(ours) == pair_sets(theirs)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("ref", [False, True])
def test_pair_margin_matches_pml(pml, distance: str, ref: bool) -> None:
    from pytorch_metric_learning.miners import PairMarginMiner

    pos_margin, neg_margin = (3.5, 4.0) if distance == "euclidean" else (0.3, 0.1)
    batch = pml_batch(4, ref)
    theirs = PairMarginMiner(pos_margin, neg_margin, distance=pml_distance(pml, distance))(*pml_args(*batch))
    ours = miners.get("pair_margin", pos_margin=pos_margin, neg_margin=neg_margin, distance=distance)(*batch)
    assert len(ours[0]) > 5 and len(ours[2]) > 5
    assert pair_sets(ours) == pair_sets(theirs)


def test_distance_weighted_draws_like_pml(pml) -> None:
    # PML draws random positives per anchor but its negatives follow the same per-anchor distribution.
    from pytorch_metric_learning.miners import DistanceWeightedMiner

    torch.manual_seed(0)
    embeddings, labels = torch.randn(12, 3, dtype=torch.float64), torch.arange(12) % 3
    theirs_miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.9)
    ours_miner = miners.get("distance_weighted", nonzero_loss_cutoff=1.9, seed=0)
    theirs: Counter[tuple[int, int]] = Counter()
    ours: Counter[tuple[int, int]] = Counter()
    for _ in range(300):
        anchor, _, negative = theirs_miner(embeddings, labels)
        theirs.update(zip(anchor.tolist(), negative.tolist()))
        anchor, _, negative = ours_miner(embeddings, labels)
        ours.update(zip(anchor.tolist(), negative.tolist()))
    for a in range(12):
        their_total = sum(c for (a2, _), c in theirs.items() if a2 == a)
        our_total = sum(c for (a2, _), c in ours.items() if a2 == a)
        for n in range(12):
            their_rate, our_rate = theirs[(a, n)] / their_total, ours[(a, n)] / our_total
            assert abs(their_rate - our_rate) < 0.06, (a, n, their_rate, our_rate)


def test_pml_semantics_differ_where_documented(pml) -> None:
    """PML's TripletMarginMiner(hard) is every margin violator with d(a,n) <= d(a,p), not our hardest one."""
    from pytorch_metric_learning.miners import TripletMarginMiner

    batch = pml_batch(5, False)
    theirs = as_set(
        TripletMarginMiner(margin=0.2, type_of_triplets="hard", distance=pml_distance(pml, "euclidean"))(
            *pml_args(*batch)
        )
    )
    ours = as_set(miners.get("hardest_negative")(*batch))
    assert {(a, p) for a, p, _ in ours} >= {(a, p) for a, p, _ in theirs}
    assert len(theirs) > len(ours)


def test_multi_hot_rows_pair_through_shared_labels() -> None:
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    embeddings = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    anchor_p, positive, anchor_n, negative = miners.get("all_pairs")(embeddings, labels)
    assert as_set((anchor_p, positive)) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert (0, 2) in as_set((anchor_n, negative))
    assert set(itertools.product([3], [0, 1, 2])) <= as_set((anchor_n, negative))
