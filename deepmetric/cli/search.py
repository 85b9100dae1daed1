"""``deepmetric index``, ``search``, ``export``, ``calibrate`` and ``serve``: a trained model at work.

deepmetric index runs/cub photos/ --out photos_index      # embed a gallery folder
deepmetric search photos_index query.jpg -k 5 --json      # its nearest gallery images
deepmetric serve photos_index                             # the same in a browser, on 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from pathlib import Path

from deepmetric.io import write_text
from deepmetric.training.config import ConfigError
from deepmetric.training.run_folder import RunFolder

# CLI name -> registered search backend
BACKENDS = {
    "exact": "torch",
    "faiss-flat": "faiss_flat",
    "faiss-ivf": "faiss_ivf",
    "faiss-hnsw": "faiss_hnsw",
    "hamming": "hamming",
}


def cmd_index(args: argparse.Namespace) -> None:
    import deepmetric

    model = deepmetric.load(args.run, args.checkpoint)
    index = model.build_index(args.gallery, backend=BACKENDS[args.backend], batch_size=args.batch_size)
    path = index.save(args.out)
    labelled = "labelled" if index.index.labels is not None else "unlabelled"
    print(f"index: {len(index)} {labelled} images, backend {args.backend} -> {path}")


def distance_text(value: float) -> str:
    """4 decimals, or 3 significant digits for distances too small to show that way."""
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def _thumbnail(path: str | None, size: int = 160) -> str:
    """A small JPEG data URI of an image file ('' when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
    except (OSError, TypeError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def results_html(results: list[dict], threshold: float | None) -> str:
    """A self-contained retrieval grid: each query, then its results with label and distance."""
    rows = []
    for result in results:
        tiles = [
            f'<figure class="query"><img src="{_thumbnail(result["query"])}" alt="query">'
            f"<figcaption>query<br>{html.escape(Path(result['query']).name)}</figcaption></figure>"
        ]
        for rank, hit in enumerate(result["results"], 1):
            within = threshold is not None and hit["distance"] <= threshold
            label = html.escape(
                str(hit["label"]) if hit["label"] is not None else Path(hit["path"] or "").name
            )
            tiles.append(
                f'<figure class="{"within" if within else ""}"><img src="{_thumbnail(hit["path"])}" alt="#{rank}">'
                f"<figcaption>#{rank} {label}<br>distance {distance_text(hit['distance'])}</figcaption></figure>"
            )
        rows.append(f'<div class="row">{"".join(tiles)}</div>')
    note = (
        f"match threshold {threshold:.4f} (green: within)" if threshold is not None else "no match threshold"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>deepmetric search</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}.row{display:flex;gap:10px;margin-bottom:1.5em}"
        "figure{margin:0;width:160px;text-align:center;font-size:.8em}"
        "img{width:160px;height:160px;object-fit:contain;border:4px solid #ccc;border-radius:6px}"
        ".query img{border-color:#1f4e9e}.within img{border-color:#1a9e1a}</style></head><body>"
        f"<h1>Search results</h1><p>{note}</p>{''.join(rows)}</body></html>"
    )


def cmd_search(args: argparse.Namespace) -> list[dict]:
    import deepmetric

    if args.k < 1:
        raise ConfigError(f"-k must be positive, got {args.k}")
    index = deepmetric.load_index(args.index)
    results = [result.as_json() for result in index.search(args.images, args.k)]
    if index.threshold is not None:
        for result in results:
            nearest = result["results"][0] if result["results"] else None
            result["match"] = nearest["label"] if nearest and nearest["distance"] <= index.threshold else None
    if args.html:
        write_text(Path(args.html), results_html(results, index.threshold))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["query"])
            for rank, hit in enumerate(result["results"], 1):
                print(
                    f"  {rank:3d}  {distance_text(hit['distance']):>9s}  {hit['label'] or '-':>16s}  {hit['path']}"
                )
            if "match" in result:
                print(f"  match: {result['match'] if result['match'] is not None else 'none'}")
    if args.html:
        print(f"html: {args.html}")
    return results


def cmd_export(args: argparse.Namespace) -> None:
    import deepmetric
    from deepmetric.export import export_model

    model = deepmetric.load(args.run, args.checkpoint)
    path = export_model(model, args.out, args.format)
    print(f"export: {args.format} -> {path} (+ {path.name}.json)")


def cmd_calibrate(args: argparse.Namespace) -> None:
    import deepmetric

    if (args.precision is None) == (args.false_match_rate is None):
        raise ConfigError("give one of --precision and --false-match-rate")
    model = deepmetric.load(args.run, args.checkpoint)
    index = deepmetric.load_index(args.index, model=model)
    chosen = index.calibrate(args.data, args.precision, args.false_match_rate)
    index.save(args.index)
    calibration = index.index.info["calibration"]
    if model.source.get("run"):
        # report.html shows the calibration with the run's other results
        write_text(RunFolder(args.run).calibration_file, json.dumps(calibration, indent=2))
    print(
        f"threshold {chosen.threshold:.4f} ({chosen.target}): precision {chosen.precision:.4f}, "
        f"recall {chosen.recall:.4f}, false-match rate {chosen.false_match_rate:.4f} "
        f"on {chosen.num_pairs} pairs of {calibration['data']} -> {args.index}"
    )


def cmd_serve(args: argparse.Namespace) -> None:
    import deepmetric
    from deepmetric.retrieval import Index

    try:
        from deepmetric.service.app import serve
    except ImportError as error:
        raise ConfigError(f"serve needs fastapi, uvicorn and python-multipart: {error}") from None
    index = deepmetric.load_index(args.index)
    if not isinstance(index.index, Index):
        raise ConfigError(
            f"{args.index} is a sharded index: search it with deepmetric search (serve needs deepmetric index)"
        )
    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    print(
        f"serving {len(index)} images on http://{args.host}:{args.port}/ ({args.workers} worker(s))",
        flush=True,
    )
    options = {"max_upload_bytes": int(args.max_upload_mb * 1024 * 1024), "default_k": args.k}
    if args.workers > 1:  # each worker process loads the index itself
        del index
        serve(args.index, args.host, args.port, workers=args.workers, **options)
    else:
        serve(index, args.host, args.port, **options)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a gallery folder with a run's model into a search index")
    p.add_argument("run", help="run folder or exported .onnx file")
    p.add_argument("gallery", help="image folder: one sub-folder per class (labelled) or flat")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--backend", default="exact", choices=list(BACKENDS))
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the nearest gallery images of query images")
    p.add_argument("index", help="index folder written by `deepmetric index`")
    p.add_argument("images", nargs="+", help="query image files")
    p.add_argument("-k", type=int, default=5, help="results per query")
    p.add_argument("--json", action="store_true", help="print one JSON list, one entry per query")
    p.add_argument("--html", help="also write a retrieval grid to this HTML file")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="export a run's model to ONNX or TorchScript (+ a JSON sidecar)")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write (FILE.json is written beside it)")
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="choose an index's match threshold on labelled validation data")
    p.add_argument("run", help="run folder (or exported .onnx file) of the index's model")
    p.add_argument("--index", required=True, help="index folder to store the threshold in")
    p.add_argument("--data", help="labelled image folder (default: the run's validation split)")
    p.add_argument("--precision", type=float, help="target precision of declared matches, e.g. 0.95")
    p.add_argument("--false-match-rate", type=float, help="target false-match rate, e.g. 0.01")
    p.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("serve", help="a web page and JSON API searching an index")
    p.add_argument("index", help="index folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("-k", type=int, default=5, help="default number of results")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the index (default 1)",
    )
    p.set_defaults(func=cmd_serve)
