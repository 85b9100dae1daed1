"""The ranking apart from the metrics (retrieval.ranking), the metric registry, and the memory budget
honoured on every path, measured as peak memory in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmetric import native
from deepmetric.distances import get_distance
from deepmetric.evaluation import METRICS, evaluate, parse_metric
from deepmetric.evaluation.metrics import ranking_needs
from deepmetric.retrieval.knn import native_state_bytes, streaming_topk_bands, symmetric_topk
from deepmetric.retrieval.ranking import RankingNeeds, rank

REPO = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built")


def test_every_metric_is_registered_with_what_it_reads():
    assert set(METRICS.names()) >= {
        "recall", "precision", "r_precision", "map@r", "map", "map@k", "mrr", "knn_accuracy", "nmi", "ami",
        "roc_auc", "eer", "tar@far", "precision@threshold", "recall@threshold",
    }  # fmt: skip
    for kind in METRICS.names():
        metric = METRICS.lookup(kind)
        assert (metric.needs is not None) == (metric.group == "neighbour")
        assert (metric.compute is None) == (metric.group == "clustering")
    specs = [parse_metric(n) for n in ("recall@4", "map@r", "knn_accuracy@9", "mrr")]
    assert ranking_needs(specs) == RankingNeeds(k=9, r_neighbours=True, full=False, first_relevant=True)
    assert ranking_needs([parse_metric("map")]) == RankingNeeds(k=1, full=True)


def test_rank_gives_the_top_k_of_every_query_once():
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    ranking = rank(x, labels, distance="dot", needs=RankingNeeds(k=5), memory_budget_mb=1e-3, device="cpu")
    bands = list(ranking.bands())
    starts = [band.start for band in bands]
    assert starts == sorted(starts) and sum(len(b.has_relevant) for b in bands) == 60
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    for band in bands:
        for row, query in enumerate(band.start + band.has_relevant.nonzero().flatten().numpy()):
            expected = sorted(range(60), key=lambda j: (-scores[query, j], j))[:5]
            assert band.indices[row].tolist() == expected
            assert band.relevant[row].tolist() == [bool(labels[j] == labels[query]) for j in expected]
    with pytest.raises(ValueError, match="memory_budget_mb must be positive"):
        rank(x, labels, memory_budget_mb=0)
    with pytest.raises(ValueError, match="given together"):
        rank(x, labels, gallery=x)


@needs_native
@pytest.mark.parametrize("distance", ["dot", "squared_euclidean"])
@pytest.mark.parametrize("with_ids", [False, True])
def test_banded_leave_one_out_equals_the_symmetric_scan(distance, with_ids):
    """Under a budget too small for every query's selection state, leave-one-out goes band by band (each
    band scanning the whole gallery): the same top k, ties included, as the symmetric scan."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(-2, 3, size=(300, 6)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 100, 300)) if with_ids else None
    dist = get_distance(distance)
    expected = symmetric_topk(x, dist, 7, ids, band=64, width=64)
    budget_mb = 300 * native_state_bytes(7) / 2**20  # the state fits, one tile does not
    bands = list(streaming_topk_bands(x, None, dist, 7, ids, memory_budget_mb=budget_mb, band=64, width=64))
    assert len(bands) > 1
    values = torch.cat([v for _, v, _ in bands])
    indices = torch.cat([i for _, _, i in bands])
    assert torch.equal(values, expected[0]) and torch.equal(indices, expected[1])


@needs_native
def test_small_budget_values_identical_on_the_native_path():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    labels = rng.integers(0, 20, 500)
    metrics = ("recall@1", "recall@4", "precision@2", "r_precision", "map@r", "map@3", "knn_accuracy@3")
    assert evaluate(x, labels, metrics=metrics, device="cpu", memory_budget_mb=0.05) == evaluate(
        x, labels, metrics=metrics, device="cpu", memory_budget_mb=512
    )


def test_copy_false_normalises_in_place_with_the_same_values():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    metrics = ("recall@1", "map@r", "mrr", "roc_auc")
    expected = evaluate(x, labels, metrics=metrics, device="cpu")
    owned = x.copy()
    assert evaluate(owned, labels, metrics=metrics, device="cpu", copy=False) == expected
    assert np.allclose(np.linalg.norm(owned, axis=1), 1, atol=1e-6)  # overwritten: no second copy


# The measured process: the baseline peak is taken after imports and a warm-up evaluation (libraries,
# native kernels, allocator pools), then the CLI evaluates the saved embeddings.
_MEASURE = """
import json, resource, sys
import numpy as np
import torch
torch.set_num_threads(1)
from deepmetric.cli import main
from deepmetric.evaluation import evaluate
rng = np.random.default_rng(0)
evaluate(rng.normal(size=(500, 8)).astype("f4"), rng.integers(0, 5, 500), metrics=sys.argv[3].split(","),
         device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
main(["evaluate", "--embeddings", sys.argv[1], "--labels", sys.argv[2], "--metrics", sys.argv[3],
      "--memory-budget-mb", sys.argv[4], "--json"])
print(json.dumps({"increase_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""
# Slack for what the budget does not count: per-query metric outputs (n x 8 bytes each), labels, small
# tensors and allocator fragmentation.
SLACK_MIB = 8


def _peak_increase(tmp_path: Path, n: int, dim: int, budget_mb: float, metrics: str) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(n, dim)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, n // 10, n))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            metrics,
            str(budget_mb),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["increase_mib"], n * dim * 4 / 2**20


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_cli_evaluation_stays_within_the_budget_plus_the_embeddings(tmp_path):
    increase, embeddings = _peak_increase(tmp_path, 10_000, 128, 8, "recall@1,recall@8,map@r,r_precision")
    assert increase <= embeddings + 8 + SLACK_MIB


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 6 CPU-minutes of matrix products on one thread
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_issue_200k_x_128_within_64_mib_plus_the_embeddings(tmp_path):
    increase, embeddings = _peak_increase(
        tmp_path, 200_000, 128, 64, "recall@1,recall@2,recall@4,recall@8,map@r"
    )
    assert increase <= embeddings + 64 + SLACK_MIB


def test_the_budget_is_a_config_key_and_a_cli_option(tmp_path, capsys):
    from deepmetric.cli import main
    from deepmetric.training.config import ConfigError, load_config

    assert load_config(None, ["eval.memory_budget_mb=64"]).eval.memory_budget_mb == 64
    with pytest.raises(ConfigError, match=r"eval\.memory_budget_mb"):
        load_config(None, ["eval.memory_budget_mb=0"])
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(50, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 5, 50))
    files = ["--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *files, "--memory-budget-mb", "-1"])
    assert exit_info.value.code == 2 and "positive number of MiB" in capsys.readouterr().err
    assert (
        main(["evaluate", *files, "--metrics", "recall@1,roc_auc", "--memory-budget-mb", "0.1", "--json"])
        == 0
    )
    tiny = json.loads(capsys.readouterr().out)  # 0.1 MiB: blocks of a few rows, all 1,225 pairs held
    assert main(["evaluate", *files, "--metrics", "recall@1,roc_auc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == tiny
