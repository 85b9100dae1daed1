"""Retrieval post-processing against slow references written from the definitions."""

import numpy as np
import pytest

from deepmetric.retrieval.postprocess import (
    PCAWhitening,
    alpha_query_expansion,
    database_augmentation,
    k_reciprocal_rerank,
    power_normalize,
)


def rows(count: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim))


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_power_normalize_matches_the_definition():
    x = rows(5, 4, 0)
    expected = np.stack([unit(np.array([np.sign(v) * abs(v) ** 0.5 for v in row])) for row in x])
    np.testing.assert_allclose(power_normalize(x, 0.5), expected, rtol=1e-6)
    np.testing.assert_allclose(power_normalize(x, 1.0), np.stack([unit(r) for r in x]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"alpha must be in"):
        power_normalize(x, 0.0)
    with pytest.raises(ValueError, match=r"NaN"):
        power_normalize(np.full((2, 2), np.nan))


def test_whitening_decorrelates_the_training_set_and_matches_a_reference():
    train = rows(200, 6, 1) @ rows(6, 6, 2)  # correlated
    whitening = PCAWhitening(eps=0.0).fit(train)
    # reference: eigen-decomposition of the covariance of the L2-normalised rows, axes scaled to unit variance
    normed = np.stack([unit(r) for r in train])
    centred = normed - normed.mean(axis=0)
    variances, axes = np.linalg.eigh(centred.T @ centred / len(train))
    projected = centred @ axes / np.sqrt(variances)
    assert np.allclose(np.cov(projected, rowvar=False, bias=True), np.eye(6), atol=1e-8)
    query = rows(3, 6, 3)
    expected = np.stack([unit((unit(q) - normed.mean(axis=0)) @ axes / np.sqrt(variances)) for q in query])
    got = whitening.transform(query)
    # axes are defined up to sign and order: compare the Gram matrices, which neither changes
    np.testing.assert_allclose(got @ got.T, expected @ expected.T, atol=1e-5)
    reduced = PCAWhitening(dim=2).fit(train).transform(query)
    assert reduced.shape == (3, 2)
    with pytest.raises(ValueError, match=r"not fitted"):
        PCAWhitening().transform(query)
    with pytest.raises(ValueError, match=r"fitted on 6"):
        whitening.transform(rows(2, 5, 0))


def slow_alpha_qe(queries, database, k, alpha, exclude_self):
    out = []
    for i, q in enumerate(queries):
        q = unit(q)
        scored = [(float(q @ unit(d)), j) for j, d in enumerate(database) if not (exclude_self and i == j)]
        scored.sort(key=lambda pair: -pair[0])
        total = q.copy()
        for similarity, j in scored[:k]:
            total += max(similarity, 0.0) ** alpha * unit(database[j])
        out.append(unit(total))
    return np.stack(out)


@pytest.mark.parametrize("k, alpha", [(1, 0.0), (3, 3.0), (5, 1.0)])
def test_alpha_query_expansion_and_dba_match_a_loop(k, alpha):
    queries, database = rows(4, 5, 4), rows(9, 5, 5)
    np.testing.assert_allclose(
        alpha_query_expansion(queries, database, k, alpha),
        slow_alpha_qe(queries, database, k, alpha, False),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        database_augmentation(database, k, alpha),
        slow_alpha_qe(database, database, k, alpha, True),
        atol=1e-6,
    )


def test_query_expansion_refuses_bad_settings():
    x = rows(4, 3, 0)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        database_augmentation(x, k=4)
    with pytest.raises(ValueError, match=r"3 dimensions, the database 2"):
        alpha_query_expansion(x, rows(4, 2, 0))


def slow_rerank(queries, gallery, k1, k2, lam):
    """k-reciprocal re-ranking written out with Python sets and loops, one pair at a time."""
    items = [unit(v) for v in np.concatenate([queries, gallery])]
    n = len(items)
    d = np.array([[max(1.0 - float(a @ b), 0.0) for b in items] for a in items])
    d = d / d.max(axis=0, keepdims=True)
    order = [sorted(range(n), key=lambda j, i=i: (d[i, j], j)) for i in range(n)]

    def reciprocal(i, k):
        return {j for j in order[i][: k + 1] if i in order[j][: k + 1]}

    vectors = []
    for i in range(n):
        r = reciprocal(i, k1)
        grown = set(r)
        for c in r:
            theirs = reciprocal(c, int(np.around(k1 / 2)))
            if len(theirs & r) > 2 / 3 * len(theirs):
                grown |= theirs
        total = sum(np.exp(-d[i, j]) for j in grown)
        vectors.append({j: np.exp(-d[i, j]) / total for j in grown})
    expanded = []
    for i in range(n):
        mean = {}
        for j in order[i][:k2]:
            for c, w in vectors[j].items():
                mean[c] = mean.get(c, 0.0) + w / k2
        expanded.append(mean)
    out = np.zeros((len(queries), len(gallery)))
    for i in range(len(queries)):
        for g in range(len(gallery)):
            a, b = expanded[i], expanded[len(queries) + g]
            columns = set(a) | set(b)
            low = sum(min(a.get(c, 0.0), b.get(c, 0.0)) for c in columns)
            high = sum(max(a.get(c, 0.0), b.get(c, 0.0)) for c in columns)
            out[i, g] = lam * d[i, len(queries) + g] + (1 - lam) * (1 - low / high)
    return out


@pytest.mark.parametrize("k1, k2, lam", [(4, 1, 0.3), (5, 3, 0.0), (6, 2, 1.0)])
def test_k_reciprocal_rerank_matches_a_loop(k1, k2, lam):
    centres = rows(3, 6, 7) * 3
    queries = centres[[0, 1, 2, 0]] + rows(4, 6, 8)
    gallery = centres[np.arange(14) % 3] + rows(14, 6, 9)
    np.testing.assert_allclose(
        k_reciprocal_rerank(queries, gallery, k1, k2, lam),
        slow_rerank(queries, gallery, k1, k2, lam),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match=r"1 <= k2 <= k1 < 18"):
        k_reciprocal_rerank(queries, gallery, k1=20)


def test_eval_dba_ranks_the_augmented_embeddings(tmp_path):
    from deepmetric.evaluation import evaluate
    from deepmetric.training import train
    from tests.demo_configs import TINY_RUN, demo_config

    config = demo_config(*TINY_RUN, "train.iterations=0", "eval.dba_k=2", "eval.metrics=[recall@1, map@r]")
    metrics = train(config, tmp_path / "run")
    saved = np.load(tmp_path / "run/embeddings/test_embeddings.npy")  # the embeddings themselves
    labels = np.load(tmp_path / "run/embeddings/test_labels.npy")
    expected = evaluate(database_augmentation(saved, 2, 3.0), labels, metrics=["recall@1", "map@r"])
    plain = evaluate(saved, labels, metrics=["map@r"])
    assert metrics["trained"] == pytest.approx(expected)
    assert metrics["trained"]["map@r"] != pytest.approx(plain["map@r"])
    with pytest.raises(ValueError, match=r"eval.dba_k: database-side augmentation mixes"):
        demo_config("eval.dba_k=2", "eval.binarize=true")
