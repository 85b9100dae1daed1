"""Headless Chromium for the tests that look at a rendered page (the run report, the service's search page)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)


def screenshot(url: str, path: Path, width: int, height: int, *options: str) -> Image.Image:
    """``url`` rendered by headless Chromium in a ``width`` x ``height`` window, saved to ``path``: RGB.

    Offline and quiet (no first-run pages, no background networking); the browser profile is kept in a
    ``profile`` folder beside ``path``; ``options`` are further Chromium switches."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={path.parent / 'profile'}",
        f"--screenshot={path}",
        f"--window-size={width},{height}",
        *options,
        url,
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return Image.open(path).convert("RGB")
