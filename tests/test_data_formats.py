"""Every dataset reader on a tiny fixture written in tmp_path in the dataset's exact on-disk format."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepmetric.data import DATASETS, get_dataset

RNG = np.random.default_rng(0)


def write_image(path: Path, size: int = 6, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any image read fail, to prove labels come from the annotations alone."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr("deepmetric.data.base.load_image", refuse)
    monkeypatch.setattr(Image, "open", refuse)


# ---------------------------------------------------------------- CUB-200-2011


def make_cub(root: Path, images_per_class: tuple[int, ...] = (2, 3, 1, 2, 4)) -> Path:
    root.mkdir(parents=True)
    classes, images, labels = [], [], []
    image_id = 0
    for class_id, count in enumerate(images_per_class, start=1):
        name = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {name}")
        for k in range(count):
            image_id += 1
            relative = f"{name}/{name}_{k}.jpg"
            write_image(root / "images" / relative)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(f"{i} 1" for i in range(1, image_id + 1)) + "\n")
    return root


def test_cub_class_disjoint_halves_by_class_id(tmp_path, monkeypatch):
    root = make_cub(tmp_path / "CUB_200_2011")
    forbid_decoding(monkeypatch)
    train, test = get_dataset("cub200", root, "train"), get_dataset("cub200", root, "test")
    # 5 classes: 1-2 train (2+3 images), 3-5 test (1+2+4)
    assert len(train) == 5 and len(test) == 7
    assert train.labels.tolist() == [0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert train.class_names == ["001.Bird_1", "002.Bird_2"]
    assert test.class_names[0] == "003.Bird_3" and test.class_ids.tolist() == [3, 4, 5]
    assert train.labels.dtype == np.int64


def test_cub_reads_images_and_accepts_the_extraction_folder(tmp_path):
    make_cub(tmp_path / "CUB_200_2011")
    dataset = get_dataset("cub200", tmp_path, "test", transform=lambda image: image.size)
    assert dataset[0] == ((6, 6), 0)


def test_cub_errors_name_the_missing_file(tmp_path):
    root = make_cub(tmp_path / "cub")
    with pytest.raises(FileNotFoundError, match=r"not found: .*nowhere"):
        get_dataset("cub200", tmp_path / "nowhere")
    (root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt"):
        get_dataset("cub200", root)
    root = make_cub(tmp_path / "cub2")
    (root / "images" / "001.Bird_1" / "001.Bird_1_0.jpg").unlink()
    dataset = get_dataset("cub200", root)
    with pytest.raises(FileNotFoundError, match=r"Bird_1_0\.jpg"):
        dataset[0]
    with pytest.raises(ValueError, match="splits"):
        get_dataset("cub200", root, "val")


# ---------------------------------------------------------------- Cars196


def make_cars(root: Path, classes: int = 6, per_class: int = 2) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True)
    dtype = [("relative_im_path", object), ("bbox_x1", object), ("class", object), ("test", object)]
    annotations = np.zeros((1, classes * per_class), dtype=dtype)
    for index in range(classes * per_class):
        relative = f"car_ims/{index + 1:06d}.jpg"
        write_image(root / relative)
        annotations[0, index] = (relative, 1, index // per_class + 1, index % 2)
    names = np.array([f"Car model {c}" for c in range(1, classes + 1)], dtype=object)
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names.reshape(1, -1)})
    return root


def test_cars196_first_half_of_classes_trains(tmp_path, monkeypatch):
    root = make_cars(tmp_path / "cars")
    forbid_decoding(monkeypatch)
    train, test = get_dataset("cars196", root, "train"), get_dataset("cars196", root, "test")
    assert len(train) == len(test) == 6
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] == test.labels.tolist()
    assert train.class_names == ["Car model 1", "Car model 2", "Car model 3"]
    assert test.class_names == ["Car model 4", "Car model 5", "Car model 6"]
    assert test.paths[0].name == "000007.jpg"


def test_cars196_missing_annotation_names_the_file(tmp_path):
    (tmp_path / "cars").mkdir()
    with pytest.raises(FileNotFoundError, match=r"cars_annos\.mat"):
        get_dataset("cars196", tmp_path / "cars")


# ---------------------------------------------------------------- Stanford Online Products


def make_sop(root: Path) -> Path:
    root.mkdir(parents=True)
    header = "image_id class_id super_class_id path\n"
    train = [
        (1, 1, 1, "bicycle_final/111_0.JPG"),
        (2, 1, 1, "bicycle_final/111_1.JPG"),
        (3, 3, 2, "chair_final/333_0.JPG"),
    ]
    test = [
        (4, 7, 2, "chair_final/777_0.JPG"),
        (5, 9, 1, "bicycle_final/999_0.JPG"),
        (6, 9, 1, "bicycle_final/999_1.JPG"),
    ]
    for name, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        (root / name).write_text(header + "".join(" ".join(map(str, r)) + "\n" for r in rows))
        for row in rows:
            write_image(root / row[3])
    return root


def test_sop_official_split_with_super_classes(tmp_path, monkeypatch):
    root = make_sop(tmp_path / "Stanford_Online_Products")
    forbid_decoding(monkeypatch)
    train, test = get_dataset("sop", root, "train"), get_dataset("sop", tmp_path, "test")
    assert train.labels.tolist() == [0, 0, 1] and train.class_names == ["1", "3"]
    assert test.labels.tolist() == [0, 1, 1] and test.class_names == ["7", "9"]
    assert test.super_labels.tolist() == [1, 0, 0] and test.super_class_names == ["bicycle", "chair"]


def test_sop_missing_list_names_it(tmp_path):
    root = make_sop(tmp_path / "sop")
    (root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"Ebay_test\.txt"):
        get_dataset("sop", root, "test")


# ---------------------------------------------------------------- In-Shop


def make_inshop(root: Path, under_eval: bool = True) -> Path:
    rows = [
        ("img/MEN/Tees/id_00000001/01_1_front.jpg", "id_00000001", "train"),
        ("img/MEN/Tees/id_00000001/01_2_side.jpg", "id_00000001", "train"),
        ("img/MEN/Tees/id_00000004/01_1_front.jpg", "id_00000004", "train"),
        ("img/WOMEN/Dresses/id_00000002/01_1_front.jpg", "id_00000002", "query"),
        ("img/WOMEN/Dresses/id_00000003/01_1_front.jpg", "id_00000003", "query"),
        ("img/WOMEN/Dresses/id_00000003/01_2_side.jpg", "id_00000003", "gallery"),
        ("img/WOMEN/Dresses/id_00000002/01_2_side.jpg", "id_00000002", "gallery"),
        ("img/WOMEN/Dresses/id_00000005/01_2_side.jpg", "id_00000005", "gallery"),
    ]
    partition = root / ("Eval" if under_eval else "") / "list_eval_partition.txt"
    partition.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows)), "image_name item_id evaluation_status"] + [" ".join(r) for r in rows]
    partition.write_text("\n".join(lines) + "\n")
    for row in rows:
        write_image(root / "Img" / row[0])
    return root


def test_inshop_query_and_gallery_share_labels(tmp_path, monkeypatch):
    root = make_inshop(tmp_path / "inshop")
    forbid_decoding(monkeypatch)
    train = get_dataset("inshop", root, "train")
    query, gallery = get_dataset("inshop", root, "query"), get_dataset("inshop", root, "gallery")
    assert train.labels.tolist() == [0, 0, 1] and train.class_names == ["id_00000001", "id_00000004"]
    assert query.class_names == gallery.class_names == ["id_00000002", "id_00000003", "id_00000005"]
    assert query.labels.tolist() == [0, 1] and gallery.labels.tolist() == [1, 0, 2]
    assert query.paths[0] == root / "Img" / "img/WOMEN/Dresses/id_00000002/01_1_front.jpg"


def test_inshop_images_are_found_and_bad_split_rejected(tmp_path):
    root = make_inshop(tmp_path / "inshop", under_eval=False)
    assert get_dataset("inshop", root, "gallery", transform=np.asarray)[0][0].shape == (6, 6, 3)
    with pytest.raises(ValueError, match="query"):
        get_dataset("inshop", root, "test")
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition\.txt"):
        get_dataset("inshop", tmp_path)


# ---------------------------------------------------------------- CIFAR


def cifar_rows(labels: list[int]) -> np.ndarray:
    return RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8)


def make_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):
        labels = [(2 * index + k) % 10 for k in range(4)]
        batch = {"batch_label": f"training batch {index} of 5", "labels": labels, "data": cifar_rows(labels)}
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch))
    labels = list(range(10))
    (folder / "test_batch").write_bytes(pickle.dumps({"labels": labels, "data": cifar_rows(labels)}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": 4}))
    return root


def test_cifar10_official_splits_and_pixel_layout(tmp_path):
    root = make_cifar10(tmp_path)
    train, test = (
        get_dataset("cifar10", root, "train"),
        get_dataset("cifar10", root / "cifar-10-batches-py", "test"),
    )
    assert len(train) == 20 and len(test) == 10 and test.num_classes == 10
    assert test.class_names[3] == "cat" and test.labels.tolist() == list(range(10))
    batch = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())
    image = np.asarray(test[4][0])
    assert image.shape == (32, 32, 3)
    # the row holds the red plane, then green, then blue
    assert image[0, 1, 0] == batch["data"][4][1] and image[0, 0, 2] == batch["data"][4][2048]


def test_cifar10_class_disjoint(tmp_path):
    root = make_cifar10(tmp_path)
    train = get_dataset("cifar10", root, "train", class_disjoint=True)
    test = get_dataset("cifar10", root, "test", class_disjoint=True)
    assert train.class_names == ["airplane", "automobile", "bird", "cat", "deer"]
    assert test.class_names == ["dog", "frog", "horse", "ship", "truck"] and test.labels.tolist() == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert train.labels.max() == 4


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine, coarse = [5, 60, 99, 5], [1, 2, 19, 1]
    for split in ("train", "test"):
        batch = {
            "fine_labels": fine,
            "coarse_labels": coarse,
            "data": cifar_rows(fine),
            "filenames": ["a"] * 4,
        }
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    train = get_dataset("cifar100", tmp_path, "train")
    assert train.labels.tolist() == [0, 1, 2, 0] and train.class_names == ["fine5", "fine60", "fine99"]
    assert train.super_labels.tolist() == coarse and len(train.super_class_names) == 20
    test = get_dataset("cifar100", tmp_path, "test", class_disjoint=True)
    assert test.class_names == ["fine60", "fine99"] and test.super_labels.tolist() == [2, 19]
    (folder / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta"):
        get_dataset("cifar100", tmp_path, "train")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(content)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_idx_files(tmp_path, gzipped):
    raw = tmp_path / "MNIST" / "raw"
    images = RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    write_idx(raw / "train-images-idx3-ubyte", images, gzipped)
    write_idx(raw / "train-labels-idx1-ubyte", labels, gzipped)
    write_idx(raw / "t10k-images-idx3-ubyte", images[:5], gzipped)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[:5] + 5, gzipped)
    train = get_dataset("mnist", tmp_path, "train")
    assert len(train) == 12 and train.labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(np.asarray(train[3][0]), images[3])
    test = get_dataset("mnist", tmp_path, "test", class_disjoint=True)
    assert test.labels.tolist() == [0, 1, 2, 3, 4] and test.class_names == ["5", "6", "7", "8", "9"]


def test_fashion_mnist_names_and_bad_file(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), gzipped=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 9, 9]), gzipped=True)
    test = get_dataset("fashion_mnist", tmp_path, "test")
    assert test.class_names == ["T-shirt/top", "Ankle boot"] and test.labels.tolist() == [0, 1, 1]
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        get_dataset("fashion_mnist", tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        get_dataset("fashion_mnist", tmp_path, "train")


# ---------------------------------------------------------------- Omniglot


def make_omniglot(root: Path) -> Path:
    layout = {"images_background": {"Greek": 2, "Latin": 1}, "images_evaluation": {"Atlantean": 3}}
    for folder, alphabets in layout.items():
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for drawer in (1, 2):
                    write_image(
                        root / folder / alphabet / f"character{c:02d}" / f"07{c}_{drawer:02d}.png", 8, "1"
                    )
    return root


def test_omniglot_background_trains_evaluation_tests(tmp_path, monkeypatch):
    root = make_omniglot(tmp_path)
    train = get_dataset("omniglot", root, "train")
    assert train.class_names == ["Greek/character01", "Greek/character02", "Latin/character01"]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and train.super_labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert train[0][0].size == (8, 8)
    forbid_decoding(monkeypatch)
    test = get_dataset("omniglot", root, "test")
    assert test.num_classes == 3 and test.super_class_names == ["Atlantean"]
    with pytest.raises(FileNotFoundError, match="images_background"):
        get_dataset("omniglot", root / "images_evaluation", "train")


# ---------------------------------------------------------------- folder


def make_folder(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cat", "dog", "eel")) -> Path:
    for index, name in enumerate(classes):
        for k in range(index + 1):
            write_image(root / name / f"{k}.png")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def test_folder_class_disjoint_rule(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "photos")
    forbid_decoding(monkeypatch)
    # "ant" holds a single image: accepted with min_images=1 only (see test_errors.py)
    train, test = (get_dataset("folder", root, split, min_images=1) for split in ("train", "test"))
    assert train.class_names == ["ant", "bee"] and train.labels.tolist() == [0, 1, 1]
    assert test.class_names == ["cat", "dog", "eel"] and len(test) == 3 + 4 + 5
    assert len(get_dataset("folder", root, "all", min_images=1)) == 15
    with pytest.raises(ValueError, match="neither a sub-folder"):
        get_dataset("folder", root, "validation", min_images=1)


def test_folder_split_subfolders(tmp_path):
    make_folder(tmp_path / "data" / "train", ("a", "b"))
    make_folder(tmp_path / "data" / "test", ("c", "d", "e"))
    test = get_dataset("folder", tmp_path / "data", "test", min_images=1)
    assert test.class_names == ["c", "d", "e"] and test.labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert test[0][1] == 0 and test[0][0].mode == "RGB"


# ---------------------------------------------------------------- csv


def test_csv_with_header_and_split_column(tmp_path, monkeypatch):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(tmp_path / "imgs" / name)
    (tmp_path / "list.csv").write_text(
        "path,label,split\nimgs/a.jpg,10,train\nimgs/b.jpg,2,train\nimgs/c.jpg,10,test\nimgs/d.jpg,7,test\n"
    )
    forbid_decoding(monkeypatch)
    train = get_dataset("csv", tmp_path / "list.csv", "train")
    assert train.class_names == ["2", "10"] and train.labels.tolist() == [1, 0]  # numeric order
    assert train.paths[0] == tmp_path / "imgs" / "a.jpg"
    test = get_dataset("csv", tmp_path / "list.csv", "test")
    assert test.class_names == ["7", "10"] and test.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no row with split 'val'"):
        get_dataset("csv", tmp_path / "list.csv", "val")


def test_csv_tsv_without_header_and_class_disjoint(tmp_path):
    rows = [f"x/{i}.png\t{name}" for i, name in enumerate(["owl", "cat", "owl", "dog", "ant"])]
    (tmp_path / "all.tsv").write_text("\n".join(rows) + "\n")
    for i in range(5):
        write_image(tmp_path / "x" / f"{i}.png")
    train = get_dataset("csv", tmp_path / "all.tsv", "train")
    test = get_dataset("csv", tmp_path / "all.tsv", "test")
    assert train.class_names == ["ant", "cat"] and train.labels.tolist() == [1, 0]
    assert test.class_names == ["dog", "owl"] and test.labels.tolist() == [1, 1, 0]
    assert test[2][1] == 0 and test[2][0].size == (6, 6)


def test_csv_per_split_files_and_errors(tmp_path):
    (tmp_path / "train.csv").write_text("image,class\nm.png,0\n")
    dataset = get_dataset("csv", tmp_path, "train")
    assert dataset.labels.tolist() == [0] and dataset.paths == [tmp_path / "m.png"]
    with pytest.raises(FileNotFoundError, match=r"m\.png"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match=r"test\.csv"):
        get_dataset("csv", tmp_path, "test")
    (tmp_path / "bad.csv").write_text("a.png\nb.png,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1"):
        get_dataset("csv", tmp_path / "bad.csv", "all")


# ---------------------------------------------------------------- npz


def test_npz_single_file_class_disjoint(tmp_path):
    images = RNG.integers(0, 256, (8, 5, 5), dtype=np.uint8)
    labels = np.array([3, 0, 1, 2, 3, 0, 1, 2])
    np.savez(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["w", "x", "y", "z"]))
    train, test = (
        get_dataset("npz", tmp_path / "d.npz", "train"),
        get_dataset("npz", tmp_path / "d.npz", "test"),
    )
    assert train.class_names == ["w", "x"] and train.labels.tolist() == [0, 1, 0, 1]
    assert test.class_names == ["y", "z"] and test.labels.tolist() == [1, 0, 1, 0]
    np.testing.assert_array_equal(np.asarray(test[0][0]), images[0])
    assert len(get_dataset("npz", tmp_path / "d.npz", "all")) == 8


def test_npz_separate_files_and_errors(tmp_path):
    np.savez(tmp_path / "bg.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([5, 6]))
    dataset = get_dataset("npz", tmp_path, "train", splits={"train": "bg.npz"})
    assert dataset.class_names == ["5", "6"] and dataset.labels.tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match=r"test\.npz"):
        get_dataset("npz", tmp_path, "test")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="'labels'"):
        get_dataset("npz", tmp_path / "nolabels.npz", "all")


def test_every_registered_reader_is_covered():
    assert {
        "cub200",
        "cars196",
        "sop",
        "inshop",
        "cifar10",
        "cifar100",
        "mnist",
        "fashion_mnist",
        "omniglot",
    } <= set(DATASETS.names())
    assert {"folder", "csv", "npz"} <= set(DATASETS.names())
