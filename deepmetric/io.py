"""Atomic file writes, the one way deepmetric writes a file (run folders, indexes, shards, calibration,
exports, feature caches).

A file is written under a temporary name beside its destination, then renamed over it: a crash never
leaves a half-written file, and a reader sees the old file or the new one. Every file gets mode
:data:`FILE_MODE`, so another user or a web server can read the results.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Readable by all: mkstemp creates 0600 files, which another user or a web server could not read.
FILE_MODE = 0o644


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside ``path`` for writers that take a file name (faiss, ONNX, memory maps):
    renamed over ``path`` (mode :data:`FILE_MODE`) when the block ends, removed if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, flushed to disk, then rename it
    over ``path`` (mode :data:`FILE_MODE`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    """``text`` as UTF-8, atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
