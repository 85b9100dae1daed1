"""Processes that need the native kernels at the same moment (torchrun ranks) compile them once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imports first (slow, and at different speeds), then waits for the go file, so the first uses coincide.
FIRST_USE = """
import sys, time
from pathlib import Path
from deepmetric import native
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
print(native.available())
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_concurrent_first_uses_compile_once(tmp_path):
    processes = 3
    log = tmp_path / "compiler.log"
    compiler = tmp_path / "logging-cc"
    # a slow compiler: without the lock every process would find no library and start its own build
    compiler.write_text(f'#!/bin/sh\necho "$*" >> {log}\nsleep 1\nexec {shutil.which("cc")} "$@"\n')
    compiler.chmod(0o755)
    env = {**os.environ, "DEEPMETRIC_CACHE": str(tmp_path / "cache"), "CC": str(compiler)}
    env.pop("DEEPMETRIC_NATIVE", None)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(processes)]
    running = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE, str(flag), str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 300
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in running), (
            "a process did not start"
        )
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in running]
    assert [p.returncode for p in running] == [0] * processes, [err for _, err in outputs]
    assert [out.split() for out, _ in outputs] == [["True"]] * processes
    # each build (one set of flags) ran once, not once per process; its output file is a per-build temp path
    builds = [line.split(" -o ")[0] for line in log.read_text().splitlines()]
    assert len(builds) == len(set(builds)) >= 1, builds
    assert len(list((tmp_path / "cache").rglob("*.so"))) == 1
