"""Retrieval post-processing against slow references written from the definitions."""

import numpy as np
import pytest

from deepmetric.retrieval.postprocess import (
    PCAWhitening,
    alpha_query_expansion,
    database_augmentation,
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
