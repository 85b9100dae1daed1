"""Galleries past memory: embedding shards (torchrun, resume), indexes built from shards, sharded search.

Every search is checked against a direct one over the concatenated vectors: numpy brute force for the
exact and IVF-Flat searches, the in-memory Hamming k-NN for code shards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepmetric.cli import main
from deepmetric.hashing.packing import pack_bits
from deepmetric.hashing.search import hamming_knn
from deepmetric.retrieval.shards import Plan, ShardSet, ShardWriter, write_arrays

ROOT = Path(__file__).parents[1]
TINY = [
    "model.backbone_options={in_channels: 1, image_size: 8, width: 8}",
    "model.embedding_size=16",
    "train.iterations=2",
    "train.eval_every=2",
    "train.log_every=1",
]


def clustered(count: int, dim: int, seed: int = 0, clusters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    """Points around ``clusters`` centres, spread mostly along 6 directions (as embeddings are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, count)
    spread = rng.normal(size=(count, 6)) @ rng.normal(size=(6, dim)) * 0.3
    return (centres[labels] + spread + 0.05 * rng.normal(size=(count, dim))).astype(np.float32), labels


def shard_folder(path: Path, vectors: np.ndarray, labels: np.ndarray | None, size: int, dtype="float32"):
    width = vectors.shape[1]
    chunks = (
        (vectors[s : s + size], None if labels is None else labels[s : s + size])
        for s in range(0, len(vectors), size)
    )
    dim = width * 8 if dtype == "bits" else width
    return write_arrays(path, chunks, len(vectors), dim, size, dtype)


