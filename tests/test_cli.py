import json

import numpy as np
import pytest

from deepmetric.cli import main
from tests.test_training import TINY


@pytest.fixture
def saved_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 6)
    embeddings = rng.normal(size=(30, 8)).astype(np.float32) + 3 * np.eye(8, dtype=np.float32)[labels]
    np.save(tmp_path / "e.npy", embeddings)
    np.save(tmp_path / "l.npy", labels)
    return tmp_path


def test_evaluate_saved_embeddings_json(saved_embeddings, capsys):
    d = saved_embeddings
    code = main(
        [
            "evaluate",
            "--embeddings",
            str(d / "e.npy"),
            "--labels",
            str(d / "l.npy"),
            "--json",
            "--metrics",
            "recall@1,map@r",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"recall@1", "map@r"}
    assert result["recall@1"] > 0.5


def test_evaluate_query_gallery(saved_embeddings, capsys):
    d = saved_embeddings
    args = [
        "evaluate",
        "--embeddings",
        str(d / "e.npy"),
        "--labels",
        str(d / "l.npy"),
        "--gallery-embeddings",
        str(d / "e.npy"),
        "--gallery-labels",
        str(d / "l.npy"),
        "--metrics",
        "recall@1",
        "--json",
    ]
    assert main(args) == 0
    # the gallery holds each query itself, at distance 0
    assert json.loads(capsys.readouterr().out)["recall@1"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--embeddings", "missing.npy", "--labels", "l.npy"], "embeddings file not found"),
        (["evaluate", "--embeddings", "e.npy"], "--labels"),
        (["evaluate", "--embeddings", "e.npy", "--labels", "short.npy"], "rows"),
        (["evaluate", "--embeddings", "e.npy", "--labels", "l.npy", "--metrics", "recal@1"], "recal@1"),
        (["train", "nothere.yaml"], "config file not found"),
        (["train", "cfg.yaml", "model.embeding_size=3"], "model.embeding_size"),
        (["evaluate", "norun"], "config file not found"),
    ],
)
def test_errors_are_one_line(saved_embeddings, monkeypatch, capsys, args, message):
    monkeypatch.chdir(saved_embeddings)
    np.save("short.npy", np.arange(3))
    (saved_embeddings / "cfg.yaml").write_text("name: x\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err


def test_nan_embeddings_are_refused(saved_embeddings, capsys):
    d = saved_embeddings
    bad = np.load(d / "e.npy")
    bad[3, 2] = np.nan
    np.save(d / "nan.npy", bad)
    assert main(["evaluate", "--embeddings", str(d / "nan.npy"), "--labels", str(d / "l.npy")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_train_embed_evaluate_cycle(tmp_path, capsys):
    from deepmetric.cli import demo_config_path

    run = tmp_path / "run"
    assert main(["train", str(demo_config_path()), *TINY, "train.iterations=2", "--out", str(run)]) == 0
    (run / "embeddings").rename(tmp_path / "old_embeddings")
    assert main(["embed", str(run)]) == 0
    np.testing.assert_allclose(
        np.load(run / "embeddings/test_embeddings.npy"),
        np.load(tmp_path / "old_embeddings/test_embeddings.npy"),
        atol=1e-5,
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"recall@1", "nmi"}
    assert main(["list", "losses"]) == 0
    assert "contrastive" in capsys.readouterr().out
