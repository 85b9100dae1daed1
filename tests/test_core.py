"""The shared machinery every loss builds on: distances, pair masks, the reducer, input checks."""

from __future__ import annotations

import pytest
import torch

from deepmetric.checks import check_embeddings
from deepmetric.distances import get_distance, safe_sqrt
from deepmetric.masks import (
    indices_to_masks,
    indices_to_weights,
    pair_masks,
    pair_weights,
    to_pairs,
    to_triplets,
)
from deepmetric.reducers import reduce


def direct_pairwise(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Entry by entry, from the definitions."""
    out = torch.empty(len(x), len(y), dtype=x.dtype)
    for i in range(len(x)):
        for j in range(len(y)):
            diff = x[i] - y[j]
            if name == "euclidean":
                out[i, j] = diff.norm()
            elif name == "squared_euclidean":
                out[i, j] = (diff * diff).sum()
            elif name == "dot":
                out[i, j] = x[i] @ y[j]
            else:
                out[i, j] = x[i] @ y[j] / (x[i].norm() * y[j].norm())
    return out


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "dot", "cosine"])
def test_pairwise_matches_the_definition_for_a_batch_and_a_reference_set(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    distance = get_distance(name)
    torch.testing.assert_close(distance(x), direct_pairwise(name, x, x))
    torch.testing.assert_close(distance(x, y), direct_pairwise(name, x, y))
    torch.testing.assert_close(distance.paired(x[:4], y), direct_pairwise(name, x[:4], y).diagonal())


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "dot", "cosine"])
def test_gradients_of_the_self_pairwise_path_pass_gradcheck_and_match_the_generic_path(name: str) -> None:
    """A batch against itself takes a symmetric shortcut (one matrix product backward); its gradient must
    equal the one through two distinct tensors holding the same values."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    weights.fill_diagonal_(0)  # sqrt of the diagonal's rounding noise (~1e-16) defeats finite differences
    distance = get_distance(name)
    torch.autograd.gradcheck(lambda t: (distance(t) * weights).sum(), (x,))
    (self_grad,) = torch.autograd.grad((distance(x) * weights).sum(), x)
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    (distance(a, b) * weights).sum().backward()
    torch.testing.assert_close(self_grad, a.grad + b.grad)


def test_euclidean_gradient_is_finite_at_zero_distance() -> None:
    """Identical embeddings (distance 0) must not produce NaN or infinite gradients."""
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    get_distance("euclidean")(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    squared = torch.tensor([0.0, 4.0], requires_grad=True)
    safe_sqrt(squared).sum().backward()
    assert squared.grad.tolist() == [0.0, 0.25]


def test_unknown_distance_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        get_distance("manhattan")


def test_masks_and_weights_for_class_ids_and_multi_hot_labels() -> None:
    labels = torch.tensor([0, 1, 0, 2])
    positives, negatives = pair_masks(labels)
    assert positives.nonzero().tolist() == [[0, 2], [2, 0]]
    assert not negatives.diagonal().any() and int(negatives.sum()) == 10
    weight_pos, weight_neg = pair_weights(labels, dtype=torch.float64)
    assert torch.equal(weight_pos.bool(), positives) and torch.equal(weight_neg.bool(), negatives)

    multi_hot = torch.tensor([[1, 0], [1, 1], [0, 1]])
    ref = torch.tensor([[0, 1], [1, 0]])
    positives, negatives = pair_masks(multi_hot, ref)  # a reference set keeps every pair
    assert positives.tolist() == [[False, True], [True, True], [True, False]]
    assert torch.equal(negatives, ~positives)
    assert torch.equal(pair_weights(multi_hot, ref)[0].bool(), positives)


def test_mined_indices_become_masks_pairs_and_triplets() -> None:
    triplets = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))
    positives, negatives = indices_to_masks(triplets, 4, 4)
    assert positives.nonzero().tolist() == [[0, 1]]
    assert negatives.nonzero().tolist() == [[0, 2], [0, 3]]
    weights = indices_to_weights(triplets, 4, 4)
    assert torch.equal(weights[0].bool(), positives) and torch.equal(weights[1].bool(), negatives)
    pairs = to_pairs(triplets)
    assert [t.tolist() for t in pairs] == [[0, 0], [1, 1], [0, 0], [2, 3]]
    anchors, pos, neg = to_triplets(pairs)  # every positive of an anchor joined with each of its negatives
    assert sorted(zip(anchors.tolist(), pos.tolist(), neg.tolist())) == [
        (0, 1, 2),
        (0, 1, 2),
        (0, 1, 3),
        (0, 1, 3),
    ]
    with pytest.raises(ValueError, match="4-tuple or a triplet 3-tuple"):
        to_pairs((torch.tensor([0]),) * 2)


def test_reductions_and_an_empty_set_that_still_backpropagates() -> None:
    losses = torch.tensor([0.0, 2.0, 4.0, 0.0])
    assert float(reduce(losses, "mean")) == 1.5
    assert float(reduce(losses, "sum")) == 6.0
    assert float(reduce(losses, "mean_nonzero")) == 3.0
    assert reduce(losses, "none") is losses
    embeddings = torch.randn(3, 2, requires_grad=True)
    empty = reduce(embeddings.new_empty(0), "mean_nonzero", anchor=embeddings)
    empty.backward()
    assert float(empty.detach()) == 0.0 and torch.equal(embeddings.grad, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        reduce(losses, "median")


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (torch.ones(3), "2-D"),
        (torch.ones(0, 4), "empty"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
        (torch.full((2, 2), 3e38), None),  # finite values whose sum overflows are still accepted
    ],
)
def test_embedding_checks_name_the_problem(embeddings: torch.Tensor, message: str | None) -> None:
    if message is None:
        check_embeddings(embeddings)
        return
    with pytest.raises(ValueError, match=message):
        check_embeddings(embeddings)
