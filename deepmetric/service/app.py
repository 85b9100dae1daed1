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

import io
import warnings
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from deepmetric.api import ImageIndex

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
    def search(
        request: Request, file: Annotated[UploadFile, File()], k: Annotated[int, Form()] = default_k
    ) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + 64 * 1024:
            raise UploadError(413, f"upload over the {max_upload_bytes} byte limit")
        if not 1 <= k <= MAX_K:
            raise UploadError(400, f"k must be between 1 and {MAX_K}, got {k}")
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadError(413, f"upload over the {max_upload_bytes} byte limit")
        image = decode_image(data, max_pixels)
        try:
            batch = index.model.preprocess([image])
        except (OSError, ValueError, TypeError) as error:  # an image mode PIL cannot convert
            raise UploadError(415, f"the image cannot be converted for the model: {error}") from None
        vectors = index.model.runner(batch)
        result = index.search_vectors(vectors, k, [file.filename])[0]
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
        return body

    @app.get("/gallery/{item}")
    def gallery_image(item: int) -> Response:
        if not 0 <= item < len(gallery) or gallery[item] is None or not gallery[item].is_file():
            return JSONResponse({"error": f"no gallery image {item}"}, status_code=404)
        return FileResponse(gallery[item])

    return app


def serve(index: ImageIndex, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run the app under uvicorn (loopback by default: say ``host="0.0.0.0"`` to expose it)."""
    import uvicorn

    uvicorn.run(create_app(index, **options), host=host, port=port, log_level="warning")
