"""The search service: an upload page, ``POST /search``, ``GET /health`` and the gallery's own images.

* ``GET /``: a page to pick or drop an image and see its nearest gallery images, their distances and the
  match decision (when the index has a calibrated threshold).
* ``POST /search`` (multipart: ``file``, optional ``k``): ``{"query": filename, "results": [{"path",
  "label", "distance", "id"}, ...], "match": {...} | null, "threshold": t | null}``, nearest first.
* ``GET /health``: ``{"status": "ok", "items": N, "model": fingerprint}``.
* ``GET /gallery/{id}``: gallery image number ``id`` (its position in the index). Only the files the index
  stores can be served: nothing else on disk is reachable.

Bad uploads (empty, over ``max_upload_bytes``, not an image, truncated) get a 4xx ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from deepmetric.api import ImageIndex, QueryResult, load_index

PAGE = Path(__file__).parent / "static" / "index.html"
MAX_K = 100


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded bytes as a fully decoded image, or an :class:`UploadError` naming what is wrong."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise UploadError(413, f"image of {image.width} x {image.height} pixels is too large")
            image.load()  # decode now: truncated files fail here, not later in the model
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, "image has too many pixels") from None
    except Image.UnidentifiedImageError:
        raise UploadError(415, "the uploaded file is not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(400, f"the image cannot be decoded (truncated or corrupt): {error}") from None
    return image


@dataclass
class _Query:
    pixels: np.ndarray  # 1 x C x H x W, preprocessed
    k: int
    name: str | None
    answer: asyncio.Future


class QueryBatcher:
    """Embeds and searches the queries of concurrent requests together.

    While one batch runs (in a worker thread: torch and faiss release the GIL), the event loop goes on
    reading requests; the next batch takes every query that arrived meanwhile, so it costs one forward
    pass and one scan of the index instead of one each. Under load a request no longer pays a full exact
    scan of its own; a lone request runs at once, alone. Results equal one-at-a-time search: queries are
    grouped by ``k`` and a batch's rows are searched independently.
    """

    def __init__(self, index: ImageIndex, max_batch: int = 64) -> None:
        self.index, self.max_batch = index, max_batch
        self.waiting: list[_Query] = []
        self.worker: asyncio.Task | None = None  # touched on the event loop only: no lock needed

    async def search(self, pixels: np.ndarray, k: int, name: str | None) -> QueryResult:
        query = _Query(pixels, k, name, asyncio.get_running_loop().create_future())
        self.waiting.append(query)
        if self.worker is None:
            self.worker = asyncio.create_task(self._drain())
        return await query.answer

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
                try:
                    results = await run_in_threadpool(self._search, batch)
                except Exception as error:  # reaches every request of the batch, as a 500
                    for query in batch:
                        if not query.answer.done():
                            query.answer.set_exception(error)
                    continue
                for query, result in zip(batch, results):
                    if not query.answer.done():  # a client that went away cancelled its future
                        query.answer.set_result(result)
        finally:
            self.worker = None

    def _search(self, batch: list[_Query]) -> list[QueryResult]:
        vectors = self.index.model.runner(np.concatenate([query.pixels for query in batch]))
        results: list[QueryResult | None] = [None] * len(batch)
        for k in {query.k for query in batch}:
            rows = [i for i, query in enumerate(batch) if query.k == k]
            found = self.index.search_vectors(vectors[rows], k, [batch[i].name for i in rows])
            for i, result in zip(rows, found):
                results[i] = result
        return results


def create_app(
    index: ImageIndex,
    max_upload_bytes: int = 10 * 1024 * 1024,
    default_k: int = 5,
    max_pixels: int = 50_000_000,
) -> FastAPI:
    """The FastAPI application serving ``index`` (see the module docstring)."""
    app = FastAPI(title="deepmetric search", docs_url=None, redoc_url=None)
    gallery = [Path(i) if Path(i).is_absolute() else None for i in index.index.ids]
    positions = {item_id: i for i, item_id in enumerate(index.index.ids)}  # the service never edits the index
    batcher = QueryBatcher(index)

    def prepare(data: bytes) -> np.ndarray:
        image = decode_image(data, max_pixels)
        try:
            return index.model.preprocess([image])
        except (OSError, ValueError, TypeError) as error:  # an image mode PIL cannot convert
            raise UploadError(415, f"the image cannot be converted for the model: {error}") from None

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}" for e in error.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "items": len(index), "model": index.model.fingerprint}

    @app.post("/search")
    async def search(
        request: Request, file: Annotated[UploadFile, File()], k: Annotated[int, Form()] = default_k
    ) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + 64 * 1024:
            raise UploadError(413, f"upload over the {max_upload_bytes} byte limit")
        if not 1 <= k <= MAX_K:
            raise UploadError(400, f"k must be between 1 and {MAX_K}, got {k}")
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadError(413, f"upload over the {max_upload_bytes} byte limit")
        pixels = await run_in_threadpool(prepare, data)
        result = await batcher.search(pixels, k, file.filename)
        body = result.as_json()
        for entry, hit in zip(body["results"], result.hits):
            entry["id"] = positions[hit.id]
        decision = index.decide(result)
        body["threshold"] = index.threshold
        body["match"] = (
            None
            if decision is None
            else {"label": decision.label, "path": decision.path, "distance": decision.distance}
        )
        return JSONResponse(body)  # already JSON types: skips FastAPI's per-request response validation

    @app.get("/gallery/{item}")
    def gallery_image(item: int) -> Response:
        if not 0 <= item < len(gallery) or gallery[item] is None or not gallery[item].is_file():
            return JSONResponse({"error": f"no gallery image {item}"}, status_code=404)
        return FileResponse(gallery[item])

    return app


WORKER_SETTINGS = "DEEPMETRIC_SERVE_SETTINGS"  # how worker processes learn which index to load


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process: the index folder and options that :func:`serve` put in
    ``$DEEPMETRIC_SERVE_SETTINGS``."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    return create_app(load_index(settings["index"]), **settings["options"])


def serve(
    index: ImageIndex | str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    **options: Any,
) -> None:
    """Run the app under uvicorn (loopback by default: say ``host="0.0.0.0"`` to expose it).

    ``workers > 1`` runs that many processes, each loading the index folder ``index`` (a path) and
    answering requests on the same port: one Python process embeds and searches one request at a time,
    so a multi-core machine needs several to use its cores.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        app = create_app(index if isinstance(index, ImageIndex) else load_index(index), **options)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    if isinstance(index, ImageIndex):
        raise ValueError("several workers load the index themselves: give its folder, not a loaded index")
    os.environ[WORKER_SETTINGS] = json.dumps({"index": str(Path(index).resolve()), "options": options})
    uvicorn.run(
        "deepmetric.service.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )
