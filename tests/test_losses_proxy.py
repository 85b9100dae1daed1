"""Proxy-, classification- and set-based losses: against slow float64 references written from the papers
(value and gradient), against PML with the same settings and parameter values, gradcheck, degenerate
batches, multi-label data and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

import deepmetric.losses as losses_pkg
from deepmetric.distances import DotProductSimilarity, SquaredEuclideanDistance
from deepmetric.losses.facility_location import clustering_nmi, greedy_loss_augmented_medoids
from tests import loss_references_proxy as ref

NUM_CLASSES, DIM = 5, 6
PARAM_LOSSES = ["proxy_nca", "proxy_anchor", "normalized_softmax", "arcface", "cosface", "soft_triple"]
SET_LOSSES = ["prototypical", "nca", "facility_location", "supcon", "ntxent"]
ALL_LOSSES = PARAM_LOSSES + SET_LOSSES


def build(name: str, **kwargs) -> torch.nn.Module:
    if name in PARAM_LOSSES:
        kwargs = {"num_classes": NUM_CLASSES, "embedding_size": DIM, **kwargs}
    return losses_pkg.get(name, **kwargs)


def batch(classes=(0, 1, 2, 3), per_class=3, dim=DIM, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    x = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    return x.requires_grad_(), labels


def class_params(loss: torch.nn.Module) -> torch.Tensor | None:
    for name in ("proxies", "weight", "centers"):
        if hasattr(loss, name):
            return getattr(loss, name)
    return None


def reference(name: str, loss: torch.nn.Module, x, labels):
    params = class_params(loss)
    if name == "proxy_nca":
        return ref.proxy_nca(x, labels, params, loss.temperature)
    if name == "proxy_anchor":
        return ref.proxy_anchor(x, labels, params, loss.alpha, loss.margin)
    if name == "normalized_softmax":
        return ref.normalized_softmax(x, labels, params, loss.temperature)
    if name == "arcface":
        return ref.arcface(x, labels, params, loss.margin, loss.scale)
    if name == "cosface":
        return ref.cosface(x, labels, params, loss.margin, loss.scale)
    if name == "soft_triple":
        return ref.soft_triple(x, labels, params, loss.la, loss.gamma, loss.tau, loss.margin)
    if name == "prototypical":
        return ref.prototypical(x, labels)
    if name == "nca":
        return ref.nca(x, labels, loss.scale)
    if name == "supcon":
        return ref.supcon(x, labels, loss.temperature)
    if name == "ntxent":
        return ref.ntxent(x, labels, loss.temperature)
    if name == "facility_location":
        return ref.facility_location(x, labels, loss.gamma)[0]
    raise AssertionError(name)


def gradients(value: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, tensors, allow_unused=True))


# Moderate hyper-parameters keep float64 gradients well-conditioned for the comparison.
REFERENCE_SETTINGS = {
    "proxy_nca": {"temperature": 0.5},
    "proxy_anchor": {},
    "normalized_softmax": {"temperature": 0.2},
    "arcface": {"scale": 8.0},
    "cosface": {"scale": 8.0},
    "soft_triple": {"centers_per_class": 3, "la": 5.0},
    "prototypical": {},
    "nca": {"scale": 0.5},
    "facility_location": {"gamma": 0.5},
    "supcon": {"temperature": 0.5},
    "ntxent": {"temperature": 0.5},
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_value_and_gradient(name, seed):
    loss = build(name, **REFERENCE_SETTINGS[name]).double()
    torch.manual_seed(
        100 + seed
    )  # not the batch's seed: a weight equal to an embedding makes arccos singular
    with torch.no_grad():
        params = class_params(loss)
        if params is not None:
            params.normal_()
    x, labels = batch(seed=seed)
    tensors = [x] + ([class_params(loss)] if class_params(loss) is not None else [])
    ours = loss(x, labels)
    expected = reference(name, loss, x, labels)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-9)
    for got, want in zip(gradients(ours, *tensors), gradients(expected, *tensors)):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_default_hyperparameters_match_the_papers():
    assert build("proxy_anchor").alpha == 32 and build("proxy_anchor").margin == 0.1
    assert (build("arcface").scale, build("arcface").margin) == (64, 0.5)
    assert (build("cosface").scale, build("cosface").margin) == (64, 0.35)
    st = build("soft_triple")
    assert (st.centers_per_class, st.la, st.gamma, st.tau, st.margin) == (10, 20, 0.1, 0.2, 0.01)
    assert tuple(st.centers.shape) == (NUM_CLASSES, 10, DIM)
    assert build("supcon").temperature == 0.1


@pytest.mark.parametrize("name", ["arcface", "cosface", "proxy_anchor", "soft_triple"])
def test_default_scales_match_reference(name):
    """At the papers' large scales (64, alpha 32, lambda 20) values still agree in float64."""
    loss = build(name).double()
    x, labels = batch(seed=3)
    torch.testing.assert_close(loss(x, labels), reference(name, loss, x, labels), rtol=1e-9, atol=1e-9)


