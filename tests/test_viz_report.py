"""The per-run HTML report, on fake run folders in the trainer's format (digits demo dataset), and its
rendering in a real headless browser (skipped when /usr/bin/chromium is absent)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deepmetric.data import get_dataset
from deepmetric.viz.report import write_report
from tests.browser import needs_chromium, screenshot

METRICS = {
    "untrained": {"recall@1": 0.61, "recall@2": 0.72, "recall@4": 0.8, "map@r": 0.25, "nmi": 0.5},
    "trained": {"recall@1": 0.93, "recall@2": 0.95, "recall@4": 0.98, "map@r": 0.62, "nmi": 0.81},
    "best_iteration": 20,
    "best_metric": "recall@1",
}


def digit_embeddings(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Noisy pixels of the digits demo split: embeddings whose row i is dataset item i."""
    dataset = get_dataset("digits", None, split=split)
    pixels = np.stack([np.asarray(dataset.load(i), np.float32).ravel() / 255 for i in range(len(dataset))])
    noise = np.random.default_rng(0).standard_normal(pixels.shape).astype(np.float32)
    return pixels + 0.3 * noise, dataset.labels


def make_run(
    run: Path,
    *,
    dataset: str = "digits",
    query_gallery: bool = False,
    metrics: bool = True,
    log: bool = True,
) -> Path:
    """A run folder as the trainer writes it (config.yaml, metrics.json, log.jsonl, embeddings/)."""
    (run / "embeddings").mkdir(parents=True)
    embeddings, labels = digit_embeddings()
    names = ["query", "gallery"] if query_gallery else ["test"]
    for name in names:
        np.save(run / "embeddings" / f"{name}_embeddings.npy", embeddings)
        np.save(run / "embeddings" / f"{name}_labels.npy", labels)
    config = {
        "name": "report-test",
        "seed": 0,
        "output_dir": str(run),
        "data": {
            "name": dataset,
            "root": None,
            "train_split": "train",
            "test_split": "test",
            "gallery_split": "test" if query_gallery else None,
        },
        "model": {"backbone": "tiny_cnn", "pretrained": False, "embedding_size": 64, "normalize": True},
        "loss": {"name": "contrastive", "pos_margin": 0.0, "neg_margin": 0.5},
        "miner": None,
        "sampler": {"classes_per_batch": 4, "samples_per_class": 4},
        "train": {"iterations": 30, "eval_every": 10},
        "eval": {"metrics": ["recall@1", "map@r"], "distance": "cosine"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics:
        (run / "metrics.json").write_text(json.dumps(METRICS))
    if log:
        lines = []
        for it in range(1, 31):
            lines.append({"iteration": it, "loss": 1 / it, "lr": 1e-3, "elapsed": it * 0.1})
            if it % 10 == 0:
                lines.append({"iteration": it, "eval": {"recall@1": 0.6 + it / 100, "map@r": 0.2 + it / 100}})
        (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "train.log").write_text("training done\n")
    return run


def embedded_pngs(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def assert_self_contained(page: str) -> None:
    assert not re.search(r"https?://", page), "the report names an external URL"
    assert not re.search(r'(src|href)="(?!data:|#)', page), "the report loads a non-embedded resource"
    assert "url(" not in page and "@import" not in page


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("run"))
    path = write_report(run, max_points=60, seed=0, num_queries=3, top_k=4)
    return path, path.read_text()


def test_report_is_written_into_the_run_folder_with_every_section(report):
    path, page = report
    assert path.name == "report.html" and page.startswith("<!DOCTYPE html>")
    for anchor in ("metrics", "curves", "embeddings", "retrieval", "config"):
        assert f'<section id="{anchor}">' in page
    assert "Could not draw" not in page


def test_report_embeds_every_picture_as_a_png(report):
    _, page = report
    images = embedded_pngs(page)
    # recall@K, training curves, t-SNE map, random queries, worst queries
    assert len(images) == 5
    for image in images:
        assert image.format == "PNG" and image.width > 300 and len(set(image.getdata())) > 10
    assert "t-SNE map of the test embeddings" in page and "Worst queries" in page
    assert "umap-learn" in page  # UMAP is not installed here: the page says so


def test_report_is_self_contained(report):
    assert_self_contained(report[1])


def test_metrics_table_shows_untrained_trained_and_difference(report):
    _, page = report
    row = re.search(r"<tr><th>recall@1</th>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == ["0.6100", "0.9300", "+0.3200"]
    assert "Best checkpoint: iteration 20 by recall@1." in page


def test_config_is_shown_as_yaml(report):
    _, page = report
    config = re.search(r"<pre>(.*?)</pre>", page, re.S).group(1)
    assert yaml.safe_load(html.unescape(config))["loss"] == {
        "name": "contrastive",
        "pos_margin": 0.0,
        "neg_margin": 0.5,
    }


def test_report_without_the_dataset_still_renders_and_says_why(tmp_path):
    run = make_run(tmp_path / "run", dataset="no_such_dataset")
    page = write_report(run, max_points=40, num_queries=2, top_k=3).read_text()
    assert "No retrieval grids: cannot open dataset &#x27;no_such_dataset&#x27;" in page
    assert "No thumbnails" in page
    assert len(embedded_pngs(page)) == 3  # recall@K, training curves, map without thumbnails
    assert_self_contained(page)


def test_report_refuses_images_when_the_dataset_no_longer_matches_the_embeddings(tmp_path):
    run = make_run(tmp_path / "run")
    labels = np.load(run / "embeddings/test_labels.npy")
    np.save(run / "embeddings/test_labels.npy", labels[::-1].copy())
    page = write_report(run, max_points=40, num_queries=2, top_k=3).read_text()
    assert "do not match" in page and "No retrieval grids" in page


def test_report_with_a_query_gallery_protocol(tmp_path):
    run = make_run(tmp_path / "run", query_gallery=True)
    page = write_report(run, max_points=40, num_queries=2, top_k=3).read_text()
    assert "among the gallery set" in page and "Could not draw" not in page
    assert len(embedded_pngs(page)) == 5


def test_report_of_an_unfinished_run(tmp_path):
    run = make_run(tmp_path / "run", metrics=False, log=False)
    shutil.rmtree(run / "embeddings")
    page = write_report(run).read_text()
    assert "No metrics: metrics.json is missing" in page
    assert "log.jsonl is missing" in page and "No embedding map: no saved embeddings" in page
    assert embedded_pngs(page) == []


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        write_report(tmp_path)


@needs_chromium
def test_report_renders_in_a_headless_browser(report, tmp_path):
    path, _ = report
    image = screenshot(path.resolve().as_uri(), tmp_path / "report.png", 1200, 2000)
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, table and plots, not a blank page
    white = sum(count for count, rgb in colours if min(rgb) > 245)
    assert white < 0.97 * image.width * image.height


def test_hashing_precision_recall_arrays_are_drawn_not_tabulated(tmp_path):
    run = make_run(tmp_path / "run", log=False)
    shutil.rmtree(run / "embeddings")
    metrics = {
        "untrained": {"map": 0.2},
        "trained": {"map": 0.7, "pr_curve_precision": [1.0, 0.9, 0.5], "pr_curve_recall": [0.1, 0.5, 1.0]},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(run).read_text()
    assert "Precision-recall (Hamming radii)" in page and len(embedded_pngs(page)) == 1
    assert "<th>map</th>" in page and "<th>pr_curve_precision</th>" not in page
