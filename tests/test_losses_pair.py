"""Pair- and triplet-based losses against the slow float64 references of tests/loss_references.py."""

from __future__ import annotations

import math

import pytest
import torch

import deepmetric.losses as losses
from deepmetric.distances import EuclideanDistance
from deepmetric.masks import to_triplets
from tests import loss_references as ref


def pk_batch(classes: int = 4, per_class: int = 3, dim: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, dim, generator=gen, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    perm = torch.randperm(len(labels), generator=gen)
    return x[perm].requires_grad_(), labels[perm]


def as_indices(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    rows, cols = zip(*pairs)
    return torch.tensor(rows), torch.tensor(cols)


def mined_pairs(positives, negatives, seed: int = 1, keep: float = 0.5):
    """A seeded random subset of the pairs, as PML-style pair indices and as lists."""
    gen = torch.Generator().manual_seed(seed)
    pos = [p for p in positives if torch.rand(1, generator=gen) < keep]
    neg = [n for n in negatives if torch.rand(1, generator=gen) < keep]
    return (*as_indices(pos), *as_indices(neg)), pos, neg


def check_close(ours: torch.Tensor, expected: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-9)
    ours_grads = torch.autograd.grad(ours, inputs, allow_unused=True, retain_graph=True)
    ref_grads = torch.autograd.grad(expected, inputs, allow_unused=True, retain_graph=True)
    for got, want in zip(ours_grads, ref_grads):
        got = torch.zeros_like(want) if got is None else got
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


# name, constructor kwargs, reference(x, ref_x, labels, positives, negatives)
PAIR_CASES = [
    ("contrastive", {}, lambda x, r, y, pos, neg: ref.contrastive(x, pos, neg, r)),
    (
        "contrastive",
        {"pos_margin": 0.3, "neg_margin": 3.0, "squared": True},
        lambda x, r, y, pos, neg: ref.contrastive(x, pos, neg, r, 0.3, 3.0, squared=True),
    ),
    ("lifted_structure", {}, lambda x, r, y, pos, neg: ref.lifted_structure(x, pos, neg, r)),
    (
        "lifted_structure",
        {"neg_margin": 3.0, "pos_margin": 0.5},
        lambda x, r, y, pos, neg: ref.lifted_structure(x, pos, neg, r, 3.0, 0.5),
    ),
    (
        "lifted_structure",
        {"generalized": True, "neg_margin": 3.0},
        lambda x, r, y, pos, neg: ref.generalized_lifted_structure(x, pos, neg, r, 3.0),
    ),
    ("multi_similarity", {}, lambda x, r, y, pos, neg: ref.multi_similarity(x, pos, neg, r)),
    (
        "multi_similarity",
        {"alpha": 1.0, "beta": 5.0, "base": 0.1},
        lambda x, r, y, pos, neg: ref.multi_similarity(x, pos, neg, r, 1.0, 5.0, 0.1),
    ),
    (
        "triplet",
        {},
        lambda x, r, y, pos, neg: ref.triplet(x, ref.triplets_from_pairs(pos, neg), r),
    ),
    (
        "triplet",
        {"margin": 0.5, "reduction": "mean"},
        lambda x, r, y, pos, neg: ref.triplet(x, ref.triplets_from_pairs(pos, neg), r, 0.5, reduction="mean"),
    ),
    (
        "triplet",
        {"soft": True, "margin": 0.0},
        lambda x, r, y, pos, neg: ref.triplet(x, ref.triplets_from_pairs(pos, neg), r, 0.0, soft=True),
    ),
    (
        "triplet",
        {"distance": "cosine", "reduction": "sum"},
        lambda x, r, y, pos, neg: ref.triplet(
            x, ref.triplets_from_pairs(pos, neg), r, reduction="sum", distance=ref.cosine
        ),
    ),
    ("angular", {}, lambda x, r, y, pos, neg: ref.angular(x, pos, neg, r)),
    ("angular", {"alpha": 30.0}, lambda x, r, y, pos, neg: ref.angular(x, pos, neg, r, 30.0)),
    ("binomial_deviance", {}, lambda x, r, y, pos, neg: ref.binomial_deviance(x, pos, neg, r)),
    ("circle", {}, lambda x, r, y, pos, neg: ref.circle(x, pos, neg, r)),
    ("circle", {"m": 0.4, "gamma": 80.0}, lambda x, r, y, pos, neg: ref.circle(x, pos, neg, r, 0.4, 80.0)),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(PAIR_CASES)]


@pytest.mark.parametrize(("name", "kwargs", "reference"), PAIR_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_all_pairs_match_reference(name, kwargs, reference, seed):
    x, labels = pk_batch(seed=seed)
    pos, neg = ref.pairs_from_labels(labels)
    check_close(losses.get(name, **kwargs)(x, labels), reference(x, None, labels, pos, neg), [x])


@pytest.mark.parametrize(("name", "kwargs", "reference"), PAIR_CASES, ids=CASE_IDS)
def test_mined_pairs_match_reference(name, kwargs, reference):
    x, labels = pk_batch(seed=2)
    indices, pos, neg = mined_pairs(*ref.pairs_from_labels(labels))
    check_close(losses.get(name, **kwargs)(x, labels, indices), reference(x, None, labels, pos, neg), [x])


@pytest.mark.parametrize(("name", "kwargs", "reference"), PAIR_CASES, ids=CASE_IDS)
def test_reference_set_matches_reference(name, kwargs, reference):
    x, labels = pk_batch(classes=3, per_class=2, seed=3)
    bank, bank_labels = pk_batch(classes=4, per_class=3, seed=4)
    pos, neg = ref.pairs_from_labels(labels, bank_labels)
    loss = losses.get(name, **kwargs)(x, labels, ref_embeddings=bank, ref_labels=bank_labels)
    check_close(loss, reference(x, bank, labels, pos, neg), [x, bank])


@pytest.mark.parametrize(("name", "kwargs", "reference"), PAIR_CASES, ids=CASE_IDS)
def test_multi_hot_labels_equal_explicit_pairs(name, kwargs, reference):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    multi_hot = (torch.rand(10, 4, generator=gen) < 0.35).long()
    pos, neg = ref.pairs_from_labels(multi_hot)
    assert pos and neg
    loss = losses.get(name, **kwargs)
    from_labels = loss(x, multi_hot)
    explicit = loss(x, multi_hot, (*as_indices(pos), *as_indices(neg)))
    torch.testing.assert_close(from_labels, explicit)
    check_close(from_labels, reference(x, None, multi_hot, pos, neg), [x])


def test_triplet_with_mined_triplets_and_pairs():
    x, labels = pk_batch(seed=6)
    gen = torch.Generator().manual_seed(7)
    pos, neg = ref.pairs_from_labels(labels)
    triplets = [t for t in ref.triplets_from_pairs(pos, neg) if torch.rand(1, generator=gen) < 0.2]
    indices = tuple(torch.tensor(column) for column in zip(*triplets))
    loss = losses.get("triplet", margin=1.0)
    check_close(loss(x, labels, indices), ref.triplet(x, triplets, margin=1.0), [x])
    # Pairs are joined per anchor into triplets.
    pair_indices, mined_pos, mined_neg = mined_pairs(pos, neg, seed=8)
    expected = ref.triplet(x, ref.triplets_from_pairs(mined_pos, mined_neg), margin=1.0)
    check_close(loss(x, labels, pair_indices), expected, [x])
    assert len(to_triplets(pair_indices)[0]) == len(ref.triplets_from_pairs(mined_pos, mined_neg))


def test_triplet_batch_all_reduction_none_lists_every_triplet():
    x, labels = pk_batch(seed=9)
    pos, neg = ref.pairs_from_labels(labels)
    per_triplet = losses.get("triplet", reduction="none")(x, labels)
    assert per_triplet.shape == (len(ref.triplets_from_pairs(pos, neg)),)
    torch.testing.assert_close(
        per_triplet.sum(), ref.triplet(x, ref.triplets_from_pairs(pos, neg), reduction="sum")
    )


def test_triplet_batch_all_is_chunked_at_large_batch():
    """B = 1024 batch-all: works with O(B^2) memory, equals the explicit per-triplet computation."""
    gen = torch.Generator().manual_seed(10)
    x = torch.nn.functional.normalize(torch.randn(1024, 16, generator=gen), dim=1).requires_grad_()
    labels = torch.arange(128).repeat_interleave(8)
    loss = losses.get("triplet", margin=0.2)(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    dist = torch.cdist(x.detach().double(), x.detach().double())
    same = labels[:, None] == labels[None, :]
    anchors, positives = (same & ~torch.eye(1024, dtype=torch.bool)).nonzero(as_tuple=True)
    violation = dist[anchors, positives, None] - dist[anchors] + 0.2
    violation = violation.masked_fill(same[anchors], 0).clamp_min(0)
    expected = violation.sum() / (violation > 0).sum()
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_gradcheck(soft):
    x, labels = pk_batch(classes=3, per_class=2, dim=3, seed=11)
    loss = losses.get("triplet", soft=soft, margin=0.3)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x.detach().requires_grad_(),))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lifted_structure", {}),
        ("lifted_structure", {"generalized": True}),
        ("multi_similarity", {}),
        ("npair", {}),
        ("angular", {}),
        ("binomial_deviance", {}),
        ("contrastive", {"squared": True, "neg_margin": 10.0}),
        ("contrastive", {"pos_margin": 0.5, "neg_margin": 10.0, "reduction": "sum"}),  # the fused path
    ],
)
def test_gradcheck(name, kwargs):
    """Circle and ranked-list weights are constants by design, so their gradient is checked against the
    references instead."""
    x, labels = pk_batch(classes=3, per_class=2, dim=3, seed=12)
    loss = losses.get(name, **kwargs)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x.detach().requires_grad_(),))