def test_arcface_beyond_pi_minus_margin_uses_linear_continuation():
    loss = build("arcface", scale=1.0, margin=0.5).double()
    x, labels = batch(seed=2)
    with torch.no_grad():
        loss.weight.copy_(-x[:NUM_CLASSES].detach())  # targets nearly opposite: theta close to pi
    labels = torch.arange(NUM_CLASSES)
    x = x[:NUM_CLASSES].detach().requires_grad_()
    torch.testing.assert_close(loss(x, labels), ref.arcface(x, labels, loss.weight, 0.5, 1.0))


def test_arcface_gradient_finite_when_embedding_equals_its_weight():
    """cos = 1 exactly: arccos would give an infinite gradient; the margin formula must not."""
    loss = build("arcface")
    x = loss.weight.detach()[[0, 1, 2]].clone().requires_grad_()
    value = loss(x, torch.tensor([0, 1, 2]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_arcface_easy_margin():
    loss = build("arcface", easy_margin=True, scale=1.0).double()
    cosine = torch.tensor([0.5, -0.5], dtype=torch.float64)
    target = loss.target_logit(cosine)
    torch.testing.assert_close(target[0], torch.cos(torch.acos(cosine[0]) + 0.5))
    torch.testing.assert_close(target[1], cosine[1])


def test_ntxent_with_mined_pairs_matches_reference():
    loss = build("ntxent", temperature=0.3).double()
    x, labels = batch(seed=4)
    pos = [(0, 1), (3, 5), (6, 7), (7, 6)]
    neg = [(0, 4), (0, 9), (3, 11), (6, 0), (7, 2), (7, 3)]
    indices = tuple(
        torch.tensor(v)
        for v in ([a for a, _ in pos], [p for _, p in pos], [a for a, _ in neg], [n for _, n in neg])
    )
    torch.testing.assert_close(loss(x, labels, indices), ref.ntxent(x, labels, 0.3, pairs=(pos, neg)))


@pytest.mark.parametrize("name", ["nca", "supcon", "ntxent"])
def test_reference_set(name):
    loss = build(name, **REFERENCE_SETTINGS[name]).double()
    x, labels = batch(seed=5)
    ref_x, ref_labels = batch(classes=(0, 2, 3, 4), per_class=2, seed=6)
    value = loss(x, labels, ref_embeddings=ref_x, ref_labels=ref_labels)
    param = loss.scale if name == "nca" else loss.temperature
    expected = getattr(ref, name)(x, labels, param, ref=ref_x, ref_labels=ref_labels)
    torch.testing.assert_close(value, expected)
    for got, want in zip(gradients(value, x, ref_x), gradients(expected, x, ref_x)):
        torch.testing.assert_close(got, want)


def test_prototypical_support_set():
    loss = build("prototypical").double()
    queries, query_labels = batch(classes=(0, 1, 5), per_class=2, seed=7)  # class 5 has no support: skipped
    support, support_labels = batch(classes=(0, 1, 2), per_class=3, seed=8)
    value = loss(queries, query_labels, ref_embeddings=support, ref_labels=support_labels)
    expected = ref.prototypical(queries, query_labels, support, support_labels)
    torch.testing.assert_close(value, expected)
    for got, want in zip(gradients(value, queries, support), gradients(expected, queries, support)):
        torch.testing.assert_close(got, want)


def test_prototypical_leave_one_out_skips_singletons():
    loss = build("prototypical", reduction="none").double()
    x, _ = batch(seed=9)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])  # class 2 is a singleton
    assert loss(x, labels).shape == (11,)
    torch.testing.assert_close(loss(x, labels).mean(), ref.prototypical(x, labels))


# ----- multi-label data -----


def multi_hot(rows: list[list[int]], num_classes: int = NUM_CLASSES) -> torch.Tensor:
    out = torch.zeros(len(rows), num_classes, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, row] = 1
    return out


