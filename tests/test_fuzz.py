"""Hypothesis fuzzing of what users type and feed: config overrides and the CSV, folder and npz readers.

Whatever the input, the only exceptions that may escape are the user-error types the command line reports
in one line (exit status 2): ``ConfigError`` for configs, ``ValueError``/``OSError`` for data files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deepmetric.data import get_dataset  # noqa: E402
from deepmetric.training.config import ConfigError, load_config  # noqa: E402

USER_ERRORS = (ValueError, OSError)  # ConfigError is a ValueError
SETTINGS = settings(
    max_examples=int(os.environ.get("DEEPMETRIC_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KEYS = [
    "name",
    "seed",
    "data.name",
    "data.root",
    "data.options",
    "data.validation_classes",
    "model.backbone",
    "model.embedding_size",
    "model.backbone_options",
    "model.pooling",
    "loss",
    "loss.name",
    "loss.margin",
    "loss.alpha",
    "miner",
    "miner.name",
    "miner.margin",
    "sampler.classes_per_batch",
    "sampler.mode",
    "optimizer.lr",
    "train.iterations",
    "train.best_metric",
    "eval.metrics",
    "eval.distance",
    "ensemble",
    "ensemble.size",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "2.5",
            "1e-4",
            "nan",
            "true",
            "null",
            "[]",
            "{}",
            "[recall@1]",
            "triplet",
            "abc",
            "{a: 1}",
            "~nouser/x",
        ]
    ),
    st.text(max_size=12),
)
OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUES),
    st.text(max_size=20),  # anything at all, "=" or not
)


@SETTINGS
@given(st.lists(OVERRIDE, max_size=4))
def test_config_overrides_raise_only_config_errors(overrides):
    with contextlib.suppress(ConfigError):
        load_config(None, overrides)


CSV_CELLS = st.sampled_from(
    ["path", "label", "split", "train", "test", "a.png", "b.png", "1", "nan", "", "x y"]
)
CSV_ROWS = st.lists(st.lists(st.one_of(CSV_CELLS, st.text(max_size=6)), max_size=4), max_size=6)


@SETTINGS
@given(
    CSV_ROWS,
    st.sampled_from([",", "\t", ";"]),
    st.sampled_from(["train", "test", "all", "query"]),
    st.one_of(st.none(), st.binary(max_size=30)),
)
def test_csv_reader_raises_only_user_errors(rows, delimiter, split, raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.csv"
        if raw is None:
            path.write_text("\n".join(delimiter.join(row) for row in rows))
        else:  # bytes that need not be text at all
            path.write_bytes(raw)
        with contextlib.suppress(USER_ERRORS):
            get_dataset("csv", path, split)


CLASS_NAME = st.text(alphabet="abcxyz_.-0", min_size=1, max_size=5).filter(lambda n: n not in (".", ".."))


@SETTINGS
@given(
    st.dictionaries(CLASS_NAME, st.tuples(st.integers(0, 3), st.booleans()), max_size=5),
    st.sampled_from(["train", "test", "all", "query"]),
    st.one_of(st.integers(-1, 3), st.just(True), st.just("2")),
)
def test_folder_reader_raises_only_user_errors(classes, split, min_images):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, (count, with_text_file) in classes.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                (root / name / f"{k}.png").write_bytes(b"")  # names are listed, never decoded here
            if with_text_file:
                (root / name / "notes.txt").write_text("not an image")
        with contextlib.suppress(USER_ERRORS):
            get_dataset("folder", root, split, min_images=min_images)


ARRAYS = st.fixed_dictionaries(
    {},
    optional={
        "images": st.sampled_from(
            [
                np.zeros((4, 8, 8), np.uint8),
                np.zeros((4, 8, 8, 3), np.uint8),
                np.zeros((3, 8, 8), np.uint8),
                np.zeros((4, 8), np.uint8),
                np.zeros((4, 8, 8), np.float32),
            ]
        ),
        "labels": st.sampled_from(
            [
                np.array([0, 1, 2, 3]),
                np.array([0, 0, 1, 1]),
                np.array([0.0, 1.0, np.nan, 3.0]),
                np.array([0.5, 1, 2, 3]),
                np.array(["a", "b", "c", "d"]),
                np.array([-1, 0, 1, 9]),
                np.zeros((0,), np.int64),
                np.array([[0, 1], [2, 3]]),
            ]
        ),
        "class_names": st.sampled_from([np.array(["a", "b"]), np.array(["a", "b", "c", "d", "e"])]),
    },
)


@SETTINGS
@given(ARRAYS, st.sampled_from(["train", "test", "all", "query"]), st.binary(max_size=40), st.booleans())
def test_npz_reader_raises_only_user_errors(arrays, split, garbage, write_garbage):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npz"
        if write_garbage:
            path.write_bytes(garbage)
        else:
            np.savez(path, **arrays)
        with contextlib.suppress(USER_ERRORS):
            get_dataset("npz", path, split)
