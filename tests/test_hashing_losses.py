"""Hashing head and losses: values against loops written from the papers' formulas, gradients, schedule."""

from __future__ import annotations

import math

import pytest
import torch

from deepmetric import losses
from deepmetric.hashing import AlphaSchedule, HashHead, HashingLoss
from deepmetric.models.backbones import build_backbone
from deepmetric.models.model import EmbeddingModel


def batch(seed: int = 0, n: int = 8, bits: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.tanh(torch.randn(n, bits, generator=generator, dtype=torch.float64) * 1.5)
    labels = torch.arange(n) % classes
    return codes, labels


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def quantization(u: torch.Tensor) -> float:
    return sum((abs(float(v)) - 1) ** 2 for v in u.flatten()) / u.numel()


def dtsh_reference(u: torch.Tensor, related, margin: float, lam: float, factor: float = 0.5) -> float:
    n, total, count = len(u), 0.0, 0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if i != j and i != k and related(i, j) and not related(i, k):
                    theta_ij = factor * float(u[i] @ u[j])
                    theta_ik = factor * float(u[i] @ u[k])
                    total += -math.log(1 / (1 + math.exp(-(theta_ij - theta_ik - margin))))
                    count += 1
    return total / count + lam * quantization(u)


def dpsh_reference(
    u: torch.Tensor, related, eta: float, ref: torch.Tensor | None = None, factor: float = 0.5
) -> float:
    other = u if ref is None else ref
    total, count = 0.0, 0
    for i in range(len(u)):
        for j in range(len(other)):
            if ref is None and i == j:
                continue
            theta = factor * float(u[i] @ other[j])
            s = 1.0 if related(i, j) else 0.0
            total += softplus(theta) - s * theta
            count += 1
    return total / count + eta * quantization(u)


def dsh_reference(u: torch.Tensor, related, margin: float, alpha: float) -> float:
    total, count = 0.0, 0
    for i in range(len(u)):
        for j in range(len(u)):
            if i == j:
                continue
            squared = float(((u[i] - u[j]) ** 2).sum())
            y = 0.0 if related(i, j) else 1.0
            regulariser = float((u[i].abs() - 1).abs().sum() + (u[j].abs() - 1).abs().sum())
            total += 0.5 * (1 - y) * squared + 0.5 * y * max(margin - squared, 0.0) + alpha * regulariser
            count += 1
    return total / count


def class_relation(labels: torch.Tensor):
    return lambda i, j: bool(labels[i] == labels[j])


def test_dtsh_matches_reference() -> None:
    codes, labels = batch(0)
    loss = losses.get("dtsh", margin=1.5, quantization_weight=0.3, scale=None)
    expected = dtsh_reference(codes, class_relation(labels), 1.5, 0.3)
    assert float(loss(codes, labels)) == pytest.approx(expected, rel=1e-10)


def test_dtsh_with_mined_triplets() -> None:
    codes, labels = batch(1)
    triplets = (torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([1, 2]))
    value = float(
        losses.get("dtsh", margin=0.5, quantization_weight=0.0, scale=None)(codes, labels, triplets)
    )
    theta = 0.5 * codes @ codes.T
    expected = (
        softplus(float(theta[0, 1] - theta[0, 3]) + 0.5) + softplus(float(theta[1, 2] - theta[1, 4]) + 0.5)
    ) / 2
    assert value == pytest.approx(expected, rel=1e-10)


def dense_dtsh_terms(theta: torch.Tensor, related: torch.Tensor, margin: float) -> torch.Tensor:
    """Every valid triplet's softplus term through the dense N x N x N mask (small batches only)."""
    positives = related.clone()
    if theta.shape[0] == theta.shape[1]:
        positives.fill_diagonal_(False)
    anchor, positive, negative = (positives[:, :, None] & ~related[:, None, :]).nonzero(as_tuple=True)
    return torch.nn.functional.softplus(theta[anchor, negative] - theta[anchor, positive] + margin)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 7])  # one chunk, and one anchor per chunk
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dtsh_batch_all_equals_dense_triplets_in_value_and_gradient(
    monkeypatch: pytest.MonkeyPatch, chunk_elements: int, reduction: str
) -> None:
    monkeypatch.setattr("deepmetric.losses.triplet._CHUNK_ELEMENTS", chunk_elements)
    codes, _ = batch(5, n=12, bits=6)
    labels = torch.tensor(
        [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]] * 3
    )  # multi-hot: shared label = related
    ref_codes, ref_labels = batch(6, n=9, bits=6)[0], torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 3)
    for ref in (None, (ref_codes.clone().requires_grad_(), ref_labels)):
        u = codes.clone().requires_grad_()
        other, other_labels = (u, labels) if ref is None else ref
        loss = losses.get("dtsh", margin=2.0, quantization_weight=0.0, scale=None, reduction=reduction)
        value = (
            loss(u, labels) if ref is None else loss(u, labels, ref_embeddings=other, ref_labels=other_labels)
        )
        value.backward()
        grads = [u.grad] + ([] if ref is None else [other.grad])
        u2 = codes.clone().requires_grad_()
        other2 = u2 if ref is None else ref_codes.clone().requires_grad_()
        related = (labels.double() @ other_labels.double().T) > 0
        terms = dense_dtsh_terms(0.5 * u2 @ other2.T, related, 2.0)
        expected = terms.mean() if reduction == "mean" else terms.sum()
        expected.backward()
        assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
        for got, want in zip(grads, [u2.grad] + ([] if ref is None else [other2.grad])):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_dtsh_batch_all_memory_stays_quadratic() -> None:
    """400 items, 10 classes: the dense triplet mask would be 64M entries; chunks keep it far smaller."""
    codes, labels = batch(7, n=400, bits=16, classes=10)
    codes.requires_grad_()
    value = losses.get("dtsh", quantization_weight=0.0)(codes, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(codes.grad).all() and codes.grad.abs().sum() > 0


def test_dpsh_matches_reference_for_ids_multihot_and_reference_set() -> None:
    codes, labels = batch(2)
    loss = losses.get("dpsh", quantization_weight=0.2, scale=None)
    assert float(loss(codes, labels)) == pytest.approx(
        dpsh_reference(codes, class_relation(labels), 0.2), rel=1e-10
    )
    multi_hot = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]]
    )
    shared = lambda i, j: bool((multi_hot[i] * multi_hot[j]).sum() > 0)  # noqa: E731
    expected = dpsh_reference(codes, shared, 0.2)
    assert float(loss(codes, multi_hot)) == pytest.approx(expected, rel=1e-10)
    ref_codes, _ = batch(3, n=5)
    ref_labels = torch.tensor([0, 1, 2, 0, 1])
    cross = lambda i, j: bool(labels[i] == ref_labels[j])  # noqa: E731
    expected = dpsh_reference(codes, cross, 0.2, ref=ref_codes)
    assert float(loss(codes, labels, ref_embeddings=ref_codes, ref_labels=ref_labels)) == pytest.approx(
        expected
    )