MULTI_LABELS = [[0], [0, 1], [1], [1, 2], [2], [2, 3], [3], [3, 4], [4], [0, 4], [1, 3], [2]]


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "nca", "supcon", "ntxent"])
def test_multilabel_matches_reference(name):
    loss = build(name, **REFERENCE_SETTINGS[name]).double()
    x, _ = batch(seed=10)
    labels = multi_hot(MULTI_LABELS)
    value = loss(x, labels)
    expected = reference(name, loss, x, labels)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(gradients(value, x)[0], gradients(expected, x)[0])


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "supcon", "ntxent", "nca"])
def test_one_hot_rows_equal_class_ids(name):
    loss = build(name)
    x, labels = batch(dtype=torch.float32)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES)
    torch.testing.assert_close(loss(x, labels), loss(x, one_hot))


@pytest.mark.parametrize("name", ["normalized_softmax", "arcface", "cosface", "soft_triple", "prototypical"])
def test_single_label_losses_refuse_multi_hot(name):
    x, _ = batch()
    with pytest.raises(ValueError, match="1-D class labels"):
        build(name)(x, multi_hot(MULTI_LABELS))


# ----- gradcheck -----


@pytest.mark.parametrize(
    "name", ["proxy_anchor", "arcface", "soft_triple", "prototypical", "supcon", "ntxent", "nca"]
)
def test_gradcheck(name):
    loss = build(name, **REFERENCE_SETTINGS[name]).double()
    x, labels = batch(classes=(0, 1, 2), per_class=2, seed=11)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x,))
    params = class_params(loss)
    if params is not None:
        name_of_params = next(n for n, p in loss.named_parameters() if p is params)
        detached_x = x.detach()

        def with_params(p: torch.Tensor) -> torch.Tensor:
            return functional_call(loss, {name_of_params: p}, (detached_x, labels))

        assert torch.autograd.gradcheck(
            with_params, (params.detach().clone().requires_grad_(),), fast_mode=True
        )


# ----- the fused cosine-softmax head -----

FUSED_HEADS = {  # name: (settings, attribute and the value that forces autograd's generic graph)
    "normalized_softmax": ({"temperature": 0.2}, "fused_normalize_x", lambda: None),
    "cosface": ({"scale": 8.0}, "fused_normalize_x", lambda: None),
    "arcface": ({"scale": 8.0}, "fused_normalize_x", lambda: None),
    "proxy_nca": ({"temperature": 0.5}, "cosine_scale", lambda: None),
    # The dot product of normalised vectors is the cosine, but only the cosine distance takes the fused path.
    "proxy_anchor": ({}, "distance", DotProductSimilarity(normalize_embeddings=True)),
    "soft_triple": (
        {"centers_per_class": 3, "la": 5.0},
        "distance",
        DotProductSimilarity(normalize_embeddings=True),
    ),
}


def _fused_margins():
    arcface = build("arcface", margin=0.4)
    easy = build("arcface", margin=0.4, easy_margin=True)
    cosface = build("cosface", margin=0.3)
    return {
        "none": None,
        "cosface": cosface.margin_with_slope,
        "arcface": arcface.margin_with_slope,
        "arcface_easy": easy.margin_with_slope,
    }