class _GenericEuclidean(EuclideanDistance):
    """The same distance under another type: the fused contrastive path takes only EuclideanDistance itself."""


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum"])
@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.5, 2.0), (-0.1, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contrastive_fused_path_matches_generic_graph(reduction, margins, dtype):
    """Duplicated embeddings (distance 0; float64), a zero embedding and a class without positives included."""
    x, _ = pk_batch(classes=4, per_class=3, dim=5, seed=21)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
    x = x.detach().clone()
    if (
        dtype == torch.float64
    ):  # in float32 a duplicate's distance is rounding noise that each path rounds apart
        x[1] = x[0]
    x[5] = 0
    x = x.to(dtype).requires_grad_()
    pos_margin, neg_margin = margins
    settings = {"pos_margin": pos_margin, "neg_margin": neg_margin, "reduction": reduction}
    fused = losses.get("contrastive", **settings)(x, labels)
    generic = losses.get("contrastive", distance=_GenericEuclidean(), **settings)(x, labels)
    tolerance = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    assert fused.dtype == generic.dtype
    torch.testing.assert_close(fused, generic, **tolerance)
    fused_grad = torch.autograd.grad(fused, x)[0]
    torch.testing.assert_close(fused_grad, torch.autograd.grad(generic, x)[0], **tolerance)


def test_npair_matches_reference_and_picks_first_pairs():
    x, labels = pk_batch(seed=13)
    first = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, []).append(i)
    pairs = [(rows[0], rows[1]) for _, rows in sorted(first.items())]
    anchor, positive = losses.NPairLoss.one_pair_per_class(labels, ref_pairs_mask(labels))
    assert sorted(zip(anchor.tolist(), positive.tolist())) == sorted(pairs)
    anchor, positive = losses.NPairLoss.first_pairs(labels, None)
    assert sorted(zip(anchor.tolist(), positive.tolist())) == sorted(pairs)
    check_close(losses.get("npair")(x, labels), ref.npair(x, pairs), [x])
    check_close(
        losses.get("npair", l2_reg_weight=0.1)(x, labels), ref.npair(x, pairs, l2_reg_weight=0.1), [x]
    )
    check_close(losses.get("npair", reduction="sum")(x, labels), ref.npair(x, pairs) * len(pairs), [x])
    # Unsorted labels with a singleton class (no pair) and classes of uneven size.
    shuffled = torch.tensor([3, 1, 0, 1, 3, 2, 0, 3, 1])
    anchor, positive = losses.NPairLoss.first_pairs(shuffled, None)
    assert sorted(zip(anchor.tolist(), positive.tolist())) == [(0, 4), (1, 3), (2, 6)]


