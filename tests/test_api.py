"""deepmetric.load / load_index: embedding any kind of image input, image indexes, add/remove/save/load."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import deepmetric
from deepmetric.data import get_dataset
from deepmetric.data.transforms import build_transform
from deepmetric.retrieval import SEARCH_BACKENDS, Index
from deepmetric.training.embed import embed_dataset, load_model
from tests.image_run import CLASSES, PER_CLASS, make_image_run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return make_image_run(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def model(image_run):
    return deepmetric.load(image_run[0])


def test_embed_matches_the_training_pipeline(image_run, model):
    run, folder = image_run
    dataset = get_dataset("folder", root=folder, split="all")
    network = load_model(run)
    dataset.transform = build_transform(network.input_spec, train=False)
    expected = embed_dataset(network, dataset)
    np.testing.assert_allclose(model.embed(dataset, progress=False), expected, atol=1e-6)
    np.testing.assert_allclose(model.embed(folder, progress=False), expected, atol=1e-6)
    paths = [str(p) for p in dataset.paths[:3]]
    np.testing.assert_allclose(model.embed(paths, batch_size=2, progress=False), expected[:3], atol=1e-6)


def test_pil_images_and_arrays_embed_like_their_files(image_run, model):
    path = image_run[1] / "class_2" / "img_1.png"
    expected = model.embed(path, progress=False)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    for item in (Image.open(path), pixels, pixels.astype(np.float32) / 255, [pixels], pixels[None]):
        np.testing.assert_allclose(model.embed(item, progress=False), expected, atol=1e-6)
    grey = pixels.mean(-1).astype(np.uint8)
    assert model.embed(np.stack([grey, grey]), progress=False).shape == (2, 16)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (np.full((8, 8, 3), 1.5, dtype=np.float32), "0..1"),
        (np.zeros((8, 8, 3), dtype=np.int32), "uint8"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), "H x W"),
        ("no/such/image.png", "not found"),
        ([], "nothing to embed"),
        (42, "cannot embed"),
    ],
)
def test_bad_items_are_refused(model, items, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        model.embed(items, progress=False)


def test_a_corrupt_file_is_named(model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"broken\.png"):
        model.embed(broken, progress=False)


def test_each_gallery_image_finds_itself_first(image_run, model):
    folder = image_run[1]
    index = model.build_index(folder, progress=False)
    assert len(index) == CLASSES * PER_CLASS
    queries = sorted(folder.glob("class_*/img_0.png"))
    for query, result in zip(queries, index.search(queries, k=3)):
        assert result.query == str(query.resolve())
        first = result.hits[0]
        assert first.path == str(query.resolve()) and first.label == query.parent.name
        assert first.distance == pytest.approx(0, abs=1e-5)
        assert [h.distance for h in result.hits] == sorted(h.distance for h in result.hits)


def test_reported_distances_are_cosine_distances(image_run, model):
    folder = image_run[1]
    index = model.build_index(folder, progress=False)
    gallery = model.embed(folder, progress=False)
    query = folder / "class_5" / "img_3.png"
    vector = model.embed(query, progress=False)[0]
    cosine = gallery @ vector / np.linalg.norm(gallery, axis=1) / np.linalg.norm(vector)
    hits = index.search(query, k=len(index))[0].hits
    assert [h.distance for h in hits] == pytest.approx(np.sort(1 - cosine), abs=1e-5)


def test_flat_folders_give_unlabelled_indexes(image_run, model, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(image_run[1].glob("class_*/img_0.png")):
        (flat / f"{path.parent.name}.png").write_bytes(path.read_bytes())
    index = model.build_index(flat, progress=False)
    hit = index.search(flat / "class_3.png", k=1)[0].hits[0]
    assert hit.label is None and hit.path == str((flat / "class_3.png").resolve())
    (flat / "extra").mkdir()
    (flat / "extra" / "x.png").write_bytes((flat / "class_1.png").read_bytes())
    with pytest.raises(ValueError, match="both images and class sub-folders"):
        model.build_index(flat, progress=False)


def test_labelled_and_unlabelled_additions_do_not_mix(image_run, model):
    folder = image_run[1]
    index = model.build_index(folder / "class_0", labels=["zero"] * PER_CLASS, progress=False)
    with pytest.raises(ValueError, match="labelled"):
        index.add(folder / "class_1" / "img_0.png", progress=False)
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        index.add(folder / "class_1" / "img_0.png", labels=["a", "b"], progress=False)
    assert index.add(folder / "class_1" / "img_0.png", labels=["one"], progress=False) == 1
    assert index.search(folder / "class_1" / "img_0.png", 1)[0].hits[0].label == "one"


def test_index_round_trip_and_edits(image_run, model, tmp_path):
    folder = image_run[1]
    index = model.build_index(
        [folder / "class_0" / "img_0.png", folder / "class_1" / "img_0.png"], progress=False
    )
    assert index.add([folder / "class_2" / "img_0.png"], progress=False) == 1
    with pytest.raises(ValueError, match="already in the index"):
        index.add(folder / "class_2" / "img_0.png", progress=False)
    assert index.remove(folder / "class_1" / "img_0.png") == 1
    with pytest.raises(ValueError, match="not in the index"):
        index.remove(folder / "class_1" / "img_0.png")
    path = index.save(tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no staging folder left behind
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in path.iterdir())
    loaded = deepmetric.load_index(path)
    assert loaded.index.ids == index.index.ids and len(loaded) == 2
    query = folder / "class_2" / "img_0.png"
    assert loaded.search(query, 2)[0] == index.search(query, 2)[0]
    assert loaded.search(query, 1)[0].hits[0].path == str(query.resolve())
    # saving again replaces the index as a whole
    loaded.remove(query)
    loaded.save(path)
    assert len(deepmetric.load_index(path, model=model)) == 1


def test_an_index_refuses_another_model(image_run, model, tmp_path):
    index = model.build_index(image_run[1], progress=False)
    path = index.save(tmp_path / "index")
    other = deepmetric.load(image_run[0])
    other.fingerprint = "0123456789abcdef"
    with pytest.raises(ValueError, match="another model"):
        deepmetric.load_index(path, model=other)
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["model_fingerprint"] == model.fingerprint
    assert metadata["info"]["model"]["run"] == str(image_run[0].resolve())


def test_the_fingerprint_follows_the_weights(image_run, model):
    same = deepmetric.load(image_run[0])
    assert same.fingerprint == model.fingerprint
    with torch.no_grad():
        next(same.module.parameters()).add_(1e-3)
    from deepmetric.api import model_fingerprint

    assert model_fingerprint(same.module[1], same.spec) != model.fingerprint


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        deepmetric.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no index"):
        deepmetric.load_index(tmp_path)


@pytest.mark.parametrize("backend", ["faiss_flat", "faiss_hnsw", "faiss_ivf", "hamming"])
def test_other_backends_by_name(image_run, model, backend, tmp_path):
    if backend.startswith("faiss"):
        pytest.importorskip("faiss")
    elif backend not in SEARCH_BACKENDS:
        pytest.skip(f"no {backend} backend registered")
    params = {"nlist": 4, "nprobe": 4} if backend == "faiss_ivf" else {}
    folder = image_run[1]
    index = model.build_index(folder, backend=backend, progress=False, **params)
    query = folder / "class_4" / "img_2.png"
    if backend == "hamming":  # several images may share the query's code: it is among the distance-0 hits
        hits = index.search(query, len(index))[0].hits
        assert str(query.resolve()) in [hit.path for hit in hits if hit.distance == 0]
    else:
        assert index.search(query, 1)[0].hits[0].path == str(query.resolve())
    loaded = deepmetric.load_index(index.save(tmp_path / backend))
    assert loaded.index.backend_name == backend
    assert loaded.search(query, 3)[0] == index.search(query, 3)[0]


def test_index_remove_equals_a_fresh_build():
    rng = np.random.default_rng(0)
    vectors, labels = rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 4, 50)
    ids = [f"item{i}" for i in range(50)]
    index = Index.build(vectors, labels, ids)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    keep = np.asarray([i not in gone for i in ids])
    fresh = Index.build(vectors[keep], labels[keep], [i for i in ids if i not in gone])
    queries = rng.normal(size=(5, 6)).astype(np.float32)
    assert np.array_equal(index.search(queries, 7)[1], fresh.search(queries, 7)[1])
    assert index.ids == fresh.ids and np.array_equal(index.labels, fresh.labels)


def test_saving_over_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an index"):
        Index.build(np.eye(3, dtype=np.float32)).save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("num_queries", [40, 100])  # one query at a time, and knn's batched path
@pytest.mark.parametrize("distance", ["cosine", "dot", "euclidean", "squared_euclidean"])
def test_torch_backend_equals_knn_in_small_blocks(distance, num_queries):
    from deepmetric.retrieval.knn import knn

    rng = np.random.default_rng(1)
    gallery, queries = (
        rng.normal(size=(300, 8)).astype(np.float32),
        rng.normal(size=(40, 8)).astype(np.float32),
    )
    gallery[7] = gallery[3]  # a tie, broken by the lower index
    index = Index(8, distance, "torch", device="cpu", memory_budget_mb=0.01)  # a few query rows per block
    index.add(gallery[:100])
    index.add(gallery[100:])
    values, indices = index.search(queries, 6)
    expected_values, expected_indices = knn(queries, 6, gallery, distance, device="cpu")
    assert np.array_equal(indices, expected_indices.numpy())
    np.testing.assert_allclose(values, expected_values.numpy(), rtol=1e-5, atol=1e-5)