@pytest.mark.parametrize("margin", ["none", "cosface", "arcface", "arcface_easy"])
@pytest.mark.parametrize("normalize_x", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_fused_head_gradcheck(margin, normalize_x, reduction):
    from deepmetric.losses.cosine_softmax import cosine_cross_entropy

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    margin_with_slope = _fused_margins()[margin]
    assert torch.autograd.gradcheck(
        lambda e, w: cosine_cross_entropy(e, w, labels, 3.0, normalize_x, margin_with_slope, reduction),
        (x, weight),
    )


@pytest.mark.parametrize("name", list(FUSED_HEADS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_head_matches_generic_graph(name, dtype, reduction, monkeypatch):
    """Value and gradients (embeddings and class vectors) of the fused head equal autograd's graph of the
    same formula, on a batch with a zero and a tiny embedding (float32/64), an embedding equal to its class vector (ArcFace's
    cos = 1) and one opposite to it (beyond pi - m)."""
    settings, switch, generic_value = FUSED_HEADS[name]
    loss = build(name, reduction=reduction, **settings).double()
    params = class_params(loss)
    x, labels = batch(seed=8)
    x = x.detach().clone()
    if dtype != torch.float16:  # F.normalize's gradient below its eps is 1 / eps: beyond float16's range
        x[0] = 0
        x[3] *= 1e-13 / x[3].norm()  # a norm below F.normalize's eps: no radial gradient
    class_vectors = params.detach().reshape(NUM_CLASSES, -1, DIM)[:, 0]  # the first centre of SoftTriple's
    x[1] = class_vectors[labels[1]] * 3
    x[2] = -class_vectors[labels[2]]
    x = x.to(dtype).requires_grad_()
    fused = loss(x, labels)
    fused_grads = gradients(fused.sum(), x, params)
    monkeypatch.setattr(loss, switch, generic_value)
    generic = loss(x, labels)
    generic_grads = gradients(generic.sum(), x, params)
    tolerance = {"rtol": 1e-7, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    assert fused.dtype == generic.dtype and fused.shape == generic.shape
    torch.testing.assert_close(fused, generic, **tolerance)
    for got, want in zip(fused_grads, generic_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0.5, 0.02])  # exp path; the softmax kernel below gamma = 2 / 80
def test_soft_triple_fused_head_gradcheck(reduction, gamma):
    loss = build("soft_triple", centers_per_class=3, la=4.0, gamma=gamma, reduction=reduction).double()
    x, labels = batch(classes=(0, 1, 2), per_class=2, seed=12)
    assert torch.autograd.gradcheck(
        lambda e, c: functional_call(loss, {"centers": c}, (e, labels)),
        (x, loss.centers.detach().clone().requires_grad_()),
    )


class _GenericSquaredEuclidean(SquaredEuclideanDistance):
    """The same distance under another type: NCA's fused path takes only SquaredEuclideanDistance itself."""


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "mean_nonzero"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
def test_nca_fused_path_matches_generic_graph(reduction, dtype, normalize):
    """A singleton class (no positive: left out), duplicated embeddings (distance 0) and a zero embedding."""
    x, _ = batch(seed=13, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
    x = x.detach().clone()
    x[1] = x[0]
    x[4] = 0
    x = (x * 0.5).to(dtype).requires_grad_()
    fused_loss = build(
        "nca", reduction=reduction, distance=SquaredEuclideanDistance(normalize_embeddings=normalize)
    )
    generic_loss = build(
        "nca", reduction=reduction, distance=_GenericSquaredEuclidean(normalize_embeddings=normalize)
    )
    fused, generic = fused_loss(x, labels), generic_loss(x, labels)
    tolerance = {"rtol": 1e-7, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert fused.dtype == generic.dtype and fused.shape == generic.shape
    torch.testing.assert_close(fused, generic, **tolerance)
    torch.testing.assert_close(gradients(fused.sum(), x)[0], gradients(generic.sum(), x)[0], **tolerance)


def test_nca_fused_path_gradcheck():
    loss = build("nca", scale=0.7, reduction="sum")
    x, _ = batch(seed=14)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 2, 2])  # class 3 has no positive
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x,))


def test_normalized_softmax_dot_distance_fuses_without_normalising_embeddings():
    loss = build("normalized_softmax", distance="dot", temperature=0.5).double()
    assert loss.fused_normalize_x() is False
    x, labels = batch(seed=9)
    weight = torch.nn.functional.normalize(loss.weight, dim=1)
    expected = torch.nn.functional.cross_entropy(x @ weight.T / 0.5, labels)
    torch.testing.assert_close(loss(x, labels), expected)
    for got, want in zip(gradients(loss(x, labels), x, loss.weight), gradients(expected, x, loss.weight)):
        torch.testing.assert_close(got, want)


# ----- degenerate batches -----


def _finite(name: str, x: torch.Tensor, labels: torch.Tensor) -> None:
    loss = build(name)
    x = x.detach().requires_grad_()
    value = loss(x, labels)
    value.backward()
    assert torch.isfinite(value), name
    assert torch.isfinite(x.grad).all(), name
    params = class_params(loss)
    if params is not None:
        assert torch.isfinite(params.grad).all(), name


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_embeddings_equal(name):
    _finite(name, torch.ones(8, DIM), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_embeddings_zero(name):
    _finite(name, torch.zeros(8, DIM), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_single_class(name):
    x, _ = batch(dtype=torch.float32)
    _finite(name, x, torch.full((12,), 2))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_float16_inputs(name):
    x, labels = batch(dtype=torch.float32)
    x = x.detach().half().requires_grad_()
    loss = build(name)
    value = loss(x, labels)
    value.backward()
    assert torch.isfinite(value) and x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(value.float(), loss(x.detach().float(), labels), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["supcon", "ntxent", "nca", "prototypical"])
def test_no_positive_pairs_gives_zero_with_gradient(name):
    x, _ = batch(dtype=torch.float32)
    x = x.detach().requires_grad_()
    value = build(name)(x, torch.arange(12))
    value.backward()
    assert value.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))


# ----- input errors -----


@pytest.mark.parametrize("name", PARAM_LOSSES)
def test_label_out_of_range(name):
    x, _ = batch()
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, num_classes=5\)"):
        build(name)(x, torch.tensor([0, 1, 2, 7, 0, 1, 2, 3, 4, 0, 1, 2]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        build(name)(x, torch.tensor([0, 1, 2, -1, 0, 1, 2, 3, 4, 0, 1, 2]))


@pytest.mark.parametrize("name", PARAM_LOSSES)
def test_wrong_embedding_size(name):
    x, labels = batch(dim=DIM + 2)
    with pytest.raises(ValueError, match=r"embedding_size=6 but embeddings have 8 dimensions"):
        build(name)(x, labels)


@pytest.mark.parametrize("name", PARAM_LOSSES)
def test_parameterised_losses_refuse_reference_sets(name):
    x, labels = batch()
    with pytest.raises(ValueError, match="ref_embeddings"):
        build(name)(x, labels, ref_embeddings=x, ref_labels=labels)


def test_float_labels_and_bad_constructor_arguments():
    x, labels = batch()
    with pytest.raises(ValueError, match="integer class ids"):
        build("normalized_softmax")(x, labels.double())
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        losses_pkg.get("proxy_anchor", num_classes=0, embedding_size=4)
    with pytest.raises(ValueError, match="needs the cosine distance"):
        build("arcface", distance="euclidean")
    with pytest.raises(ValueError, match="temperature must be positive"):
        build("supcon", temperature=0)
    with pytest.raises(ValueError, match="multi-hot labels have 3 columns"):
        build("proxy_anchor")(x, torch.ones(12, 3, dtype=torch.long))


def test_losses_own_their_parameters():
    for name in PARAM_LOSSES:
        loss = build(name)
        assert [n for n, _ in loss.named_parameters()] == [
            next(n for n in ("proxies", "weight", "centers") if hasattr(loss, n))
        ]


def test_mined_indices_restrict_per_sample_losses():
    loss = build("normalized_softmax", reduction="none")
    x, labels = batch(dtype=torch.float32)
    everything = loss(x, labels)
    mined = (torch.tensor([0, 4]), torch.tensor([1, 5]), torch.tensor([9]))  # samples 0, 1, 4, 5, 9
    torch.testing.assert_close(loss(x, labels, mined), everything[[0, 1, 4, 5, 9]])


def test_proxy_anchor_ignores_unmined_samples():
    loss = build("proxy_anchor").double()
    x, labels = batch()
    mined = (torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([7, 8]))
    subset = torch.tensor([0, 1, 3, 4, 7, 8])
    torch.testing.assert_close(
        loss(x, labels, mined), ref.proxy_anchor(x[subset], labels[subset], loss.proxies)
    )


# ----- facility location -----


def test_nmi_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, 4, (30,), generator=generator)
        b = torch.randint(0, 3, (30,), generator=generator)
        a = torch.unique(a, return_inverse=True)[1]
        b = torch.unique(b, return_inverse=True)[1]
        expected = metrics.normalized_mutual_info_score(b.numpy(), a.numpy(), average_method="arithmetic")
        assert clustering_nmi(a, b).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("seed", "classes", "per_class"), [(0, 4, 3), (1, 4, 3), (2, 4, 3), (3, 4, 3), (4, 6, 5), (5, 7, 4)]
)
def test_facility_location_greedy_matches_brute_force_greedy(seed, classes, per_class):
    """Small batches, and larger ones where clusters split classes into many (cluster, class) cells."""
    x, labels = batch(classes=tuple(range(classes)), per_class=per_class, seed=20 + seed)
    loss = build("facility_location", gamma=2.0).double()
    distances = torch.cdist(x.detach(), x.detach())
    ours = greedy_loss_augmented_medoids(distances, labels, 2.0).tolist()
    expected_value, expected_medoids = ref.facility_location(x, labels, 2.0)
    ids = labels.tolist()

    def augmented(medoids: list[int]) -> float:
        return float(ref.facility(distances, medoids)) + 2.0 * (
            1 - ref.nmi(ref.assign(distances, medoids), ids)
        )

    # Same greedy path up to exact ties between candidates (two points that take over the same cluster).
    for step in range(1, len(expected_medoids) + 1):
        assert augmented(ours[:step]) == pytest.approx(augmented(expected_medoids[:step]), abs=1e-9)
    torch.testing.assert_close(loss(x, labels), expected_value)


