"""download(): fetch from a local file:// URL, checksum verification, extraction, mirrors, manual datasets."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepmetric.data import download as dl
from deepmetric.data import get_dataset


def make_cifar10_archive(path: Path) -> str:
    """A real-format cifar-10-python.tar.gz with 2 images per batch; returns its md5."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, content: dict) -> None:
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {"labels": [1, 8], "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)})
        add("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_extracts_a_file_url(tmp_path, monkeypatch):
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    md5 = make_cifar10_archive(archive)
    resource = dl.Resource((archive.as_uri(),), "cifar-10-python.tar.gz", f"md5:{md5}")
    monkeypatch.setitem(dl.SOURCES, "cifar10", (resource,))
    root = dl.download("cifar10", tmp_path / "data")
    dataset = get_dataset("cifar10", root, "test")
    assert len(dataset) == 2 and dataset.class_names == ["class1", "class8"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary left

    calls = []
    monkeypatch.setattr(dl, "fetch", lambda url, destination: calls.append(url))
    dl.download("cifar10", root)  # archive present with the right checksum: nothing fetched
    assert calls == []


def test_checksum_mismatch_is_refused_and_mirrors_are_tried(tmp_path, monkeypatch):
    payload = tmp_path / "labels.gz"
    payload.write_bytes(b"real bytes")
    sha = hashlib.sha256(b"real bytes").hexdigest()
    tried = []

    def fake_fetch(url: str, destination: Path) -> None:
        tried.append(url)
        destination.write_bytes(b"corrupt" if "bad-mirror" in url else payload.read_bytes())

    monkeypatch.setattr(dl, "fetch", fake_fetch)
    good = dl.Resource(
        ("https://bad-mirror/x.gz", "https://good-mirror/x.gz"), "x.gz", f"sha256:{sha}", False
    )
    monkeypatch.setitem(dl.SOURCES, "mnist", (good,))
    dl.download("mnist", tmp_path / "root")
    assert tried == ["https://bad-mirror/x.gz", "https://good-mirror/x.gz"]
    assert (tmp_path / "root" / "x.gz").read_bytes() == b"real bytes"

    bad = dl.Resource(("https://bad-mirror/y.gz",), "y.gz", f"sha256:{sha}", False)
    monkeypatch.setitem(dl.SOURCES, "mnist", (bad,))
    with pytest.raises(OSError, match=r"sha256 is .* expected"):
        dl.download("mnist", tmp_path / "root")
    assert not (tmp_path / "root" / "y.gz").exists()


def test_zip_extraction_refuses_paths_outside_root(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        dl.extract(archive, tmp_path / "root")


def test_unknown_and_manual_datasets():
    with pytest.raises(ValueError, match="no download source"):
        dl.download("imagenet", "/tmp/x")
    with pytest.raises(ValueError, match="list_eval_partition"):
        dl.download("inshop", "/tmp/x")


def test_official_sources_carry_checksums():
    assert {"cub200", "cars196", "sop", "cifar10", "cifar100", "mnist", "fashion_mnist", "omniglot"} <= set(
        dl.SOURCES
    )
    for resources in dl.SOURCES.values():
        for resource in resources:
            algorithm, _, digest = resource.checksum.partition(":")
            assert algorithm in ("md5", "sha256") and len(digest) == {"md5": 32, "sha256": 64}[algorithm]
            assert all(url.startswith(("https://", "http://", "ftp://")) for url in resource.urls)
    assert dl.SOURCES["cifar10"][0].checksum == "md5:c58f30108f718f92721af3b95e74349a"
