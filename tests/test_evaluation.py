"""deepmetric.evaluation vs a slow, obvious reference, PML's AccuracyCalculator and scikit-learn."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepmetric import native
from deepmetric.distances import get_distance
from deepmetric.evaluation import evaluate, evaluate_detailed, kmeans, knn, parse_metric
from deepmetric.retrieval.knn import symmetric_topk

ALL_RETRIEVAL = (
    "recall@1",
    "recall@3",
    "precision@1",
    "precision@3",
    "r_precision",
    "map@r",
    "map",
    "map@3",
    "mrr",
)

# Every test runs with the native selection kernels and with the torch code they replace.
pytestmark = pytest.mark.usefixtures("cpu_kernel")


def reference_metrics(
    query,
    query_labels,
    gallery,
    gallery_labels,
    metrics,
    distance,
    query_ids=None,
    gallery_ids=None,
    average="query",
):
    """One query at a time, straight from the definitions in docs/metrics.md (float64 arithmetic)."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels, gallery_ids = query, query_labels, query_ids
    dist = get_distance(distance)
    scores = dist.pairwise(
        torch.as_tensor(query, dtype=torch.float32), torch.as_tensor(gallery, dtype=torch.float32)
    )
    scores = scores.double().numpy()
    sign = -1.0 if dist.is_similarity else 1.0
    multi_hot = np.ndim(query_labels) == 2

    def relevant(i, j):
        if multi_hot:
            return bool(np.any(np.logical_and(query_labels[i], gallery_labels[j])))
        return query_labels[i] == gallery_labels[j]

    values = {m: [] for m in metrics}
    classes = []
    for i in range(len(query)):
        candidates = [
            j
            for j in range(len(gallery))
            if not (leave_one_out and j == i)
            and not (query_ids is not None and query_ids[i] == gallery_ids[j])
        ]
        ranking = sorted(candidates, key=lambda j: (sign * scores[i, j], j))
        rel = [relevant(i, j) for j in ranking]
        r = sum(rel)
        if r == 0:
            continue
        classes.append(tuple(np.atleast_1d(query_labels[i])))
        precision = [sum(rel[: j + 1]) / (j + 1) for j in range(len(rel))]
        for name in metrics:
            spec = parse_metric(name)
            k = spec.k
            if spec.kind == "recall":
                value = float(any(rel[:k]))
            elif spec.kind == "precision":
                value = sum(rel[:k]) / k
            elif spec.kind == "r_precision":
                value = sum(rel[:r]) / r
            elif spec.kind == "map@r":
                value = sum(precision[j] for j in range(min(r, len(rel))) if rel[j]) / r
            elif spec.kind == "map":
                value = sum(precision[j] for j in range(len(rel)) if rel[j]) / r
            elif spec.kind == "map@k":
                value = sum(precision[j] for j in range(min(k, len(rel))) if rel[j]) / min(k, r)
            elif spec.kind == "mrr":
                value = 1.0 / (rel.index(True) + 1)
            elif spec.kind == "knn_accuracy":
                top = [gallery_labels[j] for j in ranking[:k]]
                votes = Counter(top)
                best = max(votes.values())
                predicted = next(label for label in top if votes[label] == best)
                value = float(predicted == query_labels[i])
            values[name].append(value)
    result = {}
    for name, vals in values.items():
        if not vals:
            result[name] = float("nan")
        elif average == "query":
            result[name] = float(np.mean(vals))
        else:
            per_class = {}
            for c, v in zip(classes, vals):
                per_class.setdefault(c, []).append(v)
            result[name] = float(np.mean([np.mean(v) for v in per_class.values()]))
    return result


def assert_same(ours: dict, reference: dict) -> None:
    assert list(ours) == list(reference)
    for name in reference:
        if math.isnan(reference[name]):
            assert math.isnan(ours[name]), name
        else:
            assert ours[name] == pytest.approx(reference[name], abs=1e-9), name


def clustered(n: int, d: int, classes: int, seed: int, noise: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + noise * rng.normal(size=(n, d))).astype(np.float32), labels