def test_facility_location_zero_for_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4, DIM, dtype=torch.float64) * 10
    x = centres.repeat_interleave(3, 0) + 0.01 * torch.randn(
        12, DIM, generator=generator, dtype=torch.float64
    )
    labels = torch.arange(4).repeat_interleave(3)
    assert build("facility_location", gamma=1.0)(x.requires_grad_(), labels).item() == 0.0
    mixed = labels[torch.randperm(12, generator=generator)]
    assert build("facility_location", gamma=1.0)(x, mixed).item() > 0


# ----- against PML -----


def _pml():
    return pytest.importorskip("pytorch_metric_learning")


def _pml_loss(name: str, ours: torch.nn.Module):
    from pytorch_metric_learning import distances as pd
    from pytorch_metric_learning import losses as pl

    c, d = NUM_CLASSES, DIM
    if name == "proxy_nca":
        theirs = pl.ProxyNCALoss(c, d, softmax_scale=1 / ours.temperature)
        theirs.proxies.data.copy_(ours.proxies.data)
    elif name == "proxy_anchor":
        theirs = pl.ProxyAnchorLoss(c, d, margin=ours.margin, alpha=ours.alpha)
        theirs.proxies.data.copy_(ours.proxies.data)
    elif name == "normalized_softmax":
        theirs = pl.NormalizedSoftmaxLoss(c, d, temperature=ours.temperature, distance=pd.CosineSimilarity())
        theirs.W.data.copy_(ours.weight.data.T)
    elif name == "arcface":
        theirs = pl.ArcFaceLoss(c, d, margin=math.degrees(ours.margin), scale=ours.scale)
        theirs.W.data.copy_(ours.weight.data.T)
    elif name == "cosface":
        theirs = pl.CosFaceLoss(c, d, margin=ours.margin, scale=ours.scale)
        theirs.W.data.copy_(ours.weight.data.T)
    elif name == "soft_triple":
        theirs = pl.SoftTripleLoss(
            c, d, centers_per_class=ours.centers_per_class, la=ours.la, gamma=ours.gamma, margin=ours.margin
        )
        theirs.fc.data.copy_(ours.centers.data.reshape(-1, d).T)
    elif name == "nca":
        theirs = pl.NCALoss(
            softmax_scale=ours.scale, distance=pd.LpDistance(power=2, normalize_embeddings=False)
        )
    elif name == "supcon":
        theirs = pl.SupConLoss(temperature=ours.temperature)
    elif name == "ntxent":
        theirs = pl.NTXentLoss(temperature=ours.temperature)
    else:
        raise AssertionError(name)
    return theirs


