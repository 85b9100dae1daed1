"""The readers on the shared real data, unchanged on disk (skipped when /work/shared is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepmetric.data import get_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CUB = SHARED / "CUB_100_subset"


@pytest.mark.skipif(not CUB.is_dir(), reason="shared CUB_100_subset not present")
def test_cub_subset_metric_learning_split():
    train, test = get_dataset("cub200", CUB, "train"), get_dataset("cub200", CUB, "test")
    assert (len(train), len(test)) == (2949, 2953)
    assert train.num_classes == test.num_classes == 50
    assert train.labels.min() == 0 and train.labels.max() == 49 and test.labels.max() == 49
    assert train.class_names[0] == "001.Black_footed_Albatross" and not set(train.class_names) & set(
        test.class_names
    )
    image, label = test[len(test) - 1]
    assert image.size == (227, 227) and image.mode == "RGB" and label == 49


@pytest.mark.skipif(not (SHARED / "omniglot_background.npz").is_file(), reason="shared omniglot not present")
def test_omniglot_npz_as_separate_split_files():
    files = {"train": "omniglot_background.npz", "test": "omniglot_evaluation.npz"}
    test = get_dataset("npz", SHARED, "test", splits=files)
    assert len(test) == 13180 and test.num_classes == 659
    assert np.bincount(test.labels).min() == 20 and "/" in test.class_names[0]