# Small integer embeddings make every distance exact in float32 and produce many ties.
@st.composite
def integer_problem(draw):
    n = draw(st.integers(2, 24))
    d = draw(st.integers(1, 3))
    x = np.array(
        draw(st.lists(st.integers(-2, 2), min_size=n * d, max_size=n * d)), dtype=np.float32
    ).reshape(n, d)
    labels = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    return x, labels


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    problem=integer_problem(),
    distance=st.sampled_from(["dot", "squared_euclidean"]),
    split=st.integers(0, 24),
    budget=st.sampled_from([1e-6, 64.0]),
    average=st.sampled_from(["query", "class"]),
)
def test_matches_reference_on_ties(problem, distance, split, budget, average):
    x, labels = problem
    metrics = (*ALL_RETRIEVAL, "knn_accuracy@3")
    if 0 < split < len(x):  # query vs gallery
        args = (x[:split], labels[:split], x[split:], labels[split:])
    else:  # leave-one-out
        args = (x, labels, None, None)
    ours = evaluate(
        *args, metrics=metrics, distance=distance, device="cpu", memory_budget_mb=budget, average=average
    )
    assert_same(ours, reference_metrics(*args, metrics, distance, average=average))


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=integer_problem(), columns=st.integers(1, 4), seed=st.integers(0, 1000))
def test_multi_hot_labels_match_reference(problem, columns, seed):
    x, _ = problem
    rng = np.random.default_rng(seed)
    multi_hot = rng.random((len(x), columns)) < 0.4
    ours = evaluate(x, multi_hot, metrics=ALL_RETRIEVAL, distance="dot", device="cpu", memory_budget_mb=1e-6)
    assert_same(ours, reference_metrics(x, multi_hot, None, None, ALL_RETRIEVAL, "dot"))


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=integer_problem(), id_count=st.integers(1, 8))
def test_duplicate_ids_are_excluded(problem, id_count):
    x, labels = problem
    ids = [f"img{i % id_count}.jpg" for i in range(len(x))]
    ours = evaluate(
        x, labels, metrics=ALL_RETRIEVAL, distance="squared_euclidean", device="cpu", query_ids=ids
    )
    assert_same(
        ours, reference_metrics(x, labels, None, None, ALL_RETRIEVAL, "squared_euclidean", query_ids=ids)
    )


def test_cosine_and_euclidean_on_continuous_data_match_reference():
    x, labels = clustered(120, 8, 6, seed=1, noise=1.0)
    for distance in ("cosine", "euclidean"):
        ours = evaluate(
            x, labels, metrics=ALL_RETRIEVAL, distance=distance, device="cpu", memory_budget_mb=0.001
        )
        assert_same(ours, reference_metrics(x, labels, None, None, ALL_RETRIEVAL, distance))


def test_recall_at_k_by_hand():
    # 1-D points, labels 0 0 1 1. Leave-one-out: 0->1, 1->0 (tie with 2 broken by index), 2->1, 3->2.
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    labels = np.array([0, 0, 1, 1])
    result = evaluate(x, labels, metrics=("recall@1", "recall@2"), distance="euclidean", device="cpu")
    # query 2 (at 2.0): nearest is 1 (label 0), then 0 -> miss at K=1 and K=2; query 3: nearest 2 -> hit.
    assert result == {"recall@1": 0.75, "recall@2": 0.75}


def test_queries_without_relevant_items_are_left_out_and_counted():
    x = np.array([[0.0], [1.0], [5.0]])
    labels = np.array([0, 0, 1])
    result = evaluate_detailed(x, labels, metrics=("recall@1", "map@r"), distance="euclidean", device="cpu")
    assert result.num_queries_without_relevant == 1
    assert result.metrics == {"recall@1": 1.0, "map@r": 1.0}
    assert np.isnan(result.per_query["recall@1"][2])
    none_left = evaluate(x[2:], labels[2:], x[:2], labels[:2], metrics=("recall@1",), device="cpu")
    assert math.isnan(none_left["recall@1"])


