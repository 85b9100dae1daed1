"""``POST /search`` end to end under concurrent clients: decode, embed with the small CNN, exact search.

Sets up, in a temporary folder: the demo's small CNN (a 2-iteration run: latency does not depend on the
weights), an index of ``--gallery`` unit vectors tied to that model (``--backend``, default exact ``faiss_flat``), and
``deepmetric serve`` on 127.0.0.1 (``--workers`` processes, one thread for torch in each). Then ``--clients``
threads post ``--requests`` JPEG uploads (64 x 64, 30 distinct images) as fast as they are answered and
the per-request wall times are reported. Client and server share the machine.

    python benchmarks/serve_load.py [--gallery 100000] [--requests 2000] [--clients 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import deepmetric
from deepmetric.api import ImageIndex
from deepmetric.cli import demo_config_path
from deepmetric.cli import main as cli
from deepmetric.retrieval import Index


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_index(folder: Path, size: int, backend: str) -> Path:
    run = folder / "run"
    assert (
        cli(["train", str(demo_config_path()), "train.iterations=2", "train.log_every=1", "--out", str(run)])
        == 0
    )
    model = deepmetric.load(run)
    vectors = np.random.default_rng(0).normal(size=(size, model.embedding_size)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = {"device": "cpu"} if backend == "torch" else {}
    index = Index.build(
        vectors, ids=[f"item{i}" for i in range(size)], distance=model.distance, backend=backend, **params
    )
    return ImageIndex(model, index).save(folder / "index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (deepmetric serve --workers)"
    )
    parser.add_argument("--backend", default="faiss_flat", help="search backend of the index (registry name)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = build_index(Path(tmp), args.gallery, args.backend)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepmetric.cli",
                "serve",
                str(index_dir),
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)
            uploads = [jpeg(seed) for seed in range(30)]
            local = threading.local()

            def one(i: int) -> tuple[float, int]:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(timeout=60)
                start = time.perf_counter()
                response = local.client.post(
                    f"{url}/search",
                    files={"file": (f"q{i}.jpg", uploads[i % len(uploads)], "image/jpeg")},
                    data={"k": str(args.k)},
                )
                ok = response.status_code == 200 and len(response.json()["results"]) == args.k
                return (time.perf_counter() - start) * 1000, 0 if ok else 1

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(4 * args.clients)))  # warm up: connections, first calls
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                results = list(pool.map(one, range(args.requests)))
                elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    times = np.array([t for t, _ in results])
    errors = sum(e for _, e in results)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    print(f"load average before: {load_before:.1f} ({os.cpu_count()} cores); after: {os.getloadavg()[0]:.1f}")
    print(
        "| backend | workers | gallery | clients | requests | errors | p50 ms | p95 ms | p99 ms | requests/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.backend} | {args.workers} | {args.gallery} | {args.clients} | {args.requests} | {errors} | {p50:.1f} | {p95:.1f} | {p99:.1f} "
        f"| {args.requests / elapsed:.1f} |"
    )


if __name__ == "__main__":
    main()
