"""Download, verify and extract the public datasets from their official addresses.

``download(name, root)`` fetches every file of ``SOURCES[name]`` into ``root`` (trying mirrors in
order), checks its published md5 / sha256, and unpacks archives into ``root``, so that
``get_dataset(name, root)`` reads the result. Files already present with the right checksum are not
fetched again. In-Shop has no public direct link (Google Drive behind a form): :data:`MANUAL` says
what to fetch by hand.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from deepmetric.io import atomic_path


@dataclass(frozen=True)
class Resource:
    """One file to fetch: mirror URLs tried in order, its name in ``root``, ``"md5:<hex>"`` or
    ``"sha256:<hex>"``, and whether it is an archive to unpack into ``root``."""

    urls: tuple[str, ...]
    filename: str
    checksum: str
    extract: bool = True


def _mnist_like(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[Resource, ...]:
    # the gzipped IDX files are read as they are: nothing to unpack
    return tuple(
        Resource(tuple(m + name for m in mirrors), name, f"md5:{md5}", extract=False)
        for name, md5 in md5s.items()
    )


SOURCES: dict[str, tuple[Resource, ...]] = {
    "cub200": (
        Resource(
            ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",),
            "CUB_200_2011.tgz",
            "md5:97eceeb196236b17998738112f37df78",
        ),
    ),
    "cars196": (
        Resource(
            ("http://ai.stanford.edu/~jkrause/car196/car_ims.tgz",),
            "car_ims.tgz",
            "md5:d5c8f0aa497503f355e17dc7886c3f14",
        ),
        Resource(
            ("http://ai.stanford.edu/~jkrause/car196/cars_annos.mat",),
            "cars_annos.mat",
            "md5:b407c6086d669747186bd1d764ff9dbc",
            extract=False,
        ),
    ),
    "sop": (
        Resource(
            (
                "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            ),
            "Stanford_Online_Products.zip",
            "md5:7f73d41a2f44250d4779881525aea32e",
        ),
    ),
    "cifar10": (
        Resource(
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            "cifar-10-python.tar.gz",
            "md5:c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "cifar100": (
        Resource(
            ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            "cifar-100-python.tar.gz",
            "md5:eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    "mnist": _mnist_like(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": _mnist_like(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "omniglot": tuple(
        Resource(
            (f"https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip",),
            f"{name}.zip",
            f"md5:{md5}",
        )
        for name, md5 in (
            ("images_background", "68d2efa1b9178cc56df9314c21c6e718"),
            ("images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811"),
        )
    ),
}

MANUAL: dict[str, str] = {
    "inshop": (
        "In-Shop Clothes Retrieval has no public direct download: from "
        "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html (Google Drive) fetch "
        "Img/img.zip and Eval/list_eval_partition.txt, unzip img.zip into ROOT and put "
        "list_eval_partition.txt in ROOT"
    ),
}


def file_checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """Raise ``ValueError`` naming the file when its ``"md5:..."`` / ``"sha256:..."`` checksum differs."""
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not expected:
        raise ValueError(f"checksum must be 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    actual = file_checksum(path, algorithm)
    if actual != expected.lower():
        raise ValueError(f"{path}: {algorithm} is {actual}, expected {expected} (corrupt or wrong download)")


def fetch(url: str, destination: Path) -> None:
    """Copy ``url`` (http, https, ftp or file) to ``destination`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def extract(archive: Path, root: Path) -> None:
    """Unpack a .zip / .tar / .tar.gz / .tgz into ``root``, refusing members that leave it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            target = root.resolve()
            for member in zipped.namelist():
                if not (target / member).resolve().is_relative_to(target):
                    raise ValueError(f"{archive}: member {member!r} would be written outside {root}")
            zipped.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")  # "data" refuses absolute paths, links out, devices
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")


def _fetch_verified(resource: Resource, root: Path) -> Path:
    target = root / resource.filename
    if target.is_file():
        try:
            verify(target, resource.checksum)
            return target
        except ValueError:
            target.unlink()  # a partial or corrupt earlier download
    errors = []
    for url in resource.urls:
        try:
            with atomic_path(target, suffix=".part") as temporary:
                fetch(url, temporary)
                verify(temporary, resource.checksum)
            return target
        except (OSError, ValueError) as error:
            errors.append(f"{url}: {error}")
    raise OSError(f"could not download {resource.filename}:\n  " + "\n  ".join(errors))


def download(name: str, root: str | Path, keep_archives: bool = True) -> Path:
    """Fetch, verify and unpack dataset ``name`` into ``root``; returns ``root`` for ``get_dataset``."""
    if name in MANUAL:
        raise ValueError(MANUAL[name].replace("ROOT", str(root)))
    if name not in SOURCES:
        raise ValueError(f"no download source for dataset {name!r}; downloadable: {sorted(SOURCES)}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for resource in SOURCES[name]:
        path = _fetch_verified(resource, root)
        if resource.extract:
            extract(path, root)
            if not keep_archives:
                path.unlink()
    return root


__all__ = ["MANUAL", "SOURCES", "Resource", "download", "extract", "fetch", "verify"]