def test_knn_tie_break_prefers_lower_index():
    x = torch.tensor([[0.0], [1.0], [-1.0], [1.0], [-1.0]])
    values, indices = knn(x[:1], 4, x[1:], distance="euclidean", device="cpu", memory_budget_mb=1e-6)
    assert indices.tolist() == [[0, 1, 2, 3]]
    assert values.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    _, loo = knn(x, 4, distance="euclidean", device="cpu")
    assert loo[0].tolist() == [1, 2, 3, 4] and loo[1].tolist() == [3, 0, 2, 4]


def test_chunking_gives_identical_results():
    x, labels = clustered(300, 16, 12, seed=2, noise=1.5)
    metrics = (*ALL_RETRIEVAL, "knn_accuracy@5")
    big = evaluate(x, labels, metrics=metrics, device="cpu", memory_budget_mb=512)
    tiny = evaluate(x, labels, metrics=metrics, device="cpu", memory_budget_mb=1e-6)
    assert big == tiny


def test_numpy_and_torch_inputs_agree():
    x, labels = clustered(80, 8, 5, seed=3)
    from_numpy = evaluate(x, labels, device="cpu")
    from_torch = evaluate(torch.from_numpy(x), torch.from_numpy(labels), device="cpu")
    assert from_numpy == from_torch
    assert set(from_numpy) == {"recall@1", "recall@2", "recall@4", "recall@8", "nmi"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_embeddings": np.zeros((0, 4))}, "empty"),
        ({"query_embeddings": np.full((10, 4), np.nan)}, "NaN"),
        ({"query_labels": np.zeros(9)}, "rows"),
        ({"gallery_embeddings": np.zeros((5, 3)), "gallery_labels": np.zeros(5)}, "dimension"),
        ({"gallery_embeddings": np.zeros((5, 4))}, "together"),
        ({"metrics": ("recall@0",)}, "at least 1"),
        ({"metrics": ("accuracy",)}, "unknown metric"),
        ({"metrics": ()}, "empty"),
        ({"distance": "manhattan"}, "unknown distance"),
        ({"average": "macro"}, "average"),
        ({"query_ids": list(range(9))}, "one id"),
        ({"query_labels": np.eye(10, 3), "metrics": ("nmi",)}, "multi-hot"),
        ({"memory_budget_mb": 0}, "memory_budget_mb"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    rng = np.random.default_rng(0)
    arguments = {
        "query_embeddings": rng.normal(size=(10, 4)),
        "query_labels": np.arange(10) % 3,
        "device": "cpu",
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate(**arguments)


def test_nmi_ami_match_sklearn_on_the_same_clusters():
    metrics_module = pytest.importorskip("sklearn.metrics")
    x, labels = clustered(400, 16, 8, seed=4, noise=2.0)
    prepared = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    clusters = kmeans(prepared, 8, seed=0).numpy()
    ours = evaluate(x, labels, metrics=("nmi", "ami"), device="cpu", seed=0)
    assert ours["nmi"] == pytest.approx(
        metrics_module.normalized_mutual_info_score(labels, clusters), abs=1e-12
    )
    assert ours["ami"] == pytest.approx(
        metrics_module.adjusted_mutual_info_score(labels, clusters), abs=1e-12
    )
    assert 0.2 < ours["nmi"] < 1.0  # a noisy but real clustering, not a degenerate one


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    x, labels = clustered(600, 8, 10, seed=5, noise=0.05)
    scores = evaluate(x, labels, metrics=("nmi", "ami"), distance="euclidean", device="cpu")
    assert scores == {"nmi": pytest.approx(1.0, abs=1e-12), "ami": pytest.approx(1.0, abs=1e-12)}
    points = torch.from_numpy(x)
    assert torch.equal(kmeans(points, 10, seed=3), kmeans(points, 10, seed=3, memory_budget_mb=1e-6))


def test_kmeans_inertia_close_to_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    x, _ = clustered(500, 8, 6, seed=6, noise=1.5)
    assignments = kmeans(torch.from_numpy(x), 6, seed=0).numpy()
    centroids = np.stack([x[assignments == c].mean(0) for c in range(6)])
    ours = ((x - centroids[assignments]) ** 2).sum()
    theirs = cluster.KMeans(6, n_init=10, random_state=0).fit(x).inertia_
    assert ours <= theirs * 1.05


@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
@pytest.mark.parametrize("average", ["query", "class"])
def test_matches_pml_accuracy_calculator(protocol, average):
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    x, labels = clustered(400, 16, 30, seed=7, noise=1.2)
    labels[:3] = 99  # one lone query label in leave-one-out
    x = x / np.linalg.norm(x, axis=1, keepdims=True)  # PML ranks by L2: the same order as cosine
    if protocol == "leave_one_out":
        args, pml_args = (x, labels, None, None), (x, labels)
    else:
        args = pml_args = (x[:150], labels[:150], x[150:], labels[150:])
    calculator = pml.AccuracyCalculator(
        include=(
            "precision_at_1",
            "r_precision",
            "mean_average_precision_at_r",
            "mean_average_precision",
            "mean_reciprocal_rank",
        ),
        avg_of_avgs=average == "class",
        device=torch.device("cpu"),
    )
    theirs = calculator.get_accuracy(*pml_args)
    ours = evaluate(
        *args, metrics=("precision@1", "r_precision", "map@r", "map", "mrr"), device="cpu", average=average
    )
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["map"] == pytest.approx(theirs["mean_average_precision"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(theirs["mean_reciprocal_rank"], abs=1e-6)


def _topk_bounded():
    import sys

    return sys.modules["deepmetric.retrieval.knn"].topk_bounded


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("probe_count", [0, 5, 40, 300])
def test_bounded_topk_equals_plain_topk_on_ties(largest, probe_count):
    from deepmetric.retrieval.knn import topk_deterministic

    rng = np.random.default_rng(probe_count)
    scores = torch.from_numpy(rng.integers(-3, 4, size=(50, 300)).astype(np.float32))
    scores[rng.random(scores.shape) < 0.05] = -torch.inf if largest else torch.inf  # excluded items
    k = 12
    row_k = torch.from_numpy(rng.integers(1, k + 1, size=50))
    columns = torch.stack([torch.from_numpy(rng.permutation(300)[:probe_count]) for _ in range(50)])
    probes = scores.gather(1, columns)  # scores of distinct items: a valid bound
    expected_values, expected_indices = topk_deterministic(scores, k, largest)
    values, indices = _topk_bounded()(scores, k, largest, probes)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)
    values, indices = _topk_bounded()(scores, k, largest, probes, row_k)
    within = torch.arange(k)[None, :] < row_k[:, None]
    assert torch.equal(values[within], expected_values[within])
    assert torch.equal(indices[within], expected_indices[within])
    assert bool((indices[~within] == -1).all())


@pytest.mark.parametrize("distance", ["dot", "squared_euclidean"])
def test_bounded_ranking_equals_full_ranking_beyond_the_probe_sample(distance):
    # more gallery items than sampled probe columns, integer embeddings: many ties at the k-th value
    rng = np.random.default_rng(8)
    x = rng.integers(-2, 3, size=(1500, 3)).astype(np.float32)
    labels = rng.integers(0, 40, 1500)
    neighbour_metrics = ("precision@1", "precision@5", "r_precision", "map@r", "knn_accuracy@5")
    bounded = evaluate(x, labels, metrics=neighbour_metrics, distance=distance, device="cpu")
    full = evaluate(x, labels, metrics=(*neighbour_metrics, "map"), distance=distance, device="cpu")
    assert bounded == {name: full[name] for name in neighbour_metrics}
    ids = rng.integers(0, 700, 1500)
    with_ids = evaluate(x, labels, metrics=neighbour_metrics, distance=distance, device="cpu", query_ids=ids)
    full_ids = evaluate(
        x, labels, metrics=(*neighbour_metrics, "map"), distance=distance, device="cpu", query_ids=ids
    )
    assert with_ids == {name: full_ids[name] for name in neighbour_metrics}


def test_faiss_kmeans_backend_scores_its_own_clusters_like_sklearn():
    pytest.importorskip("faiss")
    metrics_module = pytest.importorskip("sklearn.metrics")
    x, labels = clustered(400, 16, 8, seed=4, noise=2.0)
    prepared = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    clusters = kmeans(prepared, 8, seed=0, backend="faiss").numpy()
    assert np.array_equal(clusters, kmeans(prepared, 8, seed=0, backend="faiss").numpy())
    ours = evaluate(x, labels, metrics=("nmi", "ami"), device="cpu", kmeans_backend="faiss")
    assert ours["nmi"] == pytest.approx(
        metrics_module.normalized_mutual_info_score(labels, clusters), abs=1e-12
    )
    assert ours["ami"] == pytest.approx(
        metrics_module.adjusted_mutual_info_score(labels, clusters), abs=1e-12
    )
    assert 0.3 < ours["nmi"] < 1.0


def test_kmeans_seeds_from_a_sample_on_large_inputs_and_recovers_clusters(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["deepmetric.evaluation.clustering"], "SEEDING_SAMPLE", 100)
    x, labels = clustered(600, 8, 10, seed=5, noise=0.05)
    scores = evaluate(x, labels, metrics=("nmi",), distance="euclidean", device="cpu")
    assert scores == {"nmi": pytest.approx(1.0, abs=1e-12)}


def test_bad_kmeans_settings_are_refused():
    points = torch.randn(20, 3)
    with pytest.raises(ValueError, match="backend"):
        kmeans(points, 3, backend="sklearn")
    with pytest.raises(ValueError, match="max_iterations"):
        kmeans(points, 3, max_iterations=0)
    with pytest.raises(ValueError, match="kmeans_backend"):
        evaluate(points, np.arange(20) % 3, metrics=("nmi",), device="cpu", kmeans_backend="sk")


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclidean", "squared_euclidean"])
def test_distance_blocks_equal_the_shared_pairwise_distances(distance):
    from deepmetric.retrieval.knn import distance_blocks, ranking_distance

    rng = np.random.default_rng(9)
    dist = get_distance(distance)
    query = dist.prepare(torch.from_numpy(rng.normal(size=(23, 5)).astype(np.float32)))
    gallery = dist.prepare(torch.from_numpy(rng.normal(size=(31, 5)).astype(np.float32)))
    expected = ranking_distance(dist)._pairwise(query, gallery)
    # blocks share one buffer, so each is copied before the next one is computed
    blocks = [block.scores.clone() for block in distance_blocks(query, gallery, dist, 4, False)]
    assert torch.allclose(torch.cat(blocks), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("distance", ["dot", "squared_euclidean"])
@pytest.mark.parametrize(("band", "width"), [(1024, 4096), (64, 64), (100, 256)])
def test_leave_one_out_over_several_tiles_equals_brute_force(distance: str, band: int, width: int) -> None:
    """The symmetric tiling (each tile computed once, read by rows and by columns) over one tile and over
    several, band and tile edges not aligned, with massive exact ties (small integers: every product is
    exact) and duplicate ids, equals a full stable sort of the whole matrix; so does the public knn."""
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(700, 5)).astype(np.float32)
    ids = rng.integers(0, 600, size=700)
    d = get_distance(distance)
    largest = d.is_similarity
    full = d.pairwise(torch.from_numpy(x).double())
    full = full.masked_fill(
        torch.from_numpy(ids[:, None] == ids[None, :]), -math.inf if largest else math.inf
    )
    expected_values, expected_indices = full.sort(dim=1, descending=largest, stable=True)
    expected_values = expected_values[:, :40]
    expected_indices = torch.where(torch.isinf(expected_values), -1, expected_indices[:, :40])
    values, indices = knn(x, 40, distance=distance, query_ids=ids, device="cpu")
    torch.testing.assert_close(values.double(), expected_values)
    assert torch.equal(indices, expected_indices)
    if native.available():
        values, indices = symmetric_topk(torch.from_numpy(x), d, 40, torch.from_numpy(ids), band, width)
        torch.testing.assert_close(values.double(), expected_values)
        assert torch.equal(indices, expected_indices)