@pytest.mark.parametrize("margin", [None, 3.0])
def test_dsh_matches_reference(margin: float | None) -> None:
    codes, labels = batch(4)
    loss = losses.get("dsh", margin=margin, alpha=0.05)
    expected = dsh_reference(
        codes, class_relation(labels), codes.shape[1] / 64 if margin is None else margin, 0.05
    )
    assert float(loss(codes, labels)) == pytest.approx(expected, rel=1e-10)


def test_hashing_wrapper_adds_penalties_to_any_base_loss() -> None:
    codes, labels = batch(5)
    base = losses.get("triplet", margin=0.3)
    wrapped = losses.get(
        "hashing", base="triplet", base_params={"margin": 0.3}, alpha=2.0, balance_weight=0.5
    )
    balance = sum(float(codes[:, k].mean()) ** 2 for k in range(codes.shape[1])) / codes.shape[1]
    expected = float(base(codes, labels)) + 2.0 * quantization(codes) + 0.5 * balance
    assert float(wrapped(codes, labels)) == pytest.approx(expected, rel=1e-10)
    dtsh_wrapped = losses.get(
        "hashing", base="dtsh", base_params={"quantization_weight": 0.0, "scale": None}, alpha=1.0
    )
    expected = dtsh_reference(codes, class_relation(labels), 5.0, 0.0) + quantization(codes)
    assert float(dtsh_wrapped(codes, labels)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dtsh", {"margin": 1.0}),
        ("dpsh", {}),
        ("dsh", {"margin": 4.0}),
        ("hashing", {"base": "contrastive", "alpha": 1.0, "balance_weight": 0.5}),
    ],
)
def test_gradients(name: str, params: dict) -> None:
    codes, labels = batch(6, n=6, bits=4)
    codes.requires_grad_(True)
    loss = losses.get(name, **params)
    assert torch.autograd.gradcheck(lambda u: loss(u, labels), (codes,))