PML_SETTINGS = {
    "proxy_nca": {"temperature": 0.5},
    "proxy_anchor": {},
    "normalized_softmax": {},
    "arcface": {},
    "cosface": {},
    "soft_triple": {"tau": 0.0},  # PML's SoftTripleLoss has no centre regulariser
    "nca": {},
    "supcon": {},
    "ntxent": {"temperature": 0.07},
}


@pytest.mark.parametrize("name", list(PML_SETTINGS))
def test_matches_pml(name):
    _pml()
    torch.manual_seed(0)
    ours = build(name, **PML_SETTINGS[name])
    theirs = _pml_loss(name, ours)
    x, labels = batch(classes=(0, 1, 2, 3, 4), per_class=4, seed=30, dtype=torch.float32)
    ours_value = ours(x, labels)
    theirs_value = theirs(x, labels)
    torch.testing.assert_close(ours_value, theirs_value, rtol=1e-4, atol=1e-5)
    ours_grad = torch.autograd.grad(ours_value, x)[0]
    theirs_grad = torch.autograd.grad(theirs_value, x)[0]
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-3, atol=1e-5)


def test_nca_matches_pml_normalised_default():
    _pml()
    from pytorch_metric_learning import losses as pl

    x, labels = batch(dtype=torch.float32, seed=31)
    ours = build("nca", distance=SquaredEuclideanDistance(normalize_embeddings=True))
    torch.testing.assert_close(ours(x, labels), pl.NCALoss()(x, labels))


def test_registered_names():
    assert set(ALL_LOSSES) <= set(losses_pkg.names())
    for name in PARAM_LOSSES:
        assert {"num_classes", "embedding_size"} <= set(losses_pkg.LOSSES.parameters(name))