def test_npair_with_reference_set():
    x, labels = pk_batch(classes=3, per_class=2, seed=14)
    bank, bank_labels = pk_batch(classes=4, per_class=2, seed=15)
    pairs = []
    for label in sorted(set(labels.tolist())):
        anchor = labels.tolist().index(label)
        pairs.append((anchor, bank_labels.tolist().index(label)))
    loss = losses.get("npair")(x, labels, ref_embeddings=bank, ref_labels=bank_labels)
    check_close(loss, ref.npair(x, pairs, bank), [x, bank])


def test_npair_with_mined_pairs_uses_first_mined_pair_per_class():
    x, labels = pk_batch(seed=25)
    pos, neg = ref.pairs_from_labels(labels)
    indices, mined_pos, _ = mined_pairs(pos, neg, seed=26)
    chosen = {}
    for a, p in sorted(mined_pos):
        chosen.setdefault(int(labels[a]), (a, p))
    check_close(losses.get("npair")(x, labels, indices), ref.npair(x, sorted(chosen.values())), [x])


def test_npair_refuses_multi_hot_labels():
    with pytest.raises(ValueError, match="1-D class labels"):
        losses.get("npair")(torch.randn(4, 3), torch.eye(4, dtype=torch.long))


def ref_pairs_mask(labels: torch.Tensor) -> torch.Tensor:
    mask = labels[:, None] == labels[None, :]
    return mask & ~torch.eye(len(labels), dtype=torch.bool)


