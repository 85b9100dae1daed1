"""deepmetric search / load_index over indexes built by build-index from shards, and embed --shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deepmetric
from deepmetric.api import from_model
from deepmetric.cli import main
from deepmetric.retrieval.shards import ShardSet
from tests.image_run import make_image_run

TEST_CLASSES = [f"class_{c}" for c in range(4, 8)]  # the folder dataset's test split


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """(run, image folder, shard folder of the test split): embedded with ``deepmetric embed --shards``."""
    root = tmp_path_factory.mktemp("search_shards")
    run, folder = make_image_run(root)
    assert main(["embed", str(run), "--shards", str(root / "shards"), "--shard-size", "6"]) == 0
    return run, folder, root / "shards" / "test"


def ivf_flat(shards: Path, out: Path) -> Path:
    """An IVF-Flat index probing all of its 2 lists: exact search."""
    pytest.importorskip("faiss")
    args = [
        "build-index",
        str(shards),
        "--out",
        str(out),
        "--kind",
        "ivfflat",
        "--nlist",
        "2",
        "--nprobe",
        "2",
    ]
    assert main(args) == 0
    return out


def search_json(capsys, index: Path, queries: list[Path], k: int) -> list[dict]:
    capsys.readouterr()
    assert main(["search", str(index), *map(str, queries), "-k", str(k), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_shards_record_model_paths_and_class_names(sharded):
    run, folder, shards = sharded
    shard_set = ShardSet(shards)
    model = deepmetric.load(run)
    assert shard_set.plan.source["fingerprint"] == model.fingerprint
    assert shard_set.plan.source["checkpoint"] in ("best", "last")  # the checkpoint "auto" chose
    assert shard_set.class_names == TEST_CLASSES
    paths = shard_set.paths
    expected = sorted(str(p.resolve()) for c in TEST_CLASSES for p in (folder / c).glob("*.png"))
    assert sorted(paths) == expected
    labels = shard_set.all_labels()
    assert [Path(p).parent.name for p in paths] == [TEST_CLASSES[label] for label in labels]
    # the stored vectors are the API's embeddings of those files
    vectors = np.concatenate([shard_set.vectors(s) for s in range(shard_set.num_shards)])
    assert vectors == pytest.approx(model.embed(paths, progress=False), abs=1e-5)


def test_search_a_sharded_ivf_index_by_image(sharded, tmp_path, capsys):
    run, folder, shards = sharded
    index = ivf_flat(shards, tmp_path / "ivf")
    queries = [folder / "class_5" / "img_2.png", folder / "class_7" / "img_0.png"]
    results = search_json(capsys, index, queries, 5)
    assert [r["query"] for r in results] == [str(q.resolve()) for q in queries]
    # the reference: an exact in-memory index of the same 16 images
    model = deepmetric.load(run)
    gallery = sorted((folder / c / f"img_{i}.png").resolve() for c in TEST_CLASSES for i in range(4))
    exact = model.build_index(gallery, labels=[p.parent.name for p in gallery], progress=False)
    for query, result, expected in zip(queries, results, exact.search(queries, 5)):
        assert set(result) == {"query", "results"} and len(result["results"]) == 5
        first = result["results"][0]
        assert set(first) == {"path", "label", "distance"}
        assert first["path"] == str(query.resolve()) and first["label"] == query.parent.name
        assert first["distance"] == pytest.approx(0, abs=1e-5)
        assert [hit["path"] for hit in result["results"]] == [hit.path for hit in expected.hits]
        assert [hit["label"] for hit in result["results"]] == [hit.label for hit in expected.hits]
        assert [hit["distance"] for hit in result["results"]] == pytest.approx(
            [hit.distance for hit in expected.hits], abs=1e-5
        )


def test_search_a_hamming_index_of_bit_shards(sharded, tmp_path, capsys):
    run, folder, _ = sharded
    out = tmp_path / "bits"
    assert main(["embed", str(run), "--shards", str(out), "--dtype", "bits", "--shard-size", "5"]) == 0
    assert main(["build-index", str(out / "test"), "--out", str(tmp_path / "ham"), "--kind", "hamming"]) == 0
    query = folder / "class_6" / "img_3.png"
    [result] = search_json(capsys, tmp_path / "ham", [query], 16)
    hits = result["results"]
    # Hamming distances as they are: whole numbers, ordered; the query's own code at 0 (16-bit codes of a
    # barely trained model tie, and ties come in row order)
    distances = [hit["distance"] for hit in hits]
    assert distances == sorted(distances) and all(d == int(d) for d in distances)
    assert {"path": str(query.resolve()), "label": "class_6", "distance": 0} in hits
    # against the codes' Hamming distances computed from the model's embeddings
    model = deepmetric.load(run)
    codes = model.embed([hit["path"] for hit in hits], progress=False) > 0
    own = model.embed(query, progress=False)[0] > 0
    assert distances == [int((row != own).sum()) for row in codes]


def test_another_model_is_refused(sharded, tmp_path, capsys):
    run, folder, shards = sharded
    index = ivf_flat(shards, tmp_path / "ivf")
    network = deepmetric.load(run).module[1]
    with torch.no_grad():
        next(network.parameters()).add_(0.5)
    with pytest.raises(ValueError, match="embedded by another model"):
        deepmetric.load_index(index, model=from_model(network))
    manifest = json.loads((shards / "manifest.json").read_text())
    copy = tmp_path / "copied_shards"
    copy.mkdir()
    for path in shards.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest["source"]["fingerprint"] = "0123456789abcdef"  # as if another model had embedded them
    (copy / "manifest.json").write_text(json.dumps(manifest))
    index = ivf_flat(copy, tmp_path / "ivf_copy")
    capsys.readouterr()
    assert main(["search", str(index), str(folder / "class_4" / "img_0.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "another model" in err and len(err.strip().splitlines()) == 1


def test_a_sharded_index_is_read_only(sharded, tmp_path):
    _, folder, shards = sharded
    index = deepmetric.load_index(ivf_flat(shards, tmp_path / "ivf"))
    assert len(index) == 16 and index.threshold is None
    for action in (
        lambda: index.add(folder / "class_0"),
        lambda: index.calibrate(folder),
        lambda: index.save(tmp_path / "copy"),
    ):
        with pytest.raises(ValueError, match="sharded index"):
            action()


def test_embed_shards_equals_embed_with_shards(sharded, tmp_path, capsys):
    run, _, shards = sharded
    out = tmp_path / "other"
    assert main(["embed-shards", str(run), "--out", str(out), "--shard-size", "6", "--split", "test"]) == 0
    a, b = ShardSet(shards), ShardSet(out / "test")
    assert a.plan == b.plan
    for s in range(a.num_shards):
        assert np.array_equal(a.vectors(s), b.vectors(s))
    assert a.paths == b.paths
    capsys.readouterr()
    assert main(["embed", str(run), "--dtype", "float16"]) == 2
    assert "--dtype only apply with --shards" in capsys.readouterr().err


def test_shards_of_a_frozen_backbone_run_name_their_images(tmp_path):
    """A frozen backbone embeds from cached features; the shards still record each row's image file."""
    from tests.image_run import RUN_ARGS, make_image_folder

    folder = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    frozen = ["model.frozen=true", f"model.feature_cache={tmp_path / 'cache'}"]
    config = str(deepmetric.cli.demo_config_path())
    assert main(["train", config, *RUN_ARGS, *frozen, f"data.root={folder}", "--out", str(run)]) == 0
    assert main(["embed", str(run), "--shards", str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    shard_set = ShardSet(tmp_path / "shards" / "test")
    paths = shard_set.paths
    expected = sorted(str(p.resolve()) for c in TEST_CLASSES for p in (folder / c).glob("*.png"))
    assert sorted(paths) == expected
    assert [Path(p).parent.name for p in paths] == [TEST_CLASSES[label] for label in shard_set.all_labels()]