def test_alpha_schedule_values() -> None:
    geometric = AlphaSchedule(1.0, 16.0, "geometric")
    assert [geometric(i, 5) for i in range(5)] == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])
    linear = AlphaSchedule(1.0, 16.0, "linear")
    assert [linear(i, 4) for i in range(4)] == pytest.approx([1.0, 6.0, 11.0, 16.0])
    assert linear(10, 4) == pytest.approx(16.0)  # past the end: stays at the final weight
    assert AlphaSchedule(3.0)(7, 10) == 3.0
    with pytest.raises(ValueError, match="alpha_final"):
        AlphaSchedule(1.0, schedule="linear")
    with pytest.raises(ValueError, match="geometric"):
        AlphaSchedule(0.0, 16.0, "geometric")
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        AlphaSchedule(1.0, 2.0, "cosine")


def test_set_progress_moves_the_quantization_weight() -> None:
    codes, labels = batch(7)
    loss = HashingLoss(base="contrastive", alpha=1.0, alpha_final=16.0, alpha_schedule="geometric")
    base_value = float(losses.get("contrastive")(codes, labels))
    loss.set_progress(0, 101)
    assert float(loss(codes, labels)) == pytest.approx(base_value + quantization(codes))
    loss.set_progress(50, 101)
    assert loss.alpha == pytest.approx(4.0)
    loss.set_progress(100, 101)
    assert float(loss(codes, labels)) == pytest.approx(base_value + 16.0 * quantization(codes))


def test_loss_parameter_errors() -> None:
    with pytest.raises(ValueError, match="reduction"):
        losses.get("dtsh", reduction="none")
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("hashing", base="no_such_loss")
    with pytest.raises(ValueError, match="itself"):
        losses.get("hashing", base="hashing")
    with pytest.raises(ValueError, match="margin"):
        losses.get("dsh", margin=-1.0)


def test_hash_head_tanh_and_straight_through_sign() -> None:
    torch.manual_seed(0)
    head = HashHead(16, 12, activation="tanh")
    features = torch.randn(5, 16, 3, 3)
    out = head(features)
    assert out.shape == (5, 12) and head.embedding_size == 12
    assert (out.abs() < 1).all()
    assert torch.allclose(out, torch.tanh(head.linear(features.mean(dim=(-2, -1)))))
    assert torch.equal(head.codes(features), torch.sign(out))

    ste = HashHead(16, 12, activation="sign_ste")
    vectors = torch.randn(5, 16, requires_grad=True)
    codes = ste(vectors)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    codes.sum().backward()
    pre_activation = ste.linear(vectors).detach()
    inside = (pre_activation.abs() <= 1).double()
    assert torch.allclose(vectors.grad.double(), inside @ ste.linear.weight.detach().double(), atol=1e-6)


def test_hash_head_replaces_embedding_head() -> None:
    backbone = build_backbone("small_cnn", in_channels=1, image_size=8, width=4)
    model = EmbeddingModel(backbone, HashHead(backbone.feature_dim, 16))
    assert model.embedding_size == 16
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 16)


def test_hash_head_errors() -> None:
    with pytest.raises(ValueError, match="bits"):
        HashHead(8, 4)
    with pytest.raises(ValueError, match="bits"):
        HashHead(8, 512)
    with pytest.raises(ValueError, match="activation"):
        HashHead(8, 16, activation="relu")