@pytest.mark.parametrize("learn_beta", [False, True])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_margin_matches_reference(learn_beta, num_classes):
    x, labels = pk_batch(seed=16)
    loss = losses.get("margin", margin=0.2, beta=1.2, nu=0.1, learn_beta=learn_beta, num_classes=num_classes)
    with torch.no_grad():
        loss.beta.add_(torch.linspace(-0.3, 0.3, loss.beta.numel(), dtype=loss.beta.dtype))
    pos, neg = ref.pairs_from_labels(labels)
    beta = loss.beta.detach().double().clone().requires_grad_(learn_beta)
    ours = loss.double()(x, labels)
    expected = ref.margin(x, pos, neg, beta, nu=0.1, labels=labels)
    inputs = [x, loss.beta] if learn_beta else [x]
    torch.testing.assert_close(ours, expected)
    ours_grads = torch.autograd.grad(ours, inputs)
    ref_grads = torch.autograd.grad(expected, [x, beta] if learn_beta else [x])
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_margin_with_mined_indices_and_reference_set():
    x, labels = pk_batch(seed=17)
    indices, pos, neg = mined_pairs(*ref.pairs_from_labels(labels), seed=18)
    loss = losses.get("margin", learn_beta=False).double()
    check_close(
        loss(x, labels, indices), ref.margin(x, pos, neg, torch.tensor([1.2], dtype=torch.float64)), [x]
    )
    bank, bank_labels = pk_batch(seed=19)
    pos, neg = ref.pairs_from_labels(labels, bank_labels)
    expected = ref.margin(x, pos, neg, torch.tensor([1.2], dtype=torch.float64), ref=bank)
    check_close(loss(x, labels, ref_embeddings=bank, ref_labels=bank_labels), expected, [x, bank])


def test_margin_per_class_beta_checks_labels():
    loss = losses.get("margin", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 5, 5]))
    with pytest.raises(ValueError, match="1-D class labels"):
        loss(torch.randn(4, 3), torch.eye(4, dtype=torch.long)[:, :3])


@pytest.mark.parametrize("temperature", [0.0, 10.0])
def test_ranked_list_matches_reference(temperature):
    x, labels = pk_batch(seed=20)
    pos, neg = ref.pairs_from_labels(labels)
    loss = losses.get("ranked_list", margin=0.4, alpha=1.2, temperature=temperature)
    check_close(loss(x, labels), ref.ranked_list(x, pos, neg, 0.4, 1.2, temperature), [x])


