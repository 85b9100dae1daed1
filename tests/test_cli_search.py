"""deepmetric index / search / export / calibrate / serve on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deepmetric
from deepmetric.cli import main
from tests.image_run import make_image_run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return make_image_run(tmp_path_factory.mktemp("cli_search"))


def test_index_then_search_finds_the_query_itself(image_run, tmp_path, capsys):
    run, folder = image_run
    out = tmp_path / "index"
    assert main(["index", str(run), str(folder), "--out", str(out)]) == 0
    assert "32 labelled images" in capsys.readouterr().out
    queries = [folder / "class_1" / "img_2.png", folder / "class_6" / "img_0.png"]
    html = tmp_path / "grid.html"
    assert main(["search", str(out), *map(str, queries), "-k", "3", "--json", "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(printed[: printed.rindex("]") + 1])
    assert [r["query"] for r in results] == [str(q.resolve()) for q in queries]
    for query, result in zip(queries, results):
        assert len(result["results"]) == 3
        first = result["results"][0]
        assert first["path"] == str(query.resolve()) and first["label"] == query.parent.name
        assert first["distance"] == pytest.approx(0, abs=1e-5)
        assert set(first) == {"path", "label", "distance"}
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") == 2 * 4 and "distance" in page


def test_calibrate_then_search_reports_matches(image_run, tmp_path, capsys):
    run, folder = image_run
    out = tmp_path / "index"
    assert main(["index", str(run), str(folder), "--out", str(out), "--backend", "exact"]) == 0
    assert (
        main(["calibrate", str(run), "--index", str(out), "--data", str(folder), "--precision", "0.9"]) == 0
    )
    assert "threshold" in capsys.readouterr().out
    stored = json.loads((out / "metadata.json").read_text())["info"]["calibration"]
    assert json.loads((run / "calibration.json").read_text()) == stored
    roc = stored["roc"]
    assert roc["true_match_rate"][-1] == roc["false_match_rate"][-1] == 1
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    page = (run / "report.html").read_text()
    assert 'alt="Match threshold ROC"' in page and f"{stored['threshold']}" in page
    assert main(["search", str(out), str(folder / "class_4" / "img_1.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["match"] == "class_4"


def test_export_on_the_command_line(image_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run, folder = image_run
    target = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(target)]) == 0
    assert target.is_file() and (tmp_path / "model.onnx.json").is_file()
    expected = deepmetric.load(run).embed(folder, progress=False)
    np.testing.assert_allclose(deepmetric.load(target).embed(folder, progress=False), expected, atol=1e-4)
    assert main(["index", str(target), str(folder), "--out", str(tmp_path / "index")]) == 0
    assert main(["search", str(tmp_path / "index"), str(folder / "class_0" / "img_0.png"), "--json"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{tmp}/nowhere", "{folder}/class_0/img_0.png"], "holds no index"),
        (["search", "{index}", "{tmp}/missing.png"], "image file not found"),
        (["search", "{index}", "{folder}/class_0/img_0.png", "-k", "0"], "-k must be positive"),
        (["index", "{tmp}", "{folder}", "--out", "{tmp}/i"], "neither a run folder"),
        (["index", "{run}", "{tmp}/no_folder", "--out", "{tmp}/i"], "image file not found"),
        (["calibrate", "{run}", "--index", "{index}"], "one of --precision"),
        (["calibrate", "{run}", "--index", "{index}", "--precision", "0.9"], "no validation split"),
    ],
)
def test_errors_are_one_line(image_run, tmp_path, capsys, args, message):
    run, folder = image_run
    index = tmp_path / "index"
    assert main(["index", str(run), str(folder / "class_0"), "--out", str(index)]) == 0
    capsys.readouterr()
    filled = [a.format(tmp=tmp_path, folder=folder, run=run, index=index) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_serve_binds_loopback_by_default(image_run, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    import deepmetric.service.app as app

    run, folder = image_run
    assert main(["index", str(run), str(folder), "--out", str(tmp_path / "index")]) == 0
    calls = []
    monkeypatch.setattr(
        app, "serve", lambda index, host, port, **options: calls.append((len(index), host, port, options))
    )
    assert main(["serve", str(tmp_path / "index"), "--max-upload-mb", "1"]) == 0
    assert calls == [(32, "127.0.0.1", 8000, {"max_upload_bytes": 1024 * 1024, "default_k": 5})]