def brute_force(
    queries: np.ndarray, gallery: np.ndarray, k: int, distance: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top k by (value, index), from the definition."""
    if distance == "cosine":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        values = q.astype(np.float64) @ g.T.astype(np.float64)
        order = np.lexsort((np.broadcast_to(np.arange(len(g)), values.shape), -values), axis=1)
    else:
        values = np.sqrt(((queries[:, None, :].astype(np.float64) - gallery[None]) ** 2).sum(-1))
        order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), values.shape), values), axis=1)
    order = order[:, :k]
    return np.take_along_axis(values, order, 1), order


# ------------------------------------------------------------------------------------------ shard folders


def test_shards_round_trip_memory_mapped(tmp_path):
    vectors, labels = clustered(1000, 8)
    shards = shard_folder(tmp_path / "s", vectors, labels, 300)
    assert len(shards) == 1000 and shards.num_shards == 4 and shards.plan.rows(3) == range(900, 1000)
    assert isinstance(shards.vectors(1), np.memmap)
    rows = np.array([[999, 0], [300, 299]])
    np.testing.assert_array_equal(shards.rows(rows), vectors[rows])
    np.testing.assert_array_equal(shards.labels_of(rows), labels[rows])
    np.testing.assert_array_equal(shards.ids_of(rows), rows)
    np.testing.assert_array_equal(shards.all_labels(), labels)
    for name in os.listdir(tmp_path / "s"):
        assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o644, name
    half = shard_folder(tmp_path / "h", vectors, None, 300, "float16")
    assert half.vectors(0).dtype == np.float16 and half.labels(0) is None
    np.testing.assert_allclose(half.rows(np.arange(1000)), vectors, rtol=1e-3, atol=1e-3)


def test_shard_folder_refuses_other_jobs_and_unfinished_shards(tmp_path):
    plan = Plan(4, "float32", 10, 4, False, {"job": 1})
    writer = ShardWriter(tmp_path, plan)
    writer.write(0, np.zeros((4, 4)), None)
    with pytest.raises(ValueError, match=r"2 of 3 shards are unfinished \(first: shard-00001"):
        ShardSet(tmp_path)
    with pytest.raises(ValueError, match=r"another job .*source"):
        ShardWriter(tmp_path, Plan(4, "float32", 10, 4, False, {"job": 2}))
    with pytest.raises(ValueError, match="must hold 4 x 4 values"):
        writer.write(1, np.zeros((3, 4)), None)
    with pytest.raises(ValueError, match="NaN"):
        writer.write(1, np.full((4, 4), np.nan), None)
    with pytest.raises(ValueError, match="unknown shard dtype"):
        Plan(4, "int8", 10, 4, False, {})
    assert writer.pending() == [1, 2]


# ------------------------------------------------------------------------------------------ embedding


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from deepmetric.cli import demo_config_path
    from deepmetric.training import load_config, train

    run = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config(demo_config_path(), TINY), run)
    return run


def test_embed_to_shards_equals_embed_dataset_and_resumes(tiny_run, tmp_path, monkeypatch):
    from deepmetric.data import get_dataset
    from deepmetric.data.transforms import build_transform
    from deepmetric.training import embed_dataset, load_model, shard_embed

    model = load_model(tiny_run)
    dataset = get_dataset("digits", split="test", transform=build_transform(model.input_spec, train=False))
    expected = embed_dataset(model, dataset)
    shards = shard_embed.embed_to_shards(model, dataset, tmp_path / "s", shard_size=256, progress=False)
    np.testing.assert_allclose(shards.rows(np.arange(len(dataset))), expected, atol=1e-6)
    np.testing.assert_array_equal(shards.all_labels(), dataset.labels)
    # a job killed before shard 2 was marked complete: only that shard is embedded again
    (tmp_path / "s" / "shard-00002.json").unlink()
    (tmp_path / "s" / "shard-00002.vectors.npy").write_bytes(b"half-written")
    calls = []
    real = shard_embed.embed_dataset
    monkeypatch.setattr(
        shard_embed, "embed_dataset", lambda m, d, *a, **k: calls.append(len(d)) or real(m, d, *a, **k)
    )
    again = shard_embed.embed_to_shards(model, dataset, tmp_path / "s", shard_size=256, progress=False)
    assert calls == [256]
    np.testing.assert_allclose(again.rows(np.arange(len(dataset))), expected, atol=1e-6)
    bits = shard_embed.embed_to_shards(
        model, dataset, tmp_path / "b", shard_size=500, dtype="bits", progress=False
    )
    np.testing.assert_array_equal(bits.rows(np.arange(len(dataset))), pack_bits(expected))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embed_shards_under_torchrun_equals_one_process(tiny_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m"]
    torchrun = [
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    command = ["deepmetric.cli", "embed-shards", str(tiny_run), "--shard-size", "150"]
    for argv in (
        base + torchrun + ["--master_port", str(_free_port()), "-m", *command, "--out", "two"],
        [*base, *command, "--out", "one"],
    ):
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = ShardSet(tmp_path / "one/test"), ShardSet(tmp_path / "two/test")
    assert one.num_shards == two.num_shards == 6
    for name in sorted(os.listdir(tmp_path / "one/test")):
        if name.endswith(".npy"):
            np.testing.assert_allclose(
                np.load(tmp_path / "one/test" / name), np.load(tmp_path / "two/test" / name), atol=1e-6
            )
    assert json.loads((tmp_path / "one/test/manifest.json").read_text()) == json.loads(
        (tmp_path / "two/test/manifest.json").read_text()
    )


# ------------------------------------------------------------------------------------------ indexes


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_exact_search_over_shards_equals_brute_force(tmp_path, distance):
    from deepmetric.retrieval.sharded_index import exact_search

    vectors, _ = clustered(700, 12)
    queries, _ = clustered(15, 12, seed=1)
    shards = shard_folder(tmp_path, vectors, None, 160)
    values, rows = exact_search(shards, queries, 7, distance, memory_budget_mb=0.01)
    expected_values, expected_rows = brute_force(queries, vectors, 7, distance)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", ["ondisk", "parts"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_ivf_flat_probing_every_list_is_exact(tmp_path, storage, distance):
    pytest.importorskip("faiss")
    from deepmetric.retrieval.sharded_index import ShardedIndex, build_sharded_index

    vectors, _ = clustered(900, 16)
    queries, _ = clustered(12, 16, seed=1)
    shard_folder(tmp_path / "s", vectors, None, 200)
    build_sharded_index(
        tmp_path / "s",
        tmp_path / "i",
        "ivfflat",
        distance,
        nlist=8,
        nprobe=8,
        storage=storage,
        progress=False,
    )
    index = ShardedIndex(tmp_path / "i")
    values, rows = index.search(queries, 5)
    expected_values, expected_rows = brute_force(queries, vectors, 5, distance)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(values, expected_values, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan, dtype=np.float32), 5)
    record = json.loads((tmp_path / "i/index.json").read_text())
    assert record["kind"] == "ivfflat" and record["build"]["nlist"] == 8 and record["count"] == 900
    assert sorted(os.listdir(tmp_path / "i")) == sorted(
        ["build.json", "index.json", "trained.faiss", *record["files"]]
    )


def test_ivf_pq_recall_parts_equal_merged_and_resume(tmp_path):
    pytest.importorskip("faiss")
    from deepmetric.retrieval.sharded_index import ShardedIndex, build_sharded_index, exact_search

    everything, every_label = clustered(3040, 32, clusters=30)
    vectors, labels, queries = everything[:3000], every_label[:3000], everything[3000:]
    shards = shard_folder(tmp_path / "s", vectors, labels, 700)
    _, truth = exact_search(shards, queries, 10, "cosine")
    common = dict(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=8, progress=False)
    merged = build_sharded_index(tmp_path / "s", tmp_path / "m", rerank=60, **common)
    parts = build_sharded_index(tmp_path / "s", tmp_path / "p", storage="parts", shards_per_part=2, **common)
    assert parts.record["files"] == ["part-00000.faiss", "part-00001.faiss", "part-00002.faiss"]

    def recall(rows):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])

    reranked = merged.search(queries, 10)[1]
    coarse = ShardedIndex(tmp_path / "m", rerank=0).search(queries, 10)
    assert recall(reranked) >= 0.9 and recall(reranked) > recall(coarse[1])
    np.testing.assert_array_equal(parts.search(queries, 10)[1], coarse[1])  # one index = its parts merged
    np.testing.assert_allclose(parts.search(queries, 10)[0], coarse[0], rtol=1e-5)
    np.testing.assert_array_equal(merged.labels_of(reranked), labels[reranked])
    # a build killed after its first part resumes from the rest; other settings are refused
    os.remove(tmp_path / "p/part-00002.faiss")
    os.remove(tmp_path / "p/index.json")
    resumed = build_sharded_index(
        tmp_path / "s", tmp_path / "p", storage="parts", shards_per_part=2, **common
    )
    np.testing.assert_array_equal(resumed.search(queries, 10)[1], coarse[1])
    with pytest.raises(ValueError, match="other settings"):
        build_sharded_index(tmp_path / "s", tmp_path / "p", **{**common, "nlist": 8})


def test_hamming_shards_equal_in_memory_search(tmp_path):
    from deepmetric.retrieval.sharded_index import build_sharded_index, exact_search

    rng = np.random.default_rng(0)
    codes = pack_bits(rng.normal(size=(2000, 64)))
    codes[1500] = codes[3]  # ties across shards: the lower row first
    queries = pack_bits(rng.normal(size=(9, 64)))
    queries[0] = codes[3]
    shard_folder(tmp_path / "s", codes, None, 600, "bits")
    index = build_sharded_index(tmp_path / "s", tmp_path / "i", kind="hamming")
    values, rows = index.search(queries, 25)
    expected_values, expected_rows = hamming_knn(queries, codes, 25)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(values, expected_values)
    assert rows[0, :2].tolist() == [3, 1500]
    np.testing.assert_array_equal(
        index.search(np.where(rng.normal(size=(2, 64)) > 0, 1.0, -1.0), 3)[1].shape, (2, 3)
    )
    with pytest.raises(ValueError, match="needs float shards"):
        build_sharded_index(tmp_path / "s", tmp_path / "j", kind="ivfpq")
    with pytest.raises(ValueError, match="packed binary codes"):
        exact_search(index.shards, queries, 3)


# ------------------------------------------------------------------------------------------ CLI


def test_build_and_search_index_cli(tmp_path, capsys):
    pytest.importorskip("faiss")
    vectors, labels = clustered(600, 8)
    shard_folder(tmp_path / "s", vectors, labels, 250)
    np.save(tmp_path / "q.npy", vectors[:4])
    argv = [
        "build-index",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "i"),
        "--kind",
        "ivfflat",
        "--nlist",
        "4",
    ]
    assert main([*argv, "--nprobe", "4"]) == 0
    assert (
        main(
            [
                "search-index",
                str(tmp_path / "i"),
                "--queries",
                str(tmp_path / "q.npy"),
                "-k",
                "3",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "r/ids.npy"), brute_force(vectors[:4], vectors, 3, "cosine")[1]
    )
    capsys.readouterr()
    assert main(["evaluate-shards", str(tmp_path / "s"), "--index", str(tmp_path / "i"), "--json"]) == 0
    from deepmetric.evaluation import evaluate

    assert json.loads(capsys.readouterr().out) == pytest.approx(
        evaluate(vectors, labels, metrics=["recall@1", "recall@10"])
    )
    assert main(["build-index", str(tmp_path / "missing"), "--out", str(tmp_path / "j")]) == 2
    assert "holds no shards" in capsys.readouterr().err
    assert main([*argv, "--kind", "annoy"]) == 2
    assert "unknown index kind 'annoy'" in capsys.readouterr().err
    assert main(["search-index", str(tmp_path / "i"), "--queries", str(tmp_path / "q.npy"), "-k", "601"]) == 2
    assert "k must be in 1..600" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ evaluation


def test_sharded_leave_one_out_metrics_equal_in_memory_evaluation(tmp_path):
    from deepmetric.evaluation import evaluate
    from deepmetric.evaluation.sharded import evaluate_shards

    vectors, labels = clustered(500, 8, clusters=12)
    vectors[7] = vectors[3]  # a duplicate: the query's own row is removed, not its twin
    shards = shard_folder(tmp_path / "s", vectors, labels, 130)
    metrics = ["recall@1", "recall@4", "precision@5", "r_precision", "map@r"]
    expected = evaluate(vectors, labels, metrics=metrics, distance="cosine")
    found = evaluate_shards(shards, metrics, chunk=37, memory_budget_mb=0.05)
    assert found.keys() == expected.keys()
    for name in metrics:
        assert found[name] == pytest.approx(expected[name], abs=1e-9), name
    with pytest.raises(ValueError, match="max_depth=10"):
        evaluate_shards(shards, ["map@r"], max_depth=10)
    with pytest.raises(ValueError, match="not \\['nmi'\\]"):
        evaluate_shards(shards, ["nmi"])


def test_sharded_evaluation_through_an_index_equals_exact(tmp_path):
    pytest.importorskip("faiss")
    from deepmetric.evaluation.sharded import evaluate_shards
    from deepmetric.retrieval.sharded_index import build_sharded_index

    vectors, labels = clustered(400, 8, clusters=10)
    shards = shard_folder(tmp_path / "s", vectors, labels, 150)
    index = build_sharded_index(tmp_path / "s", tmp_path / "i", "ivfflat", nlist=4, nprobe=4, progress=False)
    metrics = ["recall@1", "recall@8", "map@r"]
    exact = evaluate_shards(shards, metrics, max_queries=120)
    assert evaluate_shards(shards, metrics, index=index, max_queries=120) == pytest.approx(exact, abs=1e-12)


def test_an_index_moved_with_its_shards_still_finds_them(tmp_path):
    pytest.importorskip("faiss")
    from deepmetric.retrieval.sharded_index import ShardedIndex, build_sharded_index

    vectors, _ = clustered(300, 8)
    shard_folder(tmp_path / "a/shards", vectors, None, 100)
    build_sharded_index(
        tmp_path / "a/shards", tmp_path / "a/index", "ivfflat", nlist=4, nprobe=4, progress=False
    )
    expected = ShardedIndex(tmp_path / "a/index").search(vectors[:5], 3)
    (tmp_path / "a").rename(tmp_path / "b")  # both folders move: found relative to the index
    moved = ShardedIndex(tmp_path / "b/index")
    assert moved.shards.directory == tmp_path / "b/index/../shards"
    np.testing.assert_array_equal(moved.search(vectors[:5], 3)[1], expected[1])
    (tmp_path / "b/index").rename(tmp_path / "index")  # the index alone moves: the recorded place
    (tmp_path / "b").rename(tmp_path / "a")
    np.testing.assert_array_equal(ShardedIndex(tmp_path / "index").search(vectors[:5], 3)[1], expected[1])