def test_ranked_list_multi_hot_and_mined():
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    multi_hot = (torch.rand(10, 4, generator=gen) < 0.35).long()
    pos, neg = ref.pairs_from_labels(multi_hot)
    loss = losses.get("ranked_list")
    check_close(loss(x, multi_hot), ref.ranked_list(x, pos, neg), [x])
    indices, pos, neg = mined_pairs(pos, neg, seed=22)
    check_close(loss(x, multi_hot, indices), ref.ranked_list(x, pos, neg), [x])


def test_discriminative_matches_reference():
    x, labels = pk_batch(seed=23)
    loss = losses.get("discriminative", num_classes=4, embedding_size=5)
    centroids = loss.centroids.double()
    check_close(loss(x, labels), ref.discriminative(x, labels, centroids), [x])
    # Fixed, equidistant centroids: every pair of classes is equally far apart.
    gaps = torch.cdist(centroids, centroids)[~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps[0].item()))


def test_discriminative_with_more_classes_than_dimensions():
    loss = losses.get("discriminative", num_classes=10, embedding_size=3)
    assert loss.centroids.shape == (10, 3)
    x = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(10).repeat(2)
    check_close(loss(x, labels), ref.discriminative(x, labels, loss.centroids.double()), [x])
    with pytest.raises(ValueError, match="num_classes"):
        loss(x, labels + 1)


ALL_LOSSES = {
    "contrastive": {},
    "triplet": {},
    "lifted_structure": {},
    "npair": {},
    "angular": {},
    "margin": {},
    "binomial_deviance": {},
    "multi_similarity": {},
    "circle": {},
    "ranked_list": {},
    "discriminative": {"num_classes": 4, "embedding_size": 5},
}


def finite_loss_and_grad(name: str, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = losses.get(name, **ALL_LOSSES[name]).to(x.dtype)
    value = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value), f"{name}: loss {value}"
    assert torch.isfinite(grad).all(), f"{name}: non-finite gradient"
    return value


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_all_embeddings_equal(name):
    x = torch.ones(8, 5, requires_grad=True)
    finite_loss_and_grad(name, x, torch.arange(4).repeat_interleave(2))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_single_class(name):
    x, _ = pk_batch()
    finite_loss_and_grad(name, x, torch.zeros(len(x), dtype=torch.long))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_no_positive_pair(name):
    """All labels distinct: no positive pair and no valid triplet."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    finite_loss_and_grad(name, x, torch.arange(4))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_float16(name):
    x, labels = pk_batch()
    x = x.detach().half().requires_grad_()
    finite_loss_and_grad(name, x, labels)


def test_contrastive_identical_embeddings_have_finite_gradient():
    x = torch.zeros(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    value = losses.get("contrastive")(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(grad).all()
    assert value.item() == pytest.approx(1.0)  # only the negatives violate their margin, each by 1


def test_losses_can_fail_on_wrong_orders():
    """Well-separated classes give a (much) smaller loss than shuffled labels."""
    gen = torch.Generator().manual_seed(24)
    centers = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=1) * 3
    labels = torch.arange(4).repeat_interleave(4)
    x = centers[labels] + 0.05 * torch.randn(16, 8, generator=gen)
    shuffled = labels[torch.randperm(16, generator=gen)]
    for name, kwargs in ALL_LOSSES.items():
        if name == "discriminative":
            continue
        loss = losses.get(name, **kwargs)
        assert loss(x, labels) < loss(x, shuffled), name


@pytest.mark.parametrize("name", ["angular", "binomial_deviance", "circle"])
def test_similarity_only_losses_refuse_distances(name):
    with pytest.raises(ValueError, match="similarity"):
        losses.get(name, distance="euclidean")


def test_ranked_list_refuses_similarity():
    with pytest.raises(ValueError, match="distance"):
        losses.get("ranked_list", distance="cosine")


def test_angular_alpha_is_checked():
    with pytest.raises(ValueError, match="alpha"):
        losses.get("angular", alpha=95.0)
    assert math.isclose(losses.get("angular", alpha=45.0).alpha, 45.0)
