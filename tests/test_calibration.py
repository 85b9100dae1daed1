"""Match thresholds (deepmetric.evaluation.calibration) against brute force, and calibrate/match of an index."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import deepmetric
from deepmetric.evaluation.calibration import as_distance, choose_threshold, pair_distances, roc_points
from tests.image_run import make_image_run


def pairs(n: int = 300, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    is_same = rng.random(n) < 0.3
    distances = rng.normal(np.where(is_same, 0.4, 0.9), 0.25)
    return (np.round(distances, 1) if ties else distances), is_same


def brute_force(distances, is_same, precision=None, far=None):
    """Try every observed distance as the threshold (matches: distance <= threshold); keep the largest one
    meeting the target."""
    best = None
    for t in np.unique(distances):
        accepted = distances <= t
        if precision is not None:
            ok = is_same[accepted].mean() >= precision
        else:
            ok = (accepted & ~is_same).sum() / (~is_same).sum() <= far
        if ok:
            best = t
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_brute_force(seed, ties):
    distances, is_same = pairs(seed=seed, ties=ties)
    for target in (0.5, 0.8, 0.95):
        expected = brute_force(distances, is_same, precision=target)
        if expected is None:  # with coarse ties even the closest pairs can be too mixed
            with pytest.raises(ValueError, match="no threshold reaches"):
                choose_threshold(distances, is_same, target_precision=target)
            continue
        chosen = choose_threshold(distances, is_same, target_precision=target)
        assert chosen.threshold == expected
        accepted = distances <= chosen.threshold
        assert chosen.precision == pytest.approx(is_same[accepted].mean())
        assert chosen.recall == pytest.approx(accepted[is_same].mean())
        assert chosen.precision >= target
    for target in (0.0, 0.01, 0.1, 0.5):
        expected = brute_force(distances, is_same, far=target)
        if expected is None:
            with pytest.raises(ValueError, match="every threshold exceeds"):
                choose_threshold(distances, is_same, target_false_match_rate=target)
            continue
        chosen = choose_threshold(distances, is_same, target_false_match_rate=target)
        assert chosen.threshold == expected
        assert chosen.false_match_rate == pytest.approx((distances[~is_same] <= chosen.threshold).mean())
        assert chosen.false_match_rate <= target


def test_unreachable_targets_and_bad_input_are_refused():
    distances, is_same = np.array([0.1, 0.2, 0.3]), np.array([False, True, True])
    with pytest.raises(ValueError, match="no threshold reaches precision"):
        choose_threshold(distances, is_same, target_precision=0.9)
    with pytest.raises(ValueError, match="every threshold exceeds"):
        choose_threshold(distances, is_same, target_false_match_rate=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(distances, is_same)
    with pytest.raises(ValueError, match="both same-class and different-class"):
        choose_threshold(distances, np.ones(3, bool), target_precision=0.5)
    with pytest.raises(ValueError, match="finite"):
        choose_threshold(np.array([0.1, np.nan, 0.3]), is_same, target_precision=0.5)


def test_roc_points_count_accepted_pairs():
    distances, is_same = pairs(50, ties=True)
    far, tar, thresholds = roc_points(distances, is_same)
    for f, t, threshold in zip(far, tar, thresholds):
        assert f == pytest.approx((distances[~is_same] <= threshold).mean())
        assert t == pytest.approx((distances[is_same] <= threshold).mean())
    assert tar[-1] == far[-1] == 1


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "dot"])
def test_pair_distances_enumerate_every_pair(distance):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, 9)
    distances, is_same, *_ = pair_distances(x, labels, distance)
    expected = []
    for i, j in itertools.combinations(range(9), 2):
        if distance == "cosine":
            value = 1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        elif distance == "dot":
            value = -(x[i] @ x[j])
        else:
            value = np.linalg.norm(x[i] - x[j])
        expected.append((value, labels[i] == labels[j]))
    assert distances == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert list(is_same) == [e[1] for e in expected]
    assert as_distance(np.array([1.0000001]), "cosine")[0] == 0


def test_calibrate_and_match_an_index(tmp_path):
    run, folder = make_image_run(tmp_path)
    model = deepmetric.load(run)
    index = model.build_index(folder, progress=False)
    with pytest.raises(ValueError, match="calibrate it first"):
        index.match(folder / "class_0" / "img_0.png")
    with pytest.raises(ValueError, match="no validation split"):
        index.calibrate(target_precision=0.9)
    chosen = index.calibrate(folder, target_false_match_rate=0.05, progress=False)
    vectors = model.embed(folder, progress=False)
    labels = np.repeat(np.arange(8), 4)
    distances, is_same, *_ = pair_distances(vectors, labels, "cosine")
    assert chosen.threshold == brute_force(distances, is_same, far=0.05)
    stored = deepmetric.load_index(index.save(tmp_path / "index")).index.info["calibration"]
    assert stored["threshold"] == chosen.threshold and stored["data"] == str(folder.resolve())
    queries = [folder / "class_1" / "img_0.png", folder / "class_6" / "img_2.png"]
    for query, decision, result in zip(queries, index.match(queries), index.search(queries, 1)):
        assert decision is not None and decision.label == query.parent.name  # each query is in the gallery
        assert result.hits[0].distance <= chosen.threshold
    index.index.info["calibration"]["threshold"] = -1.0  # nothing is that close
    assert index.match(queries) == [None, None]


def test_calibration_defaults_to_the_runs_validation_classes(tmp_path):
    from deepmetric.cli import demo_config_path, main
    from tests.image_run import RUN_ARGS, make_image_folder

    folder = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    extra = ["data.validation_classes=0.5", "sampler.classes_per_batch=2", f"data.root={folder}"]
    assert main(["train", str(demo_config_path()), *RUN_ARGS, *extra, "--out", str(run)]) == 0
    model = deepmetric.load(run)
    validation = model.run_dataset("validation")
    assert len(validation) == 2 * 4 and len(np.unique(validation.labels)) == 2  # half of the 4 train classes
    test_classes = set(model.run_dataset("test").class_names)
    assert not test_classes & {validation.class_names[i] for i in np.unique(validation.labels)}
    index = model.build_index(folder, progress=False)
    chosen = index.calibrate(target_precision=0.5, progress=False)
    calibration = index.index.info["calibration"]
    assert calibration["data"].startswith("validation split of") and calibration["num_items"] == 8
    assert chosen.num_pairs == 8 * 7 // 2
