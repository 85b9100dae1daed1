"""deepmetric.service: the search API and page (FastAPI TestClient), bad uploads, a real browser."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepmetric
from tests.browser import needs_chromium, screenshot
from tests.image_run import make_image_run

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from deepmetric.service.app import create_app

LIMIT = 20_000  # bytes: small, so the size check is easy to trip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    run, folder = make_image_run(tmp)
    model = deepmetric.load(run)
    index = model.build_index(folder, progress=False)
    index.calibrate(folder, target_precision=0.9, progress=False)
    return index, folder


@pytest.fixture(scope="module")
def client(setup):
    return TestClient(create_app(setup[0], max_upload_bytes=LIMIT))


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_health_and_page(client, setup):
    health = client.get("/health").json()
    assert health == {"status": "ok", "items": len(setup[0]), "model": setup[0].model.fingerprint}
    page = client.get("/")
    assert page.status_code == 200 and "drop an image" in page.text.lower()


def test_search_returns_the_cli_json(client, setup):
    index, folder = setup
    query = folder / "class_2" / "img_3.png"
    response = client.post(
        "/search", files={"file": ("q.png", png_bytes(query), "image/png")}, data={"k": "4"}
    )
    assert response.status_code == 200
    body = response.json()
    expected = index.search(query, 4)[0].as_json()
    assert body["query"] == "q.png" and len(body["results"]) == 4
    for got, want in zip(body["results"], expected["results"]):
        assert got["path"] == want["path"] and got["label"] == want["label"]
        assert got["distance"] == pytest.approx(want["distance"], abs=1e-6)
        assert index.index.ids[got["id"]] == got["path"]
    assert body["results"][0]["path"] == str(query.resolve())
    assert body["threshold"] == index.threshold
    assert body["match"]["label"] == "class_2"


def test_gallery_images_are_served_by_id_only(client, setup):
    index, _ = setup
    image = client.get("/gallery/0")
    assert image.status_code == 200 and image.content == Path(index.index.ids[0]).read_bytes()
    assert client.get(f"/gallery/{len(index)}").status_code == 404
    assert client.get("/gallery/-1").status_code == 404
    for attempt in ("/gallery/..%2F..%2Fetc%2Fpasswd", "/gallery/../../etc/passwd", "/gallery/0.png"):
        response = client.get(attempt)
        assert response.status_code in (404, 422) and "root:" not in response.text


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()[:300]


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"hello, this is text", 415, "not an image"),
        (truncated_jpeg(), 400, "truncated"),
        (b"\x89PNG" + bytes(LIMIT), 413, "limit"),
    ],
)
def test_bad_uploads_get_a_json_4xx_and_the_server_goes_on(client, setup, content, status, message):
    response = client.post("/search", files={"file": ("bad.jpg", content, "image/jpeg")})
    assert response.status_code == status and message in response.json()["error"]
    query = setup[1] / "class_0" / "img_0.png"
    assert client.post("/search", files={"file": ("q.png", png_bytes(query), "image/png")}).status_code == 200


def test_bad_requests_are_4xx(client, setup):
    query = png_bytes(setup[1] / "class_0" / "img_0.png")
    for k in ("0", "1000"):
        response = client.post("/search", files={"file": ("q.png", query, "image/png")}, data={"k": k})
        assert response.status_code == 400 and "k must be" in response.json()["error"]
    response = client.post("/search", data={"k": "3"})
    assert response.status_code == 422 and "file" in response.json()["error"]
    response = client.post("/search", files={"file": ("q.png", query, "image/png")}, data={"k": "many"})
    assert response.status_code == 422 and "k" in response.json()["error"]


def test_images_with_too_many_pixels_are_refused(setup):
    client = TestClient(create_app(setup[0], max_pixels=100 * 100))
    buffer = io.BytesIO()
    Image.new("L", (101, 100)).save(buffer, "PNG")  # a few hundred bytes, but 10,100 pixels
    response = client.post("/search", files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["error"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_chromium
def test_the_page_shows_results_in_a_headless_browser(setup, tmp_path):
    uvicorn = pytest.importorskip("uvicorn")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(setup[0]), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        page = screenshot(
            f"http://127.0.0.1:{port}/?q=5",  # search with gallery image 5
            tmp_path / "page.png",
            1100,
            800,
            "--virtual-time-budget=15000",  # let the page fetch the query image and run the search
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    image = np.asarray(page).astype(int)
    assert image.shape == (800, 1100, 3)

    def pixels_of(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(image - rgb).sum(-1) < 30).sum())

    # the query tile's blue frame and the green frames of results within the threshold are drawn
    assert pixels_of((0x1F, 0x4E, 0x9E)) > 500
    assert pixels_of((0x1A, 0x9E, 0x1A)) > 500


def test_concurrent_queries_are_batched_and_answered_as_one_at_a_time(setup):
    import asyncio

    from deepmetric.service.app import QueryBatcher

    index, folder = setup
    queries = sorted(folder.glob("class_*/img_*.png"))[:9]
    pixels = [index.model.preprocess([Image.open(q)]) for q in queries]
    ks = [1, 3, 3, 5, 1, 3, 5, 5, 2]
    calls = []
    runner = index.model.runner

    class CountingBatcher(QueryBatcher):
        def _search(self, batch):
            calls.append(len(batch))
            return super()._search(batch)

    async def all_at_once():
        batcher = CountingBatcher(index, max_batch=4)
        return await asyncio.gather(*(batcher.search(p, k, q.name) for p, k, q in zip(pixels, ks, queries)))

    results = asyncio.run(all_at_once())
    assert calls == [4, 4, 1]  # the first query alone would be [1, ...]: all nine were waiting together
    for result, p, k, q in zip(results, pixels, ks, queries):
        alone = index.search_vectors(runner(p), k, [q.name])[0]
        assert result.query == q.name and len(result.hits) == k
        assert [h.distance for h in result.hits] == pytest.approx([h.distance for h in alone.hits], abs=1e-5)
        for got, want in zip(result.hits, alone.hits):  # the same items, up to the order of exact ties
            assert got.id == want.id or abs(got.distance - want.distance) < 1e-5


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs(setup):
    import asyncio

    from deepmetric.service.app import QueryBatcher

    index, folder = setup
    good = index.model.preprocess([Image.open(next(folder.glob("class_*/img_*.png")))])
    bad = np.zeros((1, 7, 3, 3), np.float32)  # wrong shape: the model raises

    async def run():
        batcher = QueryBatcher(index)
        first = await asyncio.gather(
            batcher.search(good, 2, "a"), batcher.search(bad, 2, "b"), return_exceptions=True
        )
        second = await batcher.search(good, 2, "c")
        return first, second

    (first_a, first_b), second = asyncio.run(run())
    assert isinstance(first_a, Exception) and isinstance(first_b, Exception)
    assert second.query == "c" and len(second.hits) == 2


def test_serve_refuses_workers_with_a_loaded_index_or_below_one(setup):
    from deepmetric.service.app import serve

    with pytest.raises(ValueError, match="workers must be at least 1"):
        serve(setup[0], workers=0)
    with pytest.raises(ValueError, match="give its folder"):
        serve(setup[0], workers=2)


def test_a_worker_process_builds_its_app_from_the_index_folder(setup, tmp_path, monkeypatch):
    import json

    from deepmetric.service.app import WORKER_SETTINGS, app_from_environment

    index, folder = setup
    index.save(tmp_path / "index")
    settings = {"index": str(tmp_path / "index"), "options": {"default_k": 2, "max_upload_bytes": LIMIT}}
    monkeypatch.setenv(WORKER_SETTINGS, json.dumps(settings))
    worker = TestClient(app_from_environment())
    query = folder / "class_1" / "img_0.png"
    body = worker.post("/search", files={"file": ("q.png", query.read_bytes(), "image/png")}).json()
    assert len(body["results"]) == 2 and body["results"][0]["path"] == str(query.resolve())
    assert worker.get("/health").json()["items"] == len(index)
